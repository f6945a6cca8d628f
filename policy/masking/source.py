"""Masking at the source: each scan of a relation with masked columns becomes a derived table in
which the masked value has replaced the raw one, before any expression, predicate, join, sort,
LIMIT/OFFSET, aggregate, cast or error of the statement can see it.

    FROM customers c   →   FROM (SELECT "id", "name", CASE WHEN "email" IS NULL THEN NULL
                                 ELSE '[redacted]' END AS "email" FROM customers) c

- The derived table is built with sqlglot and spliced into the agent's own text at the table
  reference's place (sqlglot's token offsets): the rest of the statement runs exactly as written
  (regenerating the whole statement would pass every function and operator through sqlglot's
  generator, which is not always the identity).
- Every scan is rewritten: FROM and JOIN, subqueries, CTE bodies, LATERAL, each branch of a set
  operation, recursive CTEs. A name that refers to a CTE is not a scan. A view's columns are masked
  as their lineage says (the view's definition is the administrator's, not the agent's).
- Only plain reads are rewritten. A statement that writes (INSERT / UPDATE / DELETE / MERGE,
  SELECT INTO, CREATE TABLE AS, a data-modifying CTE), locks rows, or is EXPLAINed runs as written:
  rewriting a write's source would change what it writes (a masked value stored over a real one).
- ``complete`` says whether every scan of a sensitive relation was masked: a relation the catalog
  does not list (a pattern may cover it) or a reference the splice cannot handle (TABLESAMPLE, a
  table in an unusual position) leaves the statement under the output-side rules.

Each masker's SQL gives the value the Python masker (maskers.py) gives, on PostgreSQL and SQLite,
for text values (numbers and booleans too: their text form is the same). The keyed ``hash`` is not
written with its key: on PostgreSQL, HMAC-SHA256 is built from core ``sha256()`` with the key's two
padded forms as bind parameters (named by ``KEY_PARAMS``; they are not in the statement text, so
not in ``pg_stat_activity``, ``current_query()`` or a logged statement); on SQLite it calls a
function the executor registers (``hash_function``), which holds the key in the gateway's memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp

from bastion.policy.masking.catalog import Catalog
from bastion.policy.masking.lineage import view_lineage
from bastion.policy.masking.maskers import REDACTED, STRENGTH, at_least, strongest
from bastion.policy.masking.rules import MaskRules

# The PostgreSQL bind parameters of the keyed hash: HMAC's inner and outer padded keys.
KEY_PARAMS = ("bastion_mask_ipad", "bastion_mask_opad")
# Table arguments the splice keeps (`ONLY` is moved inside); anything else (TABLESAMPLE, PIVOT,
# a time-travel clause) leaves the scan as written and the statement incomplete.
_PLAIN = frozenset({"this", "db", "catalog", "alias", "only"})
_SCANS = (exp.From, exp.Join)
# A bind parameter the agent wrote would read the key's parameters: refused where they are passed.
_AGENT_PARAMETER = re.compile(r"\$\d")
_DESCENDANTS_STAR = re.compile(r"\s*\*")
_TABLE_COMMAND = re.compile(r"(?<![\w.\"$])TABLE\s+(?=(?:ONLY\s+)?$)", re.IGNORECASE)


@dataclass(frozen=True)
class AtSource:
    """How a connection masks at the source: whether ``hash`` has a key, and on SQLite the name of
    the function the executor registers for it."""

    keyed: bool = False
    hash_function: str | None = None


@dataclass(frozen=True)
class SourceRewrite:
    """A statement with its masked scans rewritten."""

    text: str
    # Sensitive relations whose every scan was masked.
    relations: frozenset[str]
    # Every sensitive relation the statement reads is masked at each scan.
    complete: bool
    # The text takes the keyed hash's bind parameters (PostgreSQL; ``%(name)s`` placeholders, every
    # other ``%`` doubled as psycopg expects).
    keyed: bool = False
    why: str | None = None

    @property
    def as_server_sees_it(self) -> str:
        """The text as the server receives it (`$1`, `$2` for the key's parameters, `%` single): what
        the audit log and `check` show."""
        return _with_numbered_params(self.text).replace("%%", "%") if self.keyed else self.text


def masked_columns(relation: str, catalog: Catalog, rules: MaskRules) -> dict[str, str] | None:
    """Column → masker for one relation (only the masked ones); None when the catalog does not list
    it. A view's column gets the strongest masker of what it derives from (``redact`` at least when
    that cannot be followed)."""
    key = ("source-columns", rules, relation)
    if key in catalog.memo:
        return catalog.memo[key]
    columns = catalog.columns(relation)
    found: dict[str, str] | None = None
    if columns is not None:
        found = {}
        derived = {o.name: o for o in view_lineage(catalog, relation).outputs or ()} if catalog.is_view(relation) else {}
        for column in columns:
            maskers = [c.masker for c in [rules.column(f"{relation}.{column}")] if c]
            output = derived.get(column)
            if output is not None:
                maskers += [c.masker for c in (rules.column(s) for s in sorted(output.sources)) if c]
                if not output.resolved and _view_is_sensitive(relation, catalog, rules):
                    maskers = [at_least(strongest(maskers) or "redact", "redact")]
            masker = strongest(maskers)
            if masker is not None:
                found[column] = masker
    catalog.memo[key] = found
    return found


def _view_is_sensitive(view: str, catalog: Catalog, rules: MaskRules) -> bool:
    from bastion.policy.masking.plan import sensitive_relations

    return bool(sensitive_relations(frozenset({view}), catalog, rules))


def rewrite(text: str, catalog: Catalog, rules: MaskRules, sensitive: frozenset[str], *,
            keyed: bool = False, hash_function: str | None = None) -> SourceRewrite:
    """``text`` with every scan of a relation in ``sensitive`` masked at the source. ``keyed``: the
    connection has a hash key (else ``hash`` redacts, as the Python masker does); on SQLite the
    keyed hash calls ``hash_function``. Raises sqlglot errors when the text cannot be parsed."""
    if "bastion_mask_" in text.lower():
        # The names of the key's parameters and of the SQLite hash function are Bastion's own.
        return SourceRewrite(text, frozenset(), False, why="the statement names Bastion's masking parameters or functions")
    tree = sqlglot.parse_one(text, read=catalog.dialect)
    splices: list[tuple[int, int, str]] = []
    done: set[str] = set()
    missed: list[str] = []
    uses_key = False
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or _is_cte(table):
            continue
        relation = f"{_ident(table.args.get('db')) or catalog.default_schema}.{_ident(table.this)}"
        if relation not in sensitive and relation.lower() not in sensitive:
            continue
        masks = masked_columns(relation, catalog, rules)
        span = _span(table, text)
        if masks is None or span is None or not isinstance(table.parent, _SCANS) or set(table.args) - _PLAIN:
            missed.append(relation)
            continue
        scan, keyed_scan = _masked_scan(table, relation, text[span[0]:span[1]], catalog, masks, keyed, hash_function)
        uses_key = uses_key or keyed_scan
        start, end = span
        # `accounts *` (descendants included, as without the star: the masked scan includes them).
        star = _DESCENDANTS_STAR.match(text, end)
        end = star.end() if star else end
        # `TABLE accounts` is `SELECT * FROM accounts`; a derived table cannot follow TABLE.
        command = _TABLE_COMMAND.search(text, 0, start)
        if command is not None:
            start, scan = command.start(), f"SELECT * FROM {scan}"
        splices.append((start, end, scan))
        done.add(relation)
    # `schema.table.column` cannot name the derived table (it answers to `table`): the schema goes.
    for column in tree.find_all(exp.Column):
        db, owner = column.args.get("db"), column.args.get("table")
        if not isinstance(db, exp.Identifier) or not isinstance(owner, exp.Identifier):
            continue
        if f"{_ident(db)}.{_ident(owner)}" not in done:
            continue
        first = column.args.get("catalog") or db
        qualifier = _span_of(first), _span_of(owner)
        if qualifier[0] is None or qualifier[1] is None:
            missed.append(f"{_ident(db)}.{_ident(owner)}")
            continue
        splices.append((qualifier[0][0], qualifier[1][0], ""))
    out = text
    for start, end, scan in sorted(splices, reverse=True):
        out = out[:start] + scan + out[end:]
    complete = not missed and sensitive <= done | {r.lower() for r in done}
    why = None if complete else (f"`{missed[0]}` is read where it cannot be masked at the source" if missed
                                 else "a sensitive relation is read other than by a table reference")
    if complete and catalog.dialect != "sqlite":
        # PostgreSQL's own parser must see every scan of a sensitive relation inside a masking
        # derived table: a scan sqlglot did not see (or saw as a CTE) leaves the text as written.
        unmasked = _unmasked_pg_scan(_with_numbered_params(out), sensitive, catalog, rules, keyed=keyed)
        if unmasked is not None:
            complete, why = False, f"PostgreSQL's parser sees a scan of `{unmasked}` the rewrite does not mask"
    if uses_key and catalog.dialect != "sqlite":
        if _AGENT_PARAMETER.search(text):
            # The key travels as bind parameters: a `$1` of the agent's would read it.
            return SourceRewrite(text, frozenset(), False, why="the statement has a bind parameter ($n)")
        out = _psycopg_text(out)
    return SourceRewrite(out, frozenset(done), complete, uses_key and catalog.dialect != "sqlite", why)


def _ident(node: exp.Expression | None) -> str:
    if node is None:
        return ""
    if isinstance(node, exp.Identifier):
        return node.this if node.quoted else node.this.lower()
    return node.name.lower()


def _is_cte(table: exp.Table) -> bool:
    """Whether an unqualified name refers to a CTE in scope (PostgreSQL's and SQLite's rules: a
    CTE sees those before it, itself and all others too under RECURSIVE; the main query sees all)."""
    if table.args.get("db") is not None:
        return False
    name = _ident(table.this)
    through: exp.Expr | None = None  # the CTE whose body the name is in, on the way up
    node: exp.Expr | None = table
    while node is not None:
        with_ = node.args.get("with_")
        if isinstance(with_, exp.With):
            ctes = list(with_.expressions)
            inside = next((i for i, cte in enumerate(ctes) if cte is through), None)
            recursive = bool(with_.args.get("recursive"))
            visible = ctes if inside is None or recursive else ctes[:inside]
            if any(cte.alias_or_name and _ident(cte.args["alias"].this) == name for cte in visible if cte.args.get("alias")):
                return True
        if isinstance(node, exp.CTE):
            through = node
        node = node.parent
    return False


def _span_of(node: exp.Expression) -> tuple[int, int] | None:
    meta = getattr(node, "meta", None) or {}
    return (meta["start"], meta["end"] + 1) if "start" in meta and "end" in meta else None


def _span(table: exp.Table, text: str) -> tuple[int, int] | None:
    """Where the table's name is in ``text`` (with `ONLY` before it): [start, end)."""
    parts = [p for p in (table.args.get("catalog"), table.args.get("db"), table.this) if p is not None]
    metas = [getattr(p, "meta", None) or {} for p in parts]
    if any("start" not in m or "end" not in m for m in metas):
        return None
    start, end = metas[0]["start"], metas[-1]["end"] + 1
    if table.args.get("only"):
        found = re.search(r"ONLY\s*$", text[:start], re.IGNORECASE)
        if found is None:
            return None
        start = found.start()
    return start, end


def _masked_scan(table: exp.Table, relation: str, written: str, catalog: Catalog, masks: Mapping[str, str], keyed: bool,
                 hash_function: str | None) -> tuple[str, bool]:
    """``(SELECT ..., <masker SQL> AS "col", ... FROM <table>) AS <alias>`` and whether it uses the key.
    The derived table is built once per catalog, relation and spelling of the name (``written``)."""
    aliased = table.args.get("alias") is not None
    key = ("source-scan", relation, written, aliased, tuple(sorted(masks.items())), keyed, hash_function)
    built = catalog.memo.get(key)
    if built is None:
        dialect = catalog.dialect
        inner = exp.Table(this=table.this.copy(), db=_copy(table.args.get("db")), catalog=_copy(table.args.get("catalog")),
                          only=table.args.get("only"))
        selects: list[exp.Expr] = []
        uses_key = False
        for column in catalog.columns(relation) or ():
            ref = exp.column(column, quoted=True)
            masker = masks.get(column)
            if masker is None:
                selects.append(ref)
                continue
            value, keyed_value = masker_sql(masker, ref, dialect, keyed=keyed, hash_function=hash_function)
            uses_key = uses_key or keyed_value
            selects.append(exp.alias_(value, column, quoted=True))
        derived = exp.Subquery(this=exp.Select(expressions=selects).from_(inner, copy=False))
        # The derived table answers to the alias as written (after the splice), or to the table's own name.
        if not aliased:
            derived.set("alias", exp.TableAlias(this=table.this.copy()))
        catalog.memo[key] = built = (derived.sql(dialect=dialect), uses_key)
    return built


def _copy(node: exp.Expression | None) -> exp.Expression | None:
    return node.copy() if node is not None else None


def masker_sql(masker: str, value: exp.Expression, dialect: str, *, keyed: bool = False,
               hash_function: str | None = None) -> tuple[exp.Expression, bool]:
    """One masker as an SQL expression over ``value`` (a column), and whether it uses the key.
    NULL stays NULL (except that ``null`` makes everything NULL), as in maskers.py."""
    if masker not in STRENGTH:
        raise ValueError(f"unknown masker {masker!r}")
    if masker == "null":
        return exp.Null(), False
    text = exp.Cast(this=value.copy(), to=exp.DataType.build("text"))
    uses_key = False
    if masker == "redact" or (masker == "hash" and not keyed):
        masked: exp.Expression = exp.Literal.string(REDACTED)
    elif masker == "hash" and dialect == "sqlite":
        if not hash_function:
            raise ValueError("the keyed hash needs the executor's function on SQLite")
        masked, uses_key = exp.Anonymous(this=hash_function, expressions=[value.copy()]), True
    elif masker == "hash":
        # HMAC-SHA256(key, text) = sha256(opad || sha256(ipad || text)); the first 8 bytes in hex.
        ipad, opad = (exp.Placeholder(this=p) for p in KEY_PARAMS)
        utf8 = exp.Anonymous(this="convert_to", expressions=[text, exp.Literal.string("UTF8")])
        inner = exp.Anonymous(this="sha256", expressions=[exp.DPipe(this=ipad, expression=utf8)])
        outer = exp.Anonymous(this="sha256", expressions=[exp.DPipe(this=opad, expression=inner)])
        hexed = exp.Anonymous(this="encode", expressions=[outer, exp.Literal.string("hex")])
        masked = exp.DPipe(this=exp.Literal.string("h:"),
                           expression=_substr(hexed, exp.Literal.number(1), exp.Literal.number(16)))
        uses_key = True
    elif masker == "email":
        # The last '@': what RTRIM leaves once every other character is trimmed from the right.
        length = exp.Length(this=text.copy())
        upto = exp.Length(this=exp.Anonymous(this="rtrim", expressions=[
            text.copy(), exp.Anonymous(this="replace", expressions=[text.copy(), exp.Literal.string("@"), exp.Literal.string("")])]))
        has_domain = exp.and_(exp.GT(this=upto, expression=exp.Literal.number(0)), exp.LT(this=upto.copy(), expression=length))
        domain = _substr(text.copy(), exp.Add(this=upto.copy(), expression=exp.Literal.number(1)))
        masked = exp.Case(ifs=[exp.If(this=has_domain, true=exp.DPipe(this=exp.Literal.string("***@"), expression=domain))],
                          default=exp.Literal.string(REDACTED))
    else:  # partial: the last min(4, length // 2) characters behind a fixed '****'
        length = exp.Length(this=text.copy())
        keep = exp.Least(this=exp.Literal.number(4), expressions=[exp.Div(this=length, expression=exp.Literal.number(2), typed=True)])
        start = exp.Add(this=exp.Sub(this=length.copy(), expression=keep), expression=exp.Literal.number(1))
        masked = exp.DPipe(this=exp.Literal.string("****"), expression=_substr(text.copy(), start))
    return exp.Case(ifs=[exp.If(this=exp.Is(this=value.copy(), expression=exp.Null()), true=exp.Null())],
                    default=masked), uses_key


def _with_numbered_params(text: str) -> str:
    """The key's placeholders as PostgreSQL's `$n`, for its parser."""
    for n, name in enumerate(KEY_PARAMS, 1):
        text = text.replace(f"%({name})s", f"${n}")
    return text


def _unmasked_pg_scan(text: str, sensitive: frozenset[str], catalog: Catalog, rules: MaskRules, *,
                     keyed: bool = False) -> str | None:
    """The first sensitive relation PostgreSQL's parser sees scanned other than as the only table
    of a masking derived table: `(SELECT <exactly the select list the rewrite builds> FROM t)`."""
    from pglast import parser as pg  # PostgreSQL's own parser (policy.sql uses it as its second opinion)

    try:
        tree = json.loads(pg.parse_sql_json(text))
    except pg.ParseError:
        # Not PostgreSQL as rewritten (or as written): not masked at the source; analysed as written.
        return next(iter(sorted(sensitive)), "?")
    return _first_unmasked(tree, sensitive, catalog, rules, keyed)


def _first_unmasked(node: Any, sensitive: frozenset[str], catalog: Catalog, rules: MaskRules, keyed: bool) -> str | None:
    if isinstance(node, list):
        for item in node:
            found = _first_unmasked(item, sensitive, catalog, rules, keyed)
            if found is not None:
                return found
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "RangeVar":
                relation = _pg_relation(value, catalog)
                if relation in sensitive:
                    return relation
            elif key == "RangeSubselect" and _is_masked_scan(value, sensitive, catalog, rules, keyed):
                continue  # ours: its select list is the masked one, its only table the relation
            elif isinstance(value, (dict, list)):
                found = _first_unmasked(value, sensitive, catalog, rules, keyed)
                if found is not None:
                    return found
    return None


def _pg_relation(scan: dict[str, Any], catalog: Catalog) -> str:
    return f"{scan.get('schemaname') or catalog.default_schema}.{scan.get('relname', '')}"


def _is_masked_scan(subselect: dict[str, Any], sensitive: frozenset[str], catalog: Catalog, rules: MaskRules,
                    keyed: bool) -> bool:
    select = subselect.get("subquery", {}).get("SelectStmt")
    if not isinstance(select, dict) or set(select) - {"targetList", "fromClause", "limitOption", "op"}:
        return False
    tables = select.get("fromClause") or []
    if len(tables) != 1 or "RangeVar" not in tables[0]:
        return False
    relation = _pg_relation(tables[0]["RangeVar"], catalog)
    return relation in sensitive and _without_locations(select.get("targetList")) == _expected_targets(relation, catalog, rules, keyed)


_LOCATION = re.compile(r', "location": -?\d+|"location": -?\d+, ?')


def _without_locations(node: Any) -> str:
    return _LOCATION.sub("", json.dumps(node, sort_keys=True))


def _expected_targets(relation: str, catalog: Catalog, rules: MaskRules, keyed: bool) -> str | None:
    """The select list the rewrite builds for ``relation``, as PostgreSQL's parser reads it."""
    key = ("source-targets", relation, rules, keyed)
    if key not in catalog.memo:
        from pglast import parser as pg

        masks = masked_columns(relation, catalog, rules) or {}
        selects = []
        for column in catalog.columns(relation) or ():
            ref = exp.column(column, quoted=True)
            masker = masks.get(column)
            selects.append(ref if masker is None else exp.alias_(masker_sql(masker, ref, "postgres", keyed=keyed)[0], column, quoted=True))
        sql = _with_numbered_params(exp.Select(expressions=selects).sql(dialect="postgres"))
        parsed = json.loads(pg.parse_sql_json(sql))["stmts"][0]["stmt"]["SelectStmt"]
        catalog.memo[key] = _without_locations(parsed.get("targetList"))
    found = catalog.memo[key]
    return found if isinstance(found, str) else None


def _substr(*args: exp.Expression) -> exp.Expression:
    # `substr` is spelled alike in both dialects (sqlglot writes SUBSTRING ... FROM for PostgreSQL).
    return exp.Anonymous(this="substr", expressions=list(args))


def _psycopg_text(text: str) -> str:
    """psycopg reads `%` as the start of a placeholder once parameters are passed: every `%` of the
    statement doubled, then the key's placeholders restored."""
    out = text.replace("%", "%%")
    for name in KEY_PARAMS:
        out = out.replace(f"%%({name})s", f"%({name})s")
    return out


def hmac_pads(key: bytes) -> dict[str, bytes]:
    """HMAC-SHA256's inner and outer padded keys (RFC 2104), the values of ``KEY_PARAMS``."""
    import hashlib

    block = 64
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    return {KEY_PARAMS[0]: bytes(b ^ 0x36 for b in key), KEY_PARAMS[1]: bytes(b ^ 0x5C for b in key)}


__all__ = ["AtSource", "KEY_PARAMS", "SourceRewrite", "hmac_pads", "masked_columns", "masker_sql", "rewrite"]
