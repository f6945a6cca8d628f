"""SQLite executor (the embedded default).

Defence in depth: the file is opened read-only (``mode=ro``) when every statement only reads, and
an authorizer refuses, inside SQLite itself, what the guard did not decide to allow: ATTACH,
dangerous functions, any function SQLite did not build in (an application- or extension-defined
one, which can do anything), writes in a read-only call, and any table the parsed facts did not name.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from bastion.policy.errors import QueryRejected, QueryTimeout, RowsAffectedExceeded, TargetUnavailable
from bastion.policy.sql import dangerous_functions
from bastion.policy.sql.facts import WRITE_KINDS
from bastion.tools.executors.base import (DRY_RUN, EXPLAINED, PREVIEW_TIMEOUT_S, ColumnInfo, QueryResult, RowBudget, RunRequest,
                                  TableInfo, no_dry_run_reason)

_WRITE_ACTIONS = {
    getattr(sqlite3, name)
    for name in dir(sqlite3)
    if name.startswith(("SQLITE_CREATE_", "SQLITE_DROP_", "SQLITE_ALTER"))
    or name in ("SQLITE_INSERT", "SQLITE_UPDATE", "SQLITE_DELETE", "SQLITE_REINDEX", "SQLITE_ANALYZE")
}
_ALWAYS_DENIED = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH}
_INTERNAL_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_sequence"}


class SqliteExecutor:
    dialect = "sqlite"

    def __init__(self, name: str, path: str | Path) -> None:
        self.name = name
        self.path = Path(path)
        self._builtin: frozenset[str] | None = None

    def _builtin_functions(self, conn: sqlite3.Connection) -> frozenset[str]:
        """SQLite's own functions (pragma_function_list's ``builtin``), read before the authorizer
        that denies PRAGMA is installed; the same for every connection of this process."""
        if self._builtin is None:
            rows = conn.execute("SELECT name FROM pragma_function_list WHERE builtin").fetchall()
            self._builtin = frozenset(name.lower() for name, in rows)
        return self._builtin

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        if not self.path.exists():
            raise TargetUnavailable(f"connection `{self.name}` is unavailable: its database file does not exist")
        mode = "ro" if read_only else "rw"
        try:
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as error:
            raise TargetUnavailable(f"connection `{self.name}` is unavailable: cannot open its database file",
                                    detail=str(error)) from error

    async def run(self, request: RunRequest) -> QueryResult:
        conn = self._connect(request.read_only)
        try:
            return await anyio.to_thread.run_sync(self._run_sync, conn, request, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            try:
                conn.interrupt()  # a cancelled call stops the statement inside SQLite; the worker closes it
            except sqlite3.ProgrammingError:
                pass  # the worker finished and closed it first
            raise

    def _guard(self, conn: sqlite3.Connection, request: RunRequest, timeout_s: float) -> Callable[[], bool]:
        """The authorizer for what was vetted, and a deadline; returns whether the deadline fired."""
        deadline = time.monotonic() + timeout_s
        timed_out = False

        def progress() -> int:
            nonlocal timed_out
            timed_out = time.monotonic() > deadline
            return 1 if timed_out else 0

        def names(tables: frozenset[str]) -> set[str]:
            return {t.split(".", 1)[1].lower() for t in tables}

        statements = [s.effective for s in request.statements]
        writable = set().union(*(names(s.writes) for s in statements))
        readable = writable.union(*(names(s.reads) | {c.lower() for c in s.cte_names} for s in statements))
        builtin = self._builtin_functions(conn)
        for name, function in (request.functions or {}).items():  # masking at the source (its keyed hash)
            conn.create_function(name, 1, function, deterministic=True)
            builtin = builtin | {name.lower()}
        conn.set_authorizer(_authorizer(request.read_only, readable, writable, builtin))
        conn.set_progress_handler(progress, 10_000)
        return lambda: timed_out

    async def preview(self, request: RunRequest) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self._preview_sync, self._connect(False), request)

    def _preview_sync(self, conn: sqlite3.Connection, request: RunRequest) -> dict[str, Any]:
        timeout_s = min(request.limits.timeout_s, PREVIEW_TIMEOUT_S)
        timed_out = self._guard(conn, replace(request, read_only=False), timeout_s)
        items: list[dict[str, Any]] = []
        try:
            conn.execute("BEGIN")
            for statement in request.statements:
                item: dict[str, Any] = {"kind": statement.kind.value}
                if statement.kind in EXPLAINED:
                    rows = conn.execute("EXPLAIN QUERY PLAN " + statement.text).fetchall()
                    item["plan"] = "\n".join(str(row[-1]) for row in rows)
                if statement.kind in DRY_RUN:
                    item["rows"] = max(conn.execute(statement.text).rowcount, 0)
                else:
                    item["dry_run"] = no_dry_run_reason(statement.kind)
                items.append(item)
        except sqlite3.Error as error:
            if timed_out():
                raise QueryTimeout(f"the dry run ran longer than {timeout_s:g} s and was stopped") from error
            raise QueryRejected(f"SQLite error: {error}", detail=str(error)) from error
        finally:
            _rollback(conn)  # always: a dry run never commits
            conn.close()
        return {"statements": items, "rolled_back": True}

    def _run_sync(self, conn: sqlite3.Connection, request: RunRequest) -> QueryResult:
        limits = request.limits
        timed_out = self._guard(conn, request, limits.timeout_s)
        try:
            conn.execute("BEGIN")
            result = QueryResult([], [], 0)
            changed = 0
            for statement in request.statements:
                cur = conn.execute(statement.text)  # sqlite3 refuses a second statement in one execute
                budget = RowBudget(limits)
                if cur.description is None:
                    result = QueryResult([], [], max(cur.rowcount, 0))
                    if statement.kind in WRITE_KINDS:
                        changed += max(cur.rowcount, 0)
                        _within_bound(conn, changed, limits.max_rows_affected)
                    continue
                columns = [d[0] for d in cur.description]
                if statement.kind in WRITE_KINDS and limits.max_rows_affected is not None:
                    # RETURNING: every row returned is a row changed, those past the row cap too.
                    returned = cur.fetchall()
                    changed += len(returned)
                    _within_bound(conn, changed, limits.max_rows_affected)
                    budget.take(returned)
                else:
                    while budget.take(cur.fetchmany(500)):
                        pass
                result = budget.result(columns)
            conn.execute("COMMIT")
            result.statements = len(request.statements)
            return result
        except sqlite3.OperationalError as error:
            _rollback(conn)
            if timed_out():
                raise QueryTimeout(f"the query ran longer than the {limits.timeout_s:g} s limit and was stopped",
                                   hint="Narrow the query (WHERE, LIMIT).") from error
            raise QueryRejected(f"SQLite error: {error}", detail=str(error)) from error
        except sqlite3.Error as error:
            _rollback(conn)
            raise QueryRejected(f"SQLite error: {error}", detail=str(error)) from error
        finally:
            conn.close()

    async def catalog(self) -> list[TableInfo]:
        return await anyio.to_thread.run_sync(self._catalog_sync)

    def _catalog_sync(self) -> list[TableInfo]:
        conn = self._connect(read_only=True)
        try:
            tables = []
            for name, kind, sql in conn.execute(
                "SELECT name, type, sql FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall():
                cols = conn.execute("SELECT name, type, \"notnull\" FROM pragma_table_info(?)", (name,)).fetchall()
                tables.append(TableInfo("main", name, kind, tuple(ColumnInfo(c, t or "", not nn) for c, t, nn in cols),
                                        sql if kind == "view" else None))
            return tables
        finally:
            conn.close()

    async def close(self) -> None:
        return None


def _within_bound(conn: sqlite3.Connection, changed: int, bound: int | None) -> None:
    """Past the rule's max_rows_affected the call is rolled back and refused, with the count."""
    if bound is not None and changed > bound:
        _rollback(conn)
        raise RowsAffectedExceeded(changed, bound)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _authorizer(read_only: bool, readable: set[str], writable: set[str], builtin: frozenset[str] = frozenset()) -> Any:
    def authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
        if action in _ALWAYS_DENIED:
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            name = (arg2 or "").lower()
            # Only SQLite's own functions, minus the dangerous ones: what else is defined could do anything.
            if name in dangerous_functions.SQLITE or name not in builtin:
                return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA:
            return sqlite3.SQLITE_DENY
        if read_only and action in _WRITE_ACTIONS:
            return sqlite3.SQLITE_DENY
        if action in (sqlite3.SQLITE_READ, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE):
            table = (arg1 or "").lower()
            allowed = readable if action == sqlite3.SQLITE_READ else writable
            # Access through a view or trigger names their underlying tables; the view was checked.
            if table not in allowed and table not in _INTERNAL_TABLES and source is None:
                return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    return authorize
