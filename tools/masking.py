"""Masking in the guarded pipeline (step ⑥): per connection, its rules, hash key and catalog.

- Before a SQL text is vetted, ``refresh`` makes sure the connection's catalog is recent: read
  through the executor (tables, columns, view definitions), kept for ``CATALOG_TTL_S``, read again
  at once when the text names a relation the catalog does not list (a view created a moment ago)
  and after a statement that changed the schema (that name check parses the text in a worker
  thread: a long text takes seconds, which the event loop must not wait out). A table's masked
  columns are masked alike in its inheritance children and partitions (``MaskRules.inherited``). A catalog that cannot be read leaves the last one
  (or none: then every output of a sensitive relation is masked, fail closed).
- ``vet`` adds the mask plan to a decision: its verdict on inference channels and write flows
  (a deny wins, a review holds an allowed call), and its summary in the facts `check` shows.
- ``at_source`` gives the executor what runs instead: each plain read of a relation with masked
  columns rewritten so that every scan returns masked values (policy/masking/source.py), with the
  keyed hash's bind parameters (PostgreSQL) or function (SQLite).
- ``mask_query`` masks a result as it comes back from the executor, before anything records or
  returns it: the agent and the audit log get the same rows, and the record of what was masked.
- ``mask_shell`` runs the detectors over a shell's stdout and stderr.
- ``mask_error`` does the same for a database error before the agent or the log sees it: on a
  connection that masks columns, every quoted value in the server's message is withheld (a cast
  error quotes the value it could not cast, a constraint error the key).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from bastion.policy import Decision, Statement, Verdict
from bastion.policy.errors import BastionError
from bastion.policy.presets import STATS_CATALOG
from bastion.policy.masking import Catalog, MaskPlan, MaskRules, mask, mask_result, mask_text, plan, strongest
from bastion.policy.masking.lineage import view_lineage
from bastion.policy.masking.plan import sensitive_relations
from bastion.policy.masking.source import AtSource, hmac_pads
from bastion.policy.sql.facts import DDL_KINDS
from bastion.tools.executors.base import QueryResult, TableInfo, json_value
from bastion.tools.executors.shell_base import ShellResult

if TYPE_CHECKING:
    from bastion.tools.connections import Connection, ShellConnection

log = logging.getLogger(__name__)

CATALOG_TTL_S = 30.0
# After a failed read, the catalog is not tried again for this long (the database is likely down).
RETRY_S = 2.0
# System relations the catalog never lists: naming them is no reason to read it again.
_SYSTEM_SCHEMAS = ("pg_catalog.", "information_schema.", "pg_toast.", "temp.")
_SYSTEM_PREFIXES = ("pg_", "sqlite_")


@dataclass
class Masking:
    """One connection's masking: rules (sensitive columns, predicate verdicts, detectors), the key of
    the `hash` masker, and the catalog lineage resolves names against."""

    rules: MaskRules = field(default_factory=MaskRules)
    key: bytes | None = field(default=None, repr=False)
    ttl_s: float = CATALOG_TTL_S
    _catalog: Catalog | None = field(default=None, repr=False)
    _read_at: float = field(default=float("-inf"), repr=False)
    _retry_at: float = field(default=float("-inf"), repr=False)
    _lock: anyio.Lock | None = field(default=None, repr=False)
    # The rules as configured; ``rules`` adds to them what children and partitions inherit.
    _configured: MaskRules | None = field(default=None, repr=False)
    # The SQLite function of the keyed hash at the source: a name no agent can guess or call.
    hash_function: str = field(default_factory=lambda: f"bastion_mask_hash_{secrets.token_hex(8)}", repr=False)

    @property
    def columns(self) -> bool:
        """Whether any column is masked here (else only detectors, if any, run)."""
        return bool(self.rules.columns)

    def catalog(self, dialect: str, default_schema: str) -> Catalog:
        """The last catalog read, or an empty one (every relation unknown: fail closed)."""
        if self._catalog is not None:
            return self._catalog
        return Catalog.build(dialect, default_schema, {})

    def forget(self) -> None:
        """The schema changed: read the catalog again before the next call."""
        self._read_at = float("-inf")

    async def refresh(self, connection: Connection, text: str | None = None) -> None:
        """Read the catalog again when it is missing, older than the TTL, or lacks a relation
        ``text`` names. Never raises: a catalog that cannot be read leaves the last one, and is
        tried again after a short pause (not on every call while the database is down)."""
        if not self.columns:
            return
        now = time.monotonic()
        if now < self._retry_at:
            return
        if now - self._read_at < self.ttl_s and not (text and await self._names_unknown_off_loop(connection, text)):
            return
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._read_at > now:
                return  # another call read it while this one waited
            try:
                tables = await connection.executor.catalog()
            except Exception:  # this call goes on with the old catalog (or none: fail closed)
                log.warning("cannot read the catalog of %s for masking", connection.name, exc_info=True)
                self._retry_at = time.monotonic() + RETRY_S
                return
            self._catalog = catalog_of(tables, connection.dialect, connection.policy.default_schema or "main")
            # A parent's masked column is masked in every child and partition (each is read on its own too).
            if self._configured is None:
                self._configured = self.rules
            self.rules = self._configured.inherited(self._catalog.ancestors, self._catalog.tables)
            self._read_at = time.monotonic()

    async def _names_unknown_off_loop(self, connection: Connection, text: str) -> bool:
        # Parsing a long text takes seconds: in a worker thread, not on the event loop every call shares.
        return await anyio.to_thread.run_sync(self._names_unknown, connection, text)

    def _names_unknown(self, connection: Connection, text: str) -> bool:
        from bastion.policy import analyse

        if self._catalog is None:
            return True
        analysis = analyse(text, connection.dialect, connection.policy.default_schema)
        return any(self._catalog.columns(name) is None and not name.startswith(_SYSTEM_SCHEMAS)
                   and not name.split(".", 1)[-1].startswith(_SYSTEM_PREFIXES)
                   for s in analysis.statements for name in s.effective.reads | s.effective.writes)

    def plan(self, connection: Connection, statements: Sequence[Statement], at_source: bool = True) -> MaskPlan:
        """The plan; ``at_source=False``: for rows of the statements run as written (all masked on output)."""
        how = AtSource(self.key is not None, self.hash_function if connection.dialect == "sqlite" else None) if at_source else None
        return plan(statements, self.catalog(connection.dialect, connection.policy.default_schema or "main"), self.rules, how)

    def sqlite_hash(self) -> Callable[[Any], Any]:
        """The keyed hash as SQLite calls it: the Python masker over the value as the result would hold it."""
        key = self.key
        seen: dict[Any, Any] = {}  # one call's values repeat (a card on every order): hashed once each

        def keyed_hash(value: Any) -> Any:
            try:
                return seen[value]
            except KeyError:
                hashed = mask("hash", json_value(value), key)
                if len(seen) < 100_000:
                    seen[value] = hashed
                return hashed

        return keyed_hash


@dataclass(frozen=True)
class AtSourceRun:
    """What the executor runs for a call masked at the source."""

    statements: tuple[Statement, ...]
    params: tuple[Mapping[str, Any] | None, ...] = ()
    functions: Mapping[str, Callable[[Any], Any]] | None = None


def at_source(connection: Connection, statements: Sequence[Statement], found: MaskPlan | None) -> AtSourceRun:
    """The statements with their masked scans rewritten (the plan's), and what those need: the
    hash key's bind parameters on PostgreSQL, the hash function on SQLite."""
    masking = connection.masking
    if found is None or not found.rewrites or masking is None:
        return AtSourceRun(tuple(statements))
    runs, params = [], []
    keyed = False
    for statement, rewritten in zip(statements, found.rewrites):
        runs.append(statement if rewritten is None else replace(statement, text=rewritten.text))
        pads = hmac_pads(masking.key) if rewritten is not None and rewritten.keyed and masking.key else None
        params.append(pads)
        keyed = keyed or (rewritten is not None and masking.key is not None)
    # Never for a call that names the function itself (in any statement): it would hash values of its choosing.
    named = any("bastion_mask_" in s.text.lower() for s in statements)
    functions = {masking.hash_function: masking.sqlite_hash()} if keyed and connection.dialect == "sqlite" and not named else None
    return AtSourceRun(tuple(runs), tuple(params) if any(params) else (), functions)


def plan_for(connection: Connection, statements: Sequence[Statement]) -> MaskPlan | None:
    """The mask plan a call runs and is masked by (one plan for both: the catalog may be read again
    in between)."""
    masking = connection.masking
    if masking is None or not masking.rules.active:
        return None
    return masking.plan(connection, statements)


async def refresh(connection: Connection, text: str | None = None) -> None:
    """Bring the connection's catalog up to date for ``text`` (see Masking.refresh); a no-op
    where nothing is masked by column."""
    if connection.masking is not None:
        await connection.masking.refresh(connection, text)


def catalog_of(tables: list[TableInfo], dialect: str, default_schema: str) -> Catalog:
    """The executor's catalog as plain data for policy.masking."""
    return Catalog.build(dialect, default_schema,
                         {t.qualified: tuple(c.name for c in t.columns) for t in tables},
                         {t.qualified: t.definition for t in tables if t.definition},
                         {t.qualified: t.ancestors for t in tables if t.ancestors})


def vet(connection: Connection, statements: tuple[Statement, ...] | None, facts: dict[str, Any] | None,
        decision: Decision) -> Decision:
    """The decision with the mask plan's verdict folded in; the plan's summary goes into ``facts``."""
    masking = connection.masking
    if masking is None or not masking.rules.active or statements is None or decision.verdict is Verdict.DENY:
        return decision
    stats = sorted(t for s in statements for t in s.effective.reads if t in STATS_CATALOG)
    if masking.columns and stats:
        return Decision.deny("masking:stats-catalog", f"`{stats[0]}` holds sample values of every column, masked ones "
                             "included, and this connection masks columns",
                             hint="Query the tables themselves; masked columns come back masked.")
    found = masking.plan(connection, statements)
    summary = found.summary()
    if facts is not None and summary:
        facts["masking"] = summary
    verdict = found.decision
    if verdict is None or verdict.verdict is Verdict.ALLOW:
        return decision
    # An inference channel or write flow the rules deny denies the call; one they hold holds an
    # allowed call (with the allowing rule's limits, so it runs bounded once approved).
    if verdict.verdict is Verdict.DENY:
        return verdict
    if decision.verdict is Verdict.ALLOW:
        return replace(verdict, limits=decision.limits, read_only=decision.read_only)
    return decision


def mask_query(connection: Connection, statements: tuple[Statement, ...], result: QueryResult,
               found: MaskPlan | None = None) -> QueryResult:
    """The result as the agent and the log may see it; ``result.masking`` records what was done.
    ``found``: the plan the statements ran by (columns masked at the source are not masked again);
    without it, the rows are taken to come from the statements as written: every column is masked here."""
    masking = connection.masking
    if masking is None:
        return result
    if masking.columns and any(s.effective.kind in DDL_KINDS for s in statements):
        masking.forget()  # the schema may have changed under the catalog
    if not masking.rules.active:
        return result
    if found is None:
        found = masking.plan(connection, statements, at_source=False)
    rows, record = mask_result(result.columns, result.rows, found, key=masking.key, in_place=True)
    result.rows = rows
    result.masking = record
    return result


# SQLSTATE classes whose messages quote data: data exceptions (a failed cast quotes its input),
# integrity violations (the key), PL/pgSQL RAISE, and internal errors.
_VALUE_CLASSES = ("22", "23", "P0", "XX", "38", "39")
_SQLSTATE = re.compile(r"PostgreSQL error (\w{5})")
# A quoted value ("...", '...'), and the values of a DETAIL such as `Key (id)=(42) already exists`.
_QUOTED = re.compile(r'"(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'|=\((?:[^()]|\([^()]*\))*\)')


def _withheld(match: re.Match[str]) -> str:
    text = match.group()
    return "=(…)" if text.startswith("=") else text[0] + "…" + text[0]


def mask_error(connection: Connection, error: BastionError) -> BastionError:
    """A database error as the agent and the audit log may see it. On a connection that masks
    columns, any error that can quote data (SQLite: every error) has its quoted values withheld,
    so `secret::int` cannot spell out a masked value; the detectors then run over what is left."""
    masking = connection.masking
    if masking is None or not (masking.columns or masking.rules.detectors):
        return error
    texts = [error.message, error.hint, error.detail]
    if masking.columns:
        state = _SQLSTATE.search(error.message)
        if state is None or state.group(1).startswith(_VALUE_CLASSES):
            texts = [_QUOTED.sub(_withheld, t) if t else t for t in texts]
    counts: dict[str, int] = {}
    if masking.rules.detectors:
        scanned = []
        for text in texts:
            if text:
                text, found = mask_text(text, masking.rules.detectors)
                for kind, n in found.items():
                    counts[kind] = counts.get(kind, 0) + n
            scanned.append(text)
        texts = scanned
    message, hint, detail = texts
    if message == error.message and hint == error.hint and detail == error.detail:
        return error
    note = "Quoted values in the database's message are withheld on this connection, which masks data."
    masked = type(error).__new__(type(error))
    masked.__dict__.update(error.__dict__)  # what a subclass carries besides the texts (a rule id)
    BastionError.__init__(masked, message or "", detail=detail, hint=f"{hint} {note}" if hint else note)
    return masked


def mask_shell(connection: ShellConnection, result: ShellResult) -> ShellResult:
    masking = connection.masking
    if masking is None or not masking.rules.detectors:
        return result
    stdout, out_counts = mask_text(result.stdout, masking.rules.detectors)
    stderr, err_counts = mask_text(result.stderr, masking.rules.detectors)
    result.stdout, result.stderr = stdout, stderr
    counts = {k: out_counts.get(k, 0) + err_counts.get(k, 0) for k in sorted({*out_counts, *err_counts})}
    if counts:
        result.masking = {"detections": counts}
    return result


def describe(connection: Connection, tables: list[TableInfo]) -> list[TableInfo]:
    """Each column annotated with the masker its values get (for `describe`): a table's column by
    the patterns, a view's column by what it derives from."""
    masking = connection.masking
    if masking is None or not masking.columns:
        return tables
    catalog = masking.catalog(connection.dialect, connection.policy.default_schema or "main")
    out = []
    for table in tables:
        views = view_lineage(catalog, table.qualified).outputs if catalog.is_view(table.qualified) else None
        derived = {o.name: o for o in views or ()}
        columns = []
        for column in table.columns:
            found = masking.rules.column(f"{table.qualified}.{column.name}")
            maskers = [found.masker] if found else []
            output = derived.get(column.name)
            if output is not None:
                maskers += [c.masker for c in (masking.rules.column(s) for s in output.sources) if c]
                if not output.resolved and sensitive_relations(frozenset({table.qualified}), catalog, masking.rules):
                    maskers.append("redact")  # as a query over the view would be: fail closed
            columns.append(replace(column, masked=strongest(maskers)))
        out.append(replace(table, columns=tuple(columns)))
    return out
