"""PostgreSQL executor: psycopg 3 async with a pool; one transaction per call, bounded fetches.

Defence in depth: the transaction is READ ONLY when every statement only reads; statement_timeout
and search_path are set LOCAL; each statement is sent alone through the extended protocol (which
refuses a second statement); reads stream through a server-side cursor up to the row and byte caps.

Identity: a mapped role with a login of its own (``role_logins``) gets a pool that logs in as that
role, so SET ROLE, set_config('role', ...), RESET ROLE and SET SESSION AUTHORIZATION cannot reach
any other role: the server refuses them. A mapped role without one is entered with SET LOCAL ROLE
from the gateway's login, which a statement that got past the guard could undo (docs/identity.md).
Every connection is reset with DISCARD ALL when it goes back to its pool, so the next caller starts
clean: no settings, advisory locks, temporary tables, prepared statements or LISTENs of another.

Speed: a call is one pipeline (BEGIN, Bastion's settings, each statement, a read's first FETCH,
COMMIT), so the common call costs one round trip to the server, not six.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from collections.abc import Mapping
from typing import Any

import anyio
import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bastion.policy import Kind
from bastion.policy.cache import ClearingCache
from bastion.policy.sql import catalog as function_catalog
from bastion.policy.sql.catalog import FunctionCatalog
from bastion.policy.sql.facts import DDL_KINDS, WRITE_KINDS
from bastion.policy.sql.privileges import RIGHTS_SQL, LeastPrivilege, LoginRights, excess, explain
from bastion.policy.errors import ExecutionError, QueryRejected, QueryTimeout, RowsAffectedExceeded, TargetUnavailable
from bastion.tools.executors.base import (DRY_RUN, EXPLAINED, PREVIEW_TIMEOUT_S, ColumnInfo, QueryResult, RowBudget, RunRequest,
                                  TableInfo, no_dry_run_reason)
from bastion.tools.executors.pg_cancel import until_answered

log = logging.getLogger(__name__)
# Rows per FETCH. A read whose row cap fits in one FETCH (the default cap does) commits in the same
# round trip; a bigger cap fetches on in batches, so memory stays bounded by a batch.
_FETCH_BATCH = 2000
_BEGIN = {True: "BEGIN READ ONLY", False: "BEGIN"}
_SETTINGS = sql.SQL(
    "SELECT set_config('standard_conforming_strings', 'on', true), set_config('statement_timeout', {}, true),"
    " set_config('search_path', {}, true), set_config('application_name', {}, true),"
    " set_config('bastion.user', {}, true), set_config('bastion.groups', {}, true),"
    # random()'s seed outlives DISCARD ALL: a caller's setseed() must not decide the next one's random().
    " setseed(hashtext(gen_random_uuid()::text)::float8 / 2147483648)")
# set_config('role', ..., true) is SET LOCAL ROLE: the server checks membership, and the role ends with the transaction.
_ROLE = sql.SQL(", set_config('role', {}, true)")

# Every table's columns, from pg_catalog itself: every role may read it, so the list does not depend
# on the privileges of the login that reads it (information_schema shows a NOINHERIT gateway login
# nothing, which left masking without lineage and describe empty).
_CATALOG_SQL = """
SELECT n.nspname, c.relname, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN' ELSE 'BASE TABLE' END,
       a.attname, format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
ORDER BY n.nspname, c.relname, a.attnum
"""
# Views' definitions (masking follows them to the columns they read) and materialized views, which
# information_schema does not list. Read with search_path = pg_catalog, so every name in a
# definition comes back schema-qualified.
_VIEWS_SQL = """
SELECT n.nspname, c.relname, c.relkind, pg_get_viewdef(c.oid),
       array(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       array(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       array(SELECT NOT a.attnotnull FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
"""


# The function catalog is read again after this long, after DDL ran through Bastion, and when a
# text names a function it does not hold (created meanwhile) once the last read is this old.
FUNCTIONS_TTL_S = 60.0
FUNCTIONS_MISS_S = 1.0


class PostgresExecutor:
    dialect = "postgres"

    def __init__(self, name: str, dsn: str, *, password: str | None = None, search_path: str = "public",
                 max_connections: int = 8, connect_timeout: float = 5.0,
                 role_logins: Mapping[str, str | None] | None = None,
                 least_privilege: LeastPrivilege | None = None) -> None:
        """``role_logins``: mapped roles that log in themselves → their password (None: the server
        needs none from the gateway, e.g. a client certificate or .pgpass); the DSN is the gateway's
        with the role as its user."""
        self.name = name
        self.search_path = search_path
        self.connect_timeout = connect_timeout
        self.dsn = dsn
        self.max_connections = max_connections
        kwargs: dict[str, Any] = {"application_name": "bastion", "connect_timeout": max(1, int(connect_timeout))}
        if password is not None:
            kwargs["password"] = password
        # autocommit: Bastion writes BEGIN itself, so it goes out in the same pipeline as the rest
        # (psycopg's implicit BEGIN is a round trip of its own there).
        kwargs["autocommit"] = True
        # No server-side prepared statements: DISCARD ALL between calls deallocates them, and psycopg,
        # mid-pipeline, would then name one the server no longer has (the call hangs, then fails).
        kwargs["prepare_threshold"] = None
        self._kwargs = kwargs
        self.pool = self._new_pool(kwargs, name)
        self.role_logins: dict[str, str | None] = dict(role_logins or {})
        self._role_pools: dict[str, AsyncConnectionPool] = {}
        self._opened = False
        # Checked once, before the first call runs: None not yet, "" fine, else why the connection is not served.
        self.least_privilege = least_privilege
        self._privilege_verdict: str | None = None if least_privilege is not None else ""
        self._privilege_lock: anyio.Lock | None = None
        self.accepted_rights: list[dict[str, str]] = []  # rights the config accepts that a login holds
        self._setups: ClearingCache[tuple[Any, ...], bytes] = ClearingCache(1024)  # rendered per (settings, role)
        # The server's functions, operators and types, read by refresh_functions (policy.sql.catalog).
        self.functions: FunctionCatalog | None = None
        self._functions_read_at = float("-inf")
        self._functions_lock: anyio.Lock | None = None

    def _new_pool(self, kwargs: dict[str, Any], name: str) -> AsyncConnectionPool:
        return AsyncConnectionPool(self.dsn, kwargs=kwargs, min_size=0, max_size=self.max_connections, open=False,
                                   name=f"bastion-{name}", reset=_reset_session)

    async def _pool(self, role: str | None = None) -> AsyncConnectionPool:
        """The gateway's pool, or with ``role`` that logs in itself, that role's own pool."""
        if role is not None and role in self.role_logins:
            pool = self._role_pools.get(role)
            if pool is None:
                kwargs = {**self._kwargs, "user": role}
                kwargs.pop("password", None)
                if self.role_logins[role] is not None:
                    kwargs["password"] = self.role_logins[role]
                pool = self._role_pools[role] = self._new_pool(kwargs, f"{self.name}-{role}")
                await pool.open(wait=False)
            return pool
        if not self._opened:
            await self.pool.open(wait=False)
            self._opened = True
        return self.pool

    def logs_in_as(self, role: str | None) -> bool:
        """Whether calls as ``role`` run on a login of that role (the server holds the identity)."""
        return role is not None and role in self.role_logins

    @property
    def search_path_schemas(self) -> tuple[str, ...]:
        """The search_path every call runs with, as the catalog resolves names along it."""
        return ("pg_catalog", *(s.strip().strip('"') for s in self.search_path.split(",") if s.strip()))

    def functions_stale(self, unresolved: bool = False) -> bool:
        age = time.monotonic() - self._functions_read_at
        return self.functions is None or age > FUNCTIONS_TTL_S or (unresolved and age > FUNCTIONS_MISS_S)

    def forget_functions(self) -> None:
        """DDL ran: read the function catalog again before the next call is judged."""
        self._functions_read_at = float("-inf")

    async def refresh_functions(self, unresolved: bool = False) -> FunctionCatalog | None:
        """Read pg_proc, pg_operator, pg_type, pg_cast, pg_class and pg_inherits (all readable by
        every role) when the copy
        held is missing, old, or (``unresolved``) lacks something a text names. A failed read keeps
        the copy held; with none, the guard denies (fail closed)."""
        if not self.functions_stale(unresolved):
            return self.functions
        if self._functions_lock is None:
            self._functions_lock = anyio.Lock()
        async with self._functions_lock:
            if not self.functions_stale(unresolved):
                return self.functions  # another call read it while this one waited
            pool = await self._pool()
            try:
                async with pool.connection(timeout=self.connect_timeout) as conn:
                    async with conn.transaction():
                        await conn.execute("SET TRANSACTION READ ONLY")
                        procs = await (await conn.execute(function_catalog.PROCS_SQL)).fetchall()
                        operators = await (await conn.execute(function_catalog.OPERATORS_SQL)).fetchall()
                        types = await (await conn.execute(function_catalog.TYPES_SQL)).fetchall()
                        relations = await (await conn.execute(function_catalog.RELATIONS_SQL)).fetchall()
                        inherits = await (await conn.execute(function_catalog.INHERITS_SQL)).fetchall()
                        await conn.execute("SET LOCAL search_path = pg_catalog")  # view definitions come out qualified
                        views = await (await conn.execute(function_catalog.VIEWS_SQL)).fetchall()
            except (psycopg.Error, PoolTimeout):
                log.warning("cannot read the function catalog of %s", self.name, exc_info=True)
                return self.functions
            self.functions = FunctionCatalog.build(procs, operators, types, self.search_path_schemas, relations, inherits,
                                                   views)
            self._functions_read_at = time.monotonic()
            return self.functions

    async def login_rights(self) -> list[tuple[str | None, LoginRights | None]]:
        """The rights of the gateway's login and of each mapped role (as its own login when it has
        one); None for a mapped role the server does not know."""
        expected = self.least_privilege or LeastPrivilege(False)
        found: list[tuple[str | None, LoginRights | None]] = []
        for role in (None, *expected.roles):
            own = self.logs_in_as(role)
            pool = await self._pool(role if own else None)
            async with pool.connection(timeout=self.connect_timeout) as conn:
                row = await (await conn.execute(RIGHTS_SQL, {"role": None if own else role})).fetchone()
            found.append((role, LoginRights.from_row(row) if row else None))
        return found

    def privilege_record(self) -> dict[str, Any] | None:
        """What the least-privilege check found, for the audit log; None before it has run."""
        if self._privilege_verdict is None or self.least_privilege is None:
            return None
        return {"served": not self._privilege_verdict, "refused_because": self._privilege_verdict or None,
                "accepted_rights": self.accepted_rights}

    async def verify_least_privilege(self) -> str:
        """"" when every login may do no more than the rules need (or the config accepts); else why
        not. Read once; a failure to read is raised (TargetUnavailable) and tried again next call."""
        if self._privilege_verdict is not None:
            return self._privilege_verdict
        if self._privilege_lock is None:
            self._privilege_lock = anyio.Lock()
        async with self._privilege_lock:
            if self._privilege_verdict is not None:
                return self._privilege_verdict
            expected = self.least_privilege or LeastPrivilege(False)
            try:
                found = await self.login_rights()
            except PoolTimeout as error:
                raise TargetUnavailable(f"connection `{self.name}` is unavailable", detail=str(error)) from error
            except psycopg.Error as error:
                raise translate(error, self.name) from error
            problems = []
            self.accepted_rights = []
            for role, rights in found:
                if rights is None:
                    problems.append(f"the mapped role `{role}` does not exist")
                    continue
                extra = excess(rights, writes_allowed=expected.writes_allowed, accepted=expected.accepted)
                if extra:
                    problems.append(explain(rights.login, extra))
                accepted = excess(rights, writes_allowed=expected.writes_allowed)
                for e in accepted:
                    if e.right in expected.accepted:
                        log.warning("connection %s: login %s holds %s, accepted by accept_rights", self.name, rights.login, e.right)
                        self.accepted_rights.append({"login": rights.login, "right": e.right})
            self._privilege_verdict = "; ".join(problems)
            if problems:
                log.error("connection %s is not served: %s", self.name, self._privilege_verdict)
            return self._privilege_verdict

    async def _served(self) -> None:
        verdict = await self.verify_least_privilege()
        if verdict:
            raise TargetUnavailable(f"connection `{self.name}` is not served: {verdict}",
                                    hint="Nothing in the query can fix this: tell the gateway's operator, who can reduce the "
                                         "grants or name each right in the connection's `accept_rights`.")

    async def run(self, request: RunRequest) -> QueryResult:
        await self._served()
        if any(s.kinds & DDL_KINDS for s in request.statements):
            self.forget_functions()  # CREATE FUNCTION, DROP TYPE, ...: judge the next call afresh
        pool = await self._pool(request.role)
        limits = request.limits
        try:
            async with pool.connection(timeout=self.connect_timeout) as conn:
                # statement_timeout is a setting SQL can change (SET, set_config): the gateway's own
                # clock is the backstop, at the longest a call of these statements may honestly take.
                with anyio.fail_after(_backstop_s(request)):
                    return await until_answered(conn, lambda: self._run_in_transaction(conn, request))
        except TimeoutError as error:
            raise QueryTimeout(f"the call ran past the {limits.timeout_s:g} s limit of each of its statements and was cancelled",
                               hint="Narrow the query (WHERE, LIMIT) or ask for a longer timeout.") from error
        except PoolTimeout as error:
            raise TargetUnavailable(f"connection `{self.name}` is unavailable: the database did not accept a connection in time",
                                    detail=str(error)) from error
        except pgerr.QueryCanceled as error:
            raise QueryTimeout(f"the query ran longer than the {limits.timeout_s:g} s limit and was cancelled",
                               hint="Narrow the query (WHERE, LIMIT) or ask for a longer timeout.", detail=str(error)) from error
        except psycopg.Error as error:
            raise translate(error, self.name) from error

    def _setup(self, conn: psycopg.AsyncConnection[Any], request: RunRequest) -> bytes:
        """Bastion's own settings for one transaction, values quoted by psycopg (sql.Literal), kept
        rendered per (limits, identity, role): a repeat caller's are not composed again.
        standard_conforming_strings: both parsers read 'a\'' as PostgreSQL does with it on; a role
        or database that turns it off would parse strings differently."""
        identity, limits = request.identity, request.limits
        settings = (f"{int(limits.timeout_s * 1000)}ms", f"pg_catalog, {self.search_path}, pg_temp",
                    f"bastion:{identity.subject}"[:63], identity.subject, ",".join(sorted(identity.groups)))
        # Quoting depends on the session's standard_conforming_strings, so the rendering does too.
        # A role that logs in itself needs no SET ROLE: its connection is that role already.
        role = None if self.logs_in_as(request.role) else request.role
        key = (settings, role, conn.pgconn.parameter_status(b"standard_conforming_strings"))
        rendered = self._setups.get(key)
        if rendered is None:
            setup = _SETTINGS.format(*map(sql.Literal, settings))
            if role is not None:
                setup = setup + _ROLE.format(sql.Literal(role))
            rendered = setup.as_bytes(conn)
            self._setups.put(key, rendered)
        return rendered

    async def _run_in_transaction(self, conn: psycopg.AsyncConnection[Any], request: RunRequest) -> QueryResult:
        try:
            # Queued, then sent together with one Sync when the pipeline ends: one round trip.
            bound = request.limits.max_rows_affected
            counted = bound is not None and any(s.kind in WRITE_KINDS for s in request.statements)
            async with conn.pipeline():
                await conn.execute(_BEGIN[request.read_only])
                await conn.execute(self._setup(conn, request))
                sent = [await _Sent.send(conn, n, statement, request.limits, request.params[n] if request.params else None)
                        for n, statement in enumerate(request.statements)]
                # A bounded write commits only once its row count is known to be within the bound.
                whole = all(s.whole for s in sent) and not counted
                if whole:
                    await conn.execute("COMMIT")
            results = [await s.collect() for s in sent]
            if counted:
                changed = sum(max(s.cursor.rowcount, 0) for s, st in zip(sent, request.statements) if st.kind in WRITE_KINDS)
                if bound is not None and changed > bound:  # counted: bound is set
                    await conn.execute("ROLLBACK")
                    raise RowsAffectedExceeded(changed, bound)
            if not whole:
                await conn.execute("COMMIT")
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):  # a lost connection: the pool discards it
                await conn.rollback()
            raise
        result = results[-1] if results else QueryResult(columns=[], rows=[], row_count=0)
        result.statements = len(request.statements)
        return result

    async def preview(self, request: RunRequest) -> dict[str, Any]:
        await self._served()
        pool = await self._pool(request.role)
        limits = replace(request.limits, timeout_s=min(request.limits.timeout_s, PREVIEW_TIMEOUT_S))
        request = replace(request, limits=limits, read_only=False)
        items: list[dict[str, Any]] = []

        async def dry_run(conn: psycopg.AsyncConnection[Any]) -> None:
            # force_rollback: whatever happens, nothing of the dry run is committed.
            async with conn.transaction(force_rollback=True):
                await conn.execute(self._setup(conn, request))
                for statement in request.statements:
                    item: dict[str, Any] = {"kind": statement.kind.value}
                    if statement.kind in EXPLAINED:
                        cur = await _extended(conn, sql.SQL("EXPLAIN ") + sql.SQL(statement.text))
                        item["plan"] = "\n".join(row[0] for row in await cur.fetchall())
                    if statement.kind in DRY_RUN:
                        cur = await _extended(conn, statement.text)
                        item["rows"] = max(cur.rowcount, 0)
                    else:
                        item["dry_run"] = no_dry_run_reason(statement.kind)
                    items.append(item)

        try:
            async with pool.connection(timeout=self.connect_timeout) as conn:
                await until_answered(conn, lambda: dry_run(conn))
        except PoolTimeout as error:
            raise TargetUnavailable(f"connection `{self.name}` is unavailable", detail=str(error)) from error
        except pgerr.QueryCanceled as error:
            raise QueryTimeout(f"the dry run ran longer than {limits.timeout_s:g} s and was cancelled", detail=str(error)) from error
        except psycopg.Error as error:
            raise translate(error, self.name) from error
        return {"statements": items, "rolled_back": True}

    async def catalog(self) -> list[TableInfo]:
        pool = await self._pool()
        try:
            async with pool.connection(timeout=self.connect_timeout) as conn:
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION READ ONLY")
                    rows = await (await conn.execute(_CATALOG_SQL)).fetchall()
                    inherits = await (await conn.execute(function_catalog.INHERITS_SQL)).fetchall()
                    await conn.execute("SET LOCAL search_path = pg_catalog")
                    views = await (await conn.execute(_VIEWS_SQL)).fetchall()
        except PoolTimeout as error:
            raise TargetUnavailable(f"connection `{self.name}` is unavailable", detail=str(error)) from error
        except psycopg.Error as error:
            raise translate(error, self.name) from error
        tables: dict[tuple[str, str], TableInfo] = {}
        for schema, table, ttype, column, dtype, nullable in rows:
            key = (schema, table)
            info = tables.get(key) or TableInfo(schema, table, {"VIEW": "view", "FOREIGN": "foreign table"}.get(ttype, "table"))
            tables[key] = TableInfo(info.schema, info.name, info.kind, info.columns + (ColumnInfo(column, dtype, nullable == "YES"),))
        for schema, name, relkind, definition, columns, types, nullables in views:
            known = tables.get((schema, name))
            if known is not None:
                tables[(schema, name)] = TableInfo(schema, name, known.kind, known.columns, definition)
            elif relkind == "m":
                tables[(schema, name)] = TableInfo(schema, name, "materialized view", tuple(
                    ColumnInfo(c, t, n) for c, t, n in zip(columns, types, nullables)), definition)
        ancestors: dict[str, list[str]] = {}
        for parent, child in inherits:
            ancestors.setdefault(child, []).append(parent)
        return [replace(t, ancestors=tuple(sorted(ancestors[t.qualified]))) if t.qualified in ancestors else t
                for t in tables.values()]

    async def close(self) -> None:
        if self._opened:
            await self.pool.close()
        for pool in self._role_pools.values():
            await pool.close()


class _Sent:
    """One statement queued in the call's pipeline, and how to read its result once synced."""

    def __init__(self, cursor: psycopg.AsyncCursor[Any], budget: RowBudget, size: int, declared: str | None) -> None:
        self.cursor, self.budget, self.size, self.declared = cursor, budget, size, declared
        # Everything this statement can return arrives with the first sync: a read whose first
        # FETCH asks for more than the row cap, or a statement whose rows come back whole.
        self.whole = declared is None or size > budget.limits.max_rows

    @classmethod
    async def send(cls, conn: psycopg.AsyncConnection[Any], n: int, statement: Any, limits: Any,
                   params: Any = None) -> _Sent:
        """``params``: the bind parameters of a text masked at the source (its `%` are doubled)."""
        budget = RowBudget(limits)
        size = min(_FETCH_BATCH, limits.max_rows + 1)
        cur = conn.cursor()
        # Plain SELECTs stream through a server-side cursor: memory stays flat however big the table.
        if statement.kind is Kind.SELECT and statement.is_read:
            name = f'"bastion_rows_{n}"'  # plain strings, no parameters: psycopg sends them as they are
            await cur.execute(f"DECLARE {name} NO SCROLL CURSOR FOR {statement.text}", params)
            await cur.execute(f"FETCH FORWARD {size} FROM {name}")
            return cls(cur, budget, size, name)
        # In a pipeline every statement goes through the extended protocol, which refuses two.
        await cur.execute(statement.text, params)
        return cls(cur, budget, size, None)

    async def collect(self) -> QueryResult:
        """Read the result, fetching on from the server-side cursor until the rows run out or the
        budget is spent (a short batch is the last)."""
        cur = self.cursor
        if cur.description is None:
            return QueryResult([], [], max(cur.rowcount, 0))
        columns = [d.name for d in cur.description]
        if self.declared is None:
            self.budget.take(await cur.fetchall())
            return self.budget.result(columns)
        batch = await cur.fetchall()
        while self.budget.take(batch) and len(batch) == self.size and not self.whole:
            await cur.execute(f"FETCH FORWARD {self.size} FROM {self.declared}")
            batch = await cur.fetchall()
        return self.budget.result(columns)


def _backstop_s(request: RunRequest) -> float:
    """Each statement and each FETCH of a read has statement_timeout to itself, plus a second."""
    fetches = -(-request.limits.max_rows // _FETCH_BATCH)
    return request.limits.timeout_s * (len(request.statements) + fetches + 1) + 1.0


async def _extended(conn: psycopg.AsyncConnection[Any], query: Any) -> psycopg.AsyncCursor[Any]:
    """Run one statement through the extended protocol, which refuses a second statement in the
    text (a pipeline always uses it; a plain execute without parameters would use the simple one)."""
    async with conn.pipeline():
        cur = await conn.execute(query)
    return cur


async def _reset_session(conn: psycopg.AsyncConnection[Any]) -> None:
    """Back in the pool, a connection forgets its caller: settings (also ones set for the session,
    not the transaction), role, advisory locks, temporary tables, prepared statements, cursors and
    LISTENs. Should it fail, the pool closes the connection instead."""
    await conn.execute("DISCARD ALL")


def translate(error: psycopg.Error, connection: str) -> ExecutionError:
    """A database error as the agent may see it: SQLSTATE and the server's primary message; a lost
    or refused connection (SQLSTATE class 08, or none at all) as the target being unavailable."""
    sqlstate = getattr(error, "sqlstate", None)
    # 08P01 is the statement's fault (a $1 with no value bound), not a lost connection.
    if isinstance(error, psycopg.OperationalError) and (sqlstate is None or sqlstate.startswith("08")) and sqlstate != "08P01":
        return TargetUnavailable(f"connection `{connection}` is unavailable", detail=_scrub(error))
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None) or "the database rejected the statement"
    sqlstate = sqlstate or "?"
    hint = getattr(diag, "message_hint", None)
    if sqlstate == "08P01":
        hint = "Bastion binds no parameters: write each value into the SQL text instead of $1, $2, ..."
    return QueryRejected(f"PostgreSQL error {sqlstate}: {primary}", hint=hint, detail=_scrub(error))


def _scrub(error: BaseException) -> str:
    """Driver text for the audit log, without connection strings or passwords."""
    import re

    text = str(error)
    text = re.sub(r"password=\S+", "password=***", text)
    return re.sub(r"postgres(?:ql)?://\S+", "postgresql://***", text)
