"""What would pass, concretely, when SQL is refused: by the policy, or by the database afterwards.

Pure functions over text and plain data. Two places use them:

- ``refine(decision, text, policy)``: a denial of a catalog query (``PRAGMA table_info``,
  ``information_schema``, ``sqlite_master``, ``SHOW TABLES``, psql's ``\\d``) is answered with the
  ``describe`` call that gives the same facts; ``SHOW x`` on PostgreSQL with
  ``SELECT current_setting('x')``. The rules and reason stay: only the hint becomes concrete.
- ``for_rejection(...)``: an error from the database after the policy allowed the text (SQLite's
  authorizer, a missing table or column, a grant narrower than the rule, a read-only transaction)
  mapped to an ``engine:*`` rule id and a hint naming what exists (with a did-you-mean).

    >>> catalog_table("PRAGMA table_info(orders)")
    'orders'
    >>> for_rejection("no such column: nme", "sqlite", "demo", "SELECT nme FROM customers",
    ...               {"main.customers": ["id", "name", "email"]})[1]
    'There is no column `nme` in the tables it reads; did you mean `name`? Columns of main.customers: id, name, email.'
"""

from __future__ import annotations

import difflib
import re
from dataclasses import replace

from bastion.policy.decision import Decision

# Catalog reads, by dialect-neutral patterns over the lowered text.
_PRAGMA_STMT = re.compile(r"^\s*pragma\s+(?:\w+\.)?(\w+)\s*(?:\(\s*['\"]?([\w.]+)['\"]?\s*\)|=\s*\S+)?", re.I)
_PRAGMA_FN = re.compile(r"\bpragma_(\w+)\s*\(\s*'([\w.]+)'", re.I)
_CATALOG = re.compile(r"\b(?:sqlite_(?:master|schema|temp_master|temp_schema)|information_schema\s*\.\s*\w+|"
                      r"pg_catalog\s*\.\s*\w+|pg_(?:tables|views|class|attribute|attrdef|index|indexes|namespace|"
                      r"matviews|stat_user_tables|statio_user_tables|constraint)\b|pragma_\w+\s*\()", re.I)
_TABLE_NAME = re.compile(r"\b(?:table_name|tablename|relname|tbl_name|name)\s*=\s*'([\w.]+)'", re.I)
_META = re.compile(r"^\s*(?:\\d[a-z+]*\s*([\w.]*)|show\s+(?:full\s+)?(?:tables|columns\s+from\s+([\w.]+))|"
                   r"desc(?:ribe)?\s+([\w.]+))", re.I)
_SHOW = re.compile(r"^\s*show\s+([a-z_][\w.]*)\s*;?\s*$", re.I)


def catalog_table(text: str) -> str | None:
    """The table a catalog query asks about ("" for all tables); None when it is not a catalog query."""
    for pattern in (_META, _PRAGMA_STMT):
        m = pattern.match(text)
        if m:
            if pattern is _PRAGMA_STMT and m.group(1).lower() not in _PRAGMA_SCHEMA:
                return None
            return next((g for g in m.groups()[1 if pattern is _PRAGMA_STMT else 0:] if g), "")
    m = _PRAGMA_FN.search(text)
    if m:
        return m.group(2)
    if _CATALOG.search(text):
        named = _TABLE_NAME.search(text)
        return named.group(1) if named else ""
    return None


# PRAGMAs that describe the schema (what describe answers); others (journal_mode, ...) are settings.
_PRAGMA_SCHEMA = frozenset({"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                            "foreign_key_list", "database_list", "collation_list"})


def describe_hint(connection: str, table: str | None) -> str:
    call = f'describe(connection="{connection}"' + (f', table="{table.split(".")[-1]}")' if table else ")")
    return (f"For tables and columns call {call} instead: it lists each table you may read, one line each, "
            "with column types and the masked columns marked.")


def refine(decision: Decision, text: str, connection: str, dialect: str) -> Decision:
    """A refused text's hint made concrete where the passing call is known."""
    if decision.allowed:
        return decision
    table = catalog_table(text)
    if table is not None:
        return replace(decision, hint=describe_hint(connection, table))
    m = _SHOW.match(text)
    if m and dialect == "postgres":
        return replace(decision, hint=f"Read a setting with SELECT current_setting('{m.group(1)}').")
    return decision


# -- database refusals -----------------------------------------------------------------------------

_NO_TABLE = (re.compile(r"no such table: ([\w.]+)"), re.compile(r'relation "([\w.]+)" does not exist'))
_NO_COLUMN = (re.compile(r"no such column: ([\w.]+)"), re.compile(r'column "?([\w.]+)"? does not exist'))
_NOT_AUTHORIZED = ("not authorized", "prohibited")
_READ_ONLY = ("readonly database", "read-only transaction", "25006")
_PRIVILEGE = ("permission denied", "42501")


def _mentioned(text: str, tables: dict[str, list[str]]) -> list[str]:
    words = {w.lower() for w in re.findall(r"[\w.]+", text)}
    return [name for name in tables if name.lower() in words or name.split(".")[-1].lower() in words]


def _names(tables: dict[str, list[str]], limit: int = 30) -> str:
    names = list(tables)
    return ", ".join(names[:limit]) + (", …" if len(names) > limit else "")


def for_rejection(message: str, dialect: str, connection: str, text: str,
                  tables: dict[str, list[str]]) -> tuple[str, str] | None:
    """The ``engine:*`` rule and the hint for a database's refusal of a text the policy allowed;
    ``tables``: the tables this caller may read (qualified name → column names). None: unmapped."""
    lowered = message.lower()
    catalog = catalog_table(text)
    if catalog is not None and (any(s in lowered for s in _NOT_AUTHORIZED) or "no such table" in lowered
                                or "does not exist" in lowered):
        return "engine:catalog", describe_hint(connection, catalog)
    for pattern in _NO_TABLE:
        m = pattern.search(message)
        if m:
            missing = m.group(1)
            short = {name.split(".")[-1]: name for name in tables}
            close = difflib.get_close_matches(missing.split(".")[-1].lower(), list(short), n=1, cutoff=0.6)
            guess = f"did you mean `{short[close[0]]}`? " if close else ""
            return "engine:no-such-table", (f"There is no table `{missing}` you may read on `{connection}`; {guess}"
                                            f"Tables: {_names(tables) or 'none'} (describe lists their columns).")
    for pattern in _NO_COLUMN:
        m = pattern.search(message)
        if m:
            missing = m.group(1).split(".")[-1]
            read = _mentioned(text, tables) or list(tables)
            columns = sorted({c for name in read for c in tables[name]})
            close = difflib.get_close_matches(missing.lower(), columns, n=1, cutoff=0.6)
            guess = f"did you mean `{close[0]}`? " if close else ""
            listed = "; ".join(f"Columns of {name}: {', '.join(tables[name])}" for name in read[:3])
            return "engine:no-such-column", f"There is no column `{missing}` in the tables it reads; {guess}{listed}."
    if any(s in lowered for s in _READ_ONLY):
        return "engine:read-only", ("It ran in a read-only transaction: the rule that allowed it allows only reads here. "
                                    "Read with SELECT; a write needs a rule that allows it (check tells you which).")
    if any(s in lowered for s in _PRIVILEGE):
        return "engine:grant", ("The database refused it although the rule allows it: the login's grants are narrower "
                                f"than the rules. Read only the tables describe lists on `{connection}`, or ask the "
                                "gateway's operator to align the grants with the rules.")
    if any(s in lowered for s in _NOT_AUTHORIZED) and dialect == "sqlite":
        return "engine:sqlite-authorizer", ("SQLite's authorizer refused part of it: only the tables the rule allows, "
                                            "SQLite's own built-in functions and no PRAGMA are permitted. Read the "
                                            f"tables describe lists on `{connection}` with built-in functions.")
    return None
