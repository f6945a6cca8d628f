"""Functions and tables judged from PostgreSQL's own catalog: pure data in, an Outcome out.

tools/ reads ``pg_proc``, ``pg_operator``, ``pg_type``, ``pg_cast``, ``pg_class`` and ``pg_inherits``
once per connection (and again after DDL) and hands them here as a ``FunctionCatalog``; nothing in
this module does I/O.

Tables: a name the text wrote without a schema is resolved along the search_path as PostgreSQL
does (``pg_tokens`` is ``public.pg_tokens`` when pg_catalog has none), and a table's inheritance
children and partitions count as read (or written) with it: ``FunctionCatalog.tables``.

Every function reference the parser found (``FunctionRef``: a call, attribute notation, an operator
or a cast) is resolved as PostgreSQL would — by name, argument count and search_path — to the
functions it *may* call. Without argument types the resolution over-approximates: every candidate
with a fitting argument count in any schema of the path is judged, and all of them must pass.

A function passes a rule when (checked in this order):

1. it is not one of ``SQL_TEXT``: functions that run SQL text or read a table named in a string
   (ts_stat, query_to_xml, table_to_xml, crosstab, dblink, ...): denied whatever the rule says;
2. the rule names it in ``allow_functions`` (``name`` or ``schema.name``);
3. it is built in (``BUILTIN_SQL``: in pg_catalog or information_schema, owned by the bootstrap
   superuser, created by initdb), not on Bastion's list of dangerous functions, and not one of ``REVEALING``;
4. it is immutable or stable, or one of ``HARMLESS_VOLATILE``; any other volatile function counts
   as a write, which only a rule allowing INSERT, UPDATE, DELETE or MERGE covers.

A reference that resolves to nothing is denied: what Bastion cannot name, it does not run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bastion.policy.cache import ClearingCache
from bastion.policy.outcome import Outcome
from bastion.policy.rules import SqlRule
from bastion.policy.sql import dangerous_functions, postgres_parser
from bastion.policy.sql.facts import WRITE_KINDS, FunctionRef, Statement

Row = tuple[Any, ...]  # a catalog query's row, as the driver returns it
_MEMO_SIZE = 8192  # references resolved and judged, per catalog

# What tools/ runs to read the catalog. A function is built in when PostgreSQL's initdb made it:
# in pg_catalog (or information_schema, whose views call its _pg_* helpers), owned by the bootstrap
# superuser (OID 10), with an OID below FirstNormalObjectId.
BUILTIN_SQL = "(p.oid < 16384 AND n.nspname IN ('pg_catalog', 'information_schema') AND p.proowner = 10)"
PROCS_SQL = f"""
SELECT p.oid::int8, n.nspname, p.proname, p.pronargs, p.pronargdefaults, p.provariadic <> 0, p.provolatile::text,
       {BUILTIN_SQL}
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
"""
OPERATORS_SQL = """
SELECT n.nspname, o.oprname, CASE WHEN o.oprleft = 0 THEN 1 ELSE 2 END, o.oprcode::oid::int8
FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
"""
RELATIONS_SQL = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND n.nspname !~ '^pg_(toast|temp_)'
"""
# Every (ancestor, descendant) pair of inheritance and partitioning, at any depth.
INHERITS_SQL = """
WITH RECURSIVE d(parent, child) AS (
  SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits
  UNION SELECT d.parent, i.inhrelid FROM d JOIN pg_catalog.pg_inherits i ON i.inhparent = d.child)
SELECT pn.nspname || '.' || p.relname, cn.nspname || '.' || c.relname
FROM d JOIN pg_catalog.pg_class p ON p.oid = d.parent JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
       JOIN pg_catalog.pg_class c ON c.oid = d.child JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
"""
# Views' definitions, printed with search_path = pg_catalog (so every other name comes qualified):
# reading a view runs the functions and operators it calls. The system views too: pg_locks runs the
# volatile pg_lock_status(), pg_stat_ssl the other-session pg_stat_get_activity(), and they are
# judged by those functions like any view, not by a list of view names.
VIEWS_SQL = """
SELECT n.nspname || '.' || c.relname, pg_catalog.pg_get_viewdef(c.oid)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'v' AND n.nspname !~ '^pg_(toast|temp_)'
"""
# A cast to a type runs the type's input function (from a literal) or a cast function into it.
TYPES_SQL = """
SELECT n.nspname, t.typname,
       array_remove(array[t.typinput::oid::int8] || array(SELECT c.castfunc::int8 FROM pg_catalog.pg_cast c
                                                          WHERE c.casttarget = t.oid AND c.castfunc <> 0), 0)
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
"""

# Functions that run SQL given as text, or read whole tables named in a string: the table rules
# cannot see what they read, so no rule may allow them.
SQL_TEXT: frozenset[str] = frozenset(
    name for name, risk in dangerous_functions.POSTGRES.items()
    if risk.category == "dynamic-sql" or name.startswith("dblink"))
_SQL_TEXT_PREFIXES = ("crosstab", "dblink", "query_to_xml", "cursor_to_xml", "table_to_xml", "schema_to_xml",
                      "database_to_xml")

# Built-in, stable or immutable, and yet they show other sessions or the server's own state.
REVEALING: dict[str, str] = {
    **{name: "shows other sessions' activity" for name in (
        "pg_stat_get_activity", "pg_stat_get_backend_activity", "pg_stat_get_backend_activity_start",
        "pg_stat_get_backend_client_addr", "pg_stat_get_backend_client_port", "pg_stat_get_backend_dbid",
        "pg_stat_get_backend_idset", "pg_stat_get_backend_pid", "pg_stat_get_backend_start",
        "pg_stat_get_backend_userid", "pg_stat_get_backend_wait_event", "pg_stat_get_backend_wait_event_type",
        "pg_stat_get_backend_xact_start", "pg_stat_get_progress_info", "pg_current_snapshot",
        "txid_current_snapshot")},
    **{name: "shows replication and WAL state" for name in (
        "pg_stat_get_wal_senders", "pg_stat_get_wal_receiver", "pg_stat_get_subscription",
        "pg_stat_get_replication_slot", "pg_get_replication_slots", "pg_stat_get_archiver")},
    **{name: "shows the server's address, paths or start-up" for name in (
        "inet_server_addr", "inet_server_port", "pg_tablespace_location", "pg_postmaster_start_time",
        "pg_conf_load_time")},
}

# Built-in volatile functions that change nothing: they read a clock, a random source or sizes.
HARMLESS_VOLATILE: frozenset[str] = frozenset({
    "random", "clock_timestamp", "timeofday", "gen_random_uuid", "currval", "lastval",
    "pg_relation_size", "pg_table_size", "pg_indexes_size", "pg_total_relation_size", "pg_database_size",
    "pg_tablespace_size", "pg_is_in_recovery", "pg_jit_available", "pg_partition_tree", "pg_partition_ancestors",
})


@dataclass(frozen=True)
class Proc:
    """One row of pg_proc, as much as the judgement needs."""

    oid: int
    schema: str
    name: str
    nargs: int
    ndefaults: int = 0
    variadic: bool = False
    volatility: str = "i"  # i(mmutable) | s(table) | v(olatile)
    builtin: bool = True

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def takes(self, nargs: int) -> bool:
        """Whether a call with ``nargs`` arguments can reach this function (defaults, VARIADIC)."""
        if self.variadic:
            return nargs >= self.nargs - 1 - self.ndefaults
        return self.nargs - self.ndefaults <= nargs <= self.nargs


@dataclass(frozen=True, eq=False)
class FunctionCatalog:
    """One connection's functions, operators and types, and the search_path its calls run with."""

    procs: Mapping[str, tuple[Proc, ...]]  # by name
    operators: Mapping[tuple[str, int], tuple[tuple[str, Proc], ...]]  # (name, 1|2) → (schema, function)
    types: Mapping[str, tuple[tuple[str, tuple[Proc, ...]], ...]]  # type name → (schema, functions a cast runs)
    search_path: tuple[str, ...] = ("pg_catalog", "public")
    _by_oid: dict[int, Proc] = field(default_factory=dict, repr=False)
    # Every relation as schema.name, and each one's inheritance children and partitions (any depth).
    relations: frozenset[str] = frozenset()
    children: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Each view's function references and the relations it reads (None: its definition cannot be parsed).
    views: Mapping[str, tuple[frozenset[FunctionRef], frozenset[str]] | None] = field(default_factory=dict)
    # What resolve() and judge() found for a reference, kept while this catalog is the one in force
    # (it is immutable): an `=` has about sixty candidates, judged once, not on every new text.
    _memo: ClearingCache[Any, Any] = field(default_factory=lambda: ClearingCache(_MEMO_SIZE), repr=False)

    def _remember(self, key: Any, value: Any) -> Any:
        self._memo.put(key, value)  # a bound, not an LRU: texts name few distinct references
        return value

    @classmethod
    def build(cls, procs: Iterable[Row], operators: Iterable[Row], types: Iterable[Row],
              search_path: Iterable[str], relations: Iterable[Row] = (),
              inherits: Iterable[Row] = (), views: Iterable[Row] = ()) -> FunctionCatalog:
        """From the rows of PROCS_SQL, OPERATORS_SQL, TYPES_SQL, RELATIONS_SQL, INHERITS_SQL and VIEWS_SQL."""
        by_oid = {int(r[0]): Proc(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), bool(r[5]), str(r[6]), bool(r[7]))
                  for r in procs}
        by_name: dict[str, list[Proc]] = {}
        for proc in by_oid.values():
            by_name.setdefault(proc.name, []).append(proc)
        ops: dict[tuple[str, int], list[tuple[str, Proc]]] = {}
        for schema, name, arity, code in operators:
            # An operator whose function is missing is judged as an unknown one: denied.
            proc = by_oid.get(int(code)) or Proc(int(code), schema, f"(function of operator {name})", 0, builtin=False,
                                                  volatility="v")
            ops.setdefault((name, int(arity)), []).append((schema, proc))
        typ: dict[str, list[tuple[str, tuple[Proc, ...]]]] = {}
        for schema, name, oids in types:
            run = tuple(by_oid.get(int(o)) or Proc(int(o), schema, f"(cast function into {name})", 1, builtin=False,
                                                    volatility="v") for o in oids or ())
            typ.setdefault(name, []).append((schema, run))
        path = tuple(dict.fromkeys(["pg_catalog", *(s.strip() for s in search_path if s.strip())]))
        kids: dict[str, list[str]] = {}
        for parent, child in inherits:
            kids.setdefault(parent, []).append(child)
        return cls({k: tuple(v) for k, v in by_name.items()}, {k: tuple(v) for k, v in ops.items()},
                   {k: tuple(v) for k, v in typ.items()}, path, by_oid,
                   frozenset(f"{schema}.{name}" for schema, name in relations),
                   {k: tuple(sorted(set(v))) for k, v in kids.items()},
                   {name: postgres_parser.view_facts(definition or "") for name, definition in views})

    def view_calls(self, relations: Iterable[str]) -> list[tuple[str, FunctionRef | None]]:
        """The function references of every view among ``relations`` and of the views they read, at
        any depth, with the view each is in; None for a view whose definition cannot be read."""
        out: list[tuple[str, FunctionRef | None]] = []
        seen: set[str] = set()
        stack = list(relations)
        while stack:
            name = stack.pop()
            if name in seen or name not in self.views:
                continue
            seen.add(name)
            facts = self.views[name]
            if facts is None:
                out.append((name, None))
                continue
            # Printed with search_path = pg_catalog, an unqualified name in a definition is pg_catalog's.
            out.extend((name, replace(ref, schema=ref.schema or "pg_catalog"))
                       for ref in sorted(facts[0], key=lambda r: (r.how, r.schema or "", r.name, r.nargs)))
            stack.extend(facts[1])
        return out

    def relation(self, name: str, unqualified: bool) -> str:
        """Where PostgreSQL finds a relation: an unqualified name in the first schema of the search
        path that has it (pg_catalog first); a name found nowhere stays as the analyser qualified it."""
        if not unqualified:
            return name
        bare = name.split(".", 1)[1]
        for schema in self.search_path:
            if f"{schema}.{bare}" in self.relations:
                return f"{schema}.{bare}"
        return name

    def tables(self, stmt: Statement) -> tuple[frozenset[str], frozenset[str]]:
        """The statement's reads and writes as the server sees them: names resolved along the
        search path, and every inheritance child or partition of each (a parent's scan, UPDATE or
        DELETE reaches them; ONLY is not told apart, which can only deny more).

        >>> cat = FunctionCatalog.build([], [], [], ["public"], [("public", "pg_tokens")])
        >>> from bastion.policy import analyse
        >>> cat.tables(analyse("SELECT * FROM pg_tokens", "postgres").statements[0])[0]
        frozenset({'public.pg_tokens'})
        """
        key = ("tables", stmt.reads, stmt.writes, stmt.unqualified)  # a frozenset keeps its hash once made
        found = self._memo.get(key)
        if found is None:
            found = self._remember(key, self._tables(stmt))
        return found

    def _tables(self, stmt: Statement) -> tuple[frozenset[str], frozenset[str]]:
        def expand(names: frozenset[str]) -> frozenset[str]:
            out: set[str] = set()
            for name in names:
                real = self.relation(name, name in stmt.unqualified)
                out.add(real)
                out.update(self.children.get(real, ()))
            return frozenset(out)

        return expand(stmt.reads), expand(stmt.writes)

    def _in_scope(self, schema: str | None, candidate: str, *, types: bool = False) -> bool:
        if schema is not None:
            return candidate == schema
        # Unqualified functions and operators are never looked up in pg_temp; types are.
        return candidate in self.search_path or (types and candidate.startswith("pg_temp"))

    def resolve(self, ref: FunctionRef) -> tuple[Proc, ...] | None:
        """The functions ``ref`` may run; None when PostgreSQL could resolve it to nothing Bastion
        knows. An attribute that names no one-argument function is a column: ``()``."""
        key = ("resolve", ref)
        if key in self._memo:
            return self._memo[key]
        return self._remember(key, self._resolve(ref))

    def _resolve(self, ref: FunctionRef) -> tuple[Proc, ...] | None:
        if ref.how == "operator":
            found = tuple(p for s, p in self.operators.get((ref.name, ref.nargs), ()) if self._in_scope(ref.schema, s))
            return found or None
        if ref.how == "cast":
            hits = [run for s, run in self.types.get(ref.name, ()) if self._in_scope(ref.schema, s, types=True)]
            return tuple(p for run in hits for p in run) if hits else None
        found = tuple(p for p in self.procs.get(ref.name, ()) if self._in_scope(ref.schema, p.schema) and p.takes(ref.nargs))
        if ref.how == "attribute":
            return found
        if not found and ref.nargs == 1:
            # A function-style cast: `int4(x)` with no such function is a cast to the type int4.
            hits = [run for s, run in self.types.get(ref.name, ()) if self._in_scope(ref.schema, s, types=True)]
            if hits:
                return tuple(p for run in hits for p in run)
        return found or None


def writes(rule: SqlRule) -> bool:
    """Whether the rule covers writes at all (allows or holds INSERT, UPDATE, DELETE or MERGE)."""
    return bool((rule.allow | rule.review) & WRITE_KINDS)


def _named(rule: SqlRule, proc: Proc) -> bool:
    return proc.name.lower() in rule.allow_functions or proc.qualified.lower() in rule.allow_functions


def runs_sql_text(name: str) -> bool:
    return name in SQL_TEXT or name.startswith(_SQL_TEXT_PREFIXES)


def judge(rule: SqlRule, stmt: Statement, catalog: FunctionCatalog) -> Outcome | None:
    """The first reference in ``stmt`` that ``rule`` does not cover, as an Outcome; None if all pass.

    >>> cat = FunctionCatalog.build([(1, "pg_catalog", "lower", 1, 0, False, "i", True)], [], [], ["public"])
    >>> from bastion.policy.presets import READ_ONLY
    >>> from bastion.policy import analyse
    >>> judge(READ_ONLY, analyse("SELECT lower('A')", "postgres").statements[0], cat) is None
    True
    """
    # What it reads of the statement: its references and the relations it reads (for their views).
    # Remembered per rule object, like _judge_all: texts that differ in literals only are judged once.
    reads = catalog.tables(stmt)[0]
    key = ("judged", id(rule), stmt.calls, reads)
    hit = catalog._memo.get(key)
    if hit is not None and hit[0] is rule:
        return hit[1]
    outcome = _judge(rule, stmt.calls, reads, catalog)
    catalog._remember(key, (rule, outcome))
    return outcome


def _judge(rule: SqlRule, calls: frozenset[FunctionRef], reads: frozenset[str], catalog: FunctionCatalog) -> Outcome | None:
    for ref in sorted(calls, key=lambda r: (r.how, r.schema or "", r.name, r.nargs)):
        if ref.how in ("call", "attribute") and runs_sql_text(ref.name):
            return sql_text_outcome(rule, ref.label)
        procs = catalog.resolve(ref)
        if procs is None:
            return Outcome("none", f"{rule.id}:function",
                           f"`{ref.label}` with {ref.nargs} argument(s) is not something PostgreSQL can resolve on this "
                           f"connection's search path ({', '.join(catalog.search_path)}); what Bastion cannot resolve, it does not run",
                           hint="Check the name and the number of arguments, or qualify it with its schema.")
        outcome = _judge_all(rule, catalog, procs, ref)
        if outcome is not None:
            return outcome
    # A view runs what its definition calls, as if the text had called it.
    for view, called in catalog.view_calls(reads):
        if called is None:
            return Outcome("none", f"{rule.id}:function", f"the definition of view `{view}` cannot be read, so Bastion "
                           "cannot tell which functions reading it runs", hint="Read the tables it is built on instead.")
        if called.how in ("call", "attribute") and runs_sql_text(called.name):
            return sql_text_outcome(rule, f"{called.label}` in view `{view}")
        procs = catalog.resolve(called)
        if procs is None:
            return Outcome("none", f"{rule.id}:function", f"the view `{view}` calls `{called.label}`, which PostgreSQL cannot "
                           "resolve on this connection's search path; what Bastion cannot resolve, it does not run",
                           hint="Read the tables it is built on instead.")
        outcome = _judge_all(rule, catalog, procs, called, view)
        if outcome is not None:
            return outcome
    return None


def _judge_all(rule: SqlRule, catalog: FunctionCatalog, procs: tuple[Proc, ...], ref: FunctionRef,
               view: str | None = None) -> Outcome | None:
    """The first of ``procs`` (what ``ref`` resolved to) that ``rule`` does not cover; None if all
    pass. Remembered on the catalog per (rule, reference, view): the same rule object, or judged again."""
    key = ("judge", id(rule), ref, view)
    hit = catalog._memo.get(key)
    if hit is not None and hit[0] is rule:
        return hit[1]
    outcome = next((o for proc in procs if (o := judge_function(rule, proc, ref, view=view)) is not None), None)
    catalog._remember(key, (rule, outcome))
    return outcome


def sql_text_outcome(rule: SqlRule, label: str) -> Outcome:
    return Outcome("deny", f"{rule.id}:sql-text-function",
                   f"`{label}` runs SQL given as text or reads a table named in a string, which no table rule can see; "
                   "Bastion never runs it",
                   hint="Write the query itself as plain SQL instead.")


def judge_function(rule: SqlRule, proc: Proc, ref: FunctionRef, view: str | None = None) -> Outcome | None:
    """One function ``ref`` may run, against one rule (see the module docstring for the order)."""
    via = {"call": "", "attribute": f" (reached as `{ref.label}`, attribute notation)"}.get(ref.how, f" (run by the {ref.label})")
    if view is not None:
        via = f" (called by the view `{view}`)"
    if runs_sql_text(proc.name):
        return sql_text_outcome(rule, proc.qualified + "()")
    if _named(rule, proc):
        return None
    allow_hint = f'Rewrite the query without it, or ask the operator to add `allow_functions = ["{proc.qualified}"]` to rule `{rule.id}`.'
    if not proc.builtin:
        return Outcome("none", f"{rule.id}:function",
                       f"`{proc.qualified}()`{via} is defined in this database, not built into PostgreSQL, so Bastion "
                       "cannot tell what it does; it is denied unless a rule names it", hint=allow_hint)
    risk = dangerous_functions.POSTGRES.get(proc.name)
    if risk is not None:
        return Outcome("none", f"{rule.id}:function", f"`{proc.name}()`{via} {risk.why}; it is denied by default",
                       hint=f"Rewrite the query without `{proc.name}()`.")
    if proc.name in REVEALING:
        return Outcome("none", f"{rule.id}:function", f"`{proc.name}()`{via} {REVEALING[proc.name]}; it is denied by default",
                       hint=f"Rewrite the query without `{proc.name}()`.")
    if proc.volatility == "v" and proc.name not in HARMLESS_VOLATILE and not writes(rule):
        return Outcome("none", f"{rule.id}:function",
                       f"`{proc.name}()`{via} is volatile: it can change the database or the session, so it counts as a "
                       f"write, and rule `{rule.id}` allows only reads",
                       hint=f"Rewrite the query without `{proc.name}()`; immutable and stable built-in functions pass.")
    return None


def changes_state(stmt: Statement, catalog: FunctionCatalog) -> bool:
    """Whether a reference in ``stmt`` may run a volatile function that is not harmless (or one
    Bastion cannot resolve): such a call cannot run in a READ ONLY transaction."""
    reads = catalog.tables(stmt)[0]
    key = ("changes of", stmt.calls, reads)
    found = catalog._memo.get(key)
    if found is None:
        refs: list[FunctionRef | None] = [*stmt.calls, *(ref for _, ref in catalog.view_calls(reads))]
        found = catalog._remember(key, any(ref is None or _changes_state(ref, catalog) for ref in refs))
    return bool(found)


def _changes_state(ref: FunctionRef, catalog: FunctionCatalog) -> bool:
    """Whether ``ref`` may run such a function; remembered on the catalog (an `=` has sixty candidates)."""
    key = ("changes", ref)
    found = catalog._memo.get(key)
    if found is None:
        procs = catalog.resolve(ref)
        found = catalog._remember(key, procs is None or any(
            p.volatility == "v" and not (p.builtin and p.name in HARMLESS_VOLATILE) for p in procs))
    return bool(found)
