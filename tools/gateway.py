"""The gateway: connections, the guard and the audit store, and the SQL tool family over them.

server/ calls these with a Caller; each returns plain data (server/ renders it for MCP).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from policy import Decision
from policy.errors import BastionError, InvalidInput, UnknownConnection
from policy.patterns import matches
from store.sqlite_store import SqliteAuditStore
from tools.calls import Caller
from tools.connections import Connection
from tools.executors.base import TableInfo
from tools.guard import Guard, GuardedResult, safe_decide, validate_text
from tools.recorder import Recorder

log = logging.getLogger(__name__)


@dataclass
class CheckResult:
    verdict: str
    rules: list[str]
    reason: str
    hint: str | None
    statements: list[dict[str, Any]]


class Gateway:
    def __init__(self, connections: dict[str, Connection], store: SqliteAuditStore) -> None:
        self.connections = connections
        self.store = store
        self.guard = Guard(Recorder(store))

    async def start(self) -> list[str]:
        """Close calls a previous run left open (crash, kill): they end as `call.interrupted`."""
        interrupted = self.store.close_interrupted()
        if interrupted:
            log.warning("marked %d calls left open by a previous run as interrupted", len(interrupted))
        return interrupted

    async def close(self) -> None:
        for connection in self.connections.values():
            try:
                await connection.executor.close()
            except Exception:  # closing is best effort
                log.exception("closing %s", connection.name)

    # -- lookups ---------------------------------------------------------------------------------

    def visible(self, caller: Caller) -> list[Connection]:
        return [c for c in self.connections.values() if c.visible_to(caller.identity)]

    def connection(self, caller: Caller, name: str) -> Connection:
        connection = self.connections.get(name)
        if connection is None or not connection.visible_to(caller.identity):
            names = ", ".join(f"`{c.name}`" for c in self.visible(caller)) or "none"
            raise UnknownConnection(f"there is no connection `{name}` you may use",
                                    hint=f"Connections you may use: {names} (see list_connections).")
        return connection

    async def _resolve(self, caller: Caller, tool: str, name: str, text: str, reason: str | None = None) -> Connection:
        try:
            return self.connection(caller, name)
        except UnknownConnection as error:
            await self.guard.refuse(caller, tool, name, text, reason, error)
            raise

    # -- tools -----------------------------------------------------------------------------------

    async def list_connections(self, caller: Caller) -> list[dict[str, Any]]:
        out = []
        for c in self.visible(caller):
            rules = c.policy.rules_for(caller.identity)
            out.append({"name": c.name, "kind": c.kind, "description": c.description,
                        "rules": " | ".join(r.summary() for r in rules)})
        await self.guard.record_simple(caller, "list_connections", "", "", {"connections": [c["name"] for c in out]})
        return out

    async def sql_query(self, caller: Caller, connection: str, sql: str, reason: str | None) -> GuardedResult:
        target = await self._resolve(caller, "sql_query", connection, sql, reason)
        return await self.guard.run_sql(caller, "sql_query", target, sql, reason)

    async def check(self, caller: Caller, connection: str, text: str) -> CheckResult:
        target = await self._resolve(caller, "check", connection, text)
        try:
            validate_text(text)
        except InvalidInput as error:
            await self.guard.refuse(caller, "check", connection, text, None, error)
            raise
        analysis, decision = safe_decide(target, caller, text)
        result = check_result(decision, analysis.summary()["statements"] if analysis else [])
        await self.guard.record_simple(caller, "check", connection, text, {"verdict": result.verdict},
                                       decision=decision, facts=analysis.summary() if analysis else None)
        return result

    async def describe(self, caller: Caller, connection: str, table: str | None) -> list[TableInfo]:
        target = await self._resolve(caller, "describe", connection, table or "")
        try:
            catalog = await target.executor.catalog()
        except BastionError as error:
            await self.guard.refuse(caller, "describe", connection, table or "", None, error)
            raise
        rules = target.policy.rules_for(caller.identity)
        visible = [t for t in catalog if any(matches(r.read_tables, t.qualified) or matches(r.write_tables, t.qualified) for r in rules)]
        if table:
            wanted = table.lower()
            found = [t for t in visible if wanted in (t.qualified.lower(), t.name.lower())]
            if not found:
                error = InvalidInput(f"no table `{table}` you may read on `{connection}`",
                                     hint="Tables: " + ", ".join(t.qualified for t in visible[:30]) + ("…" if len(visible) > 30 else ""))
                await self.guard.refuse(caller, "describe", connection, table, None, error)
                raise error
            visible = found
        await self.guard.record_simple(caller, "describe", connection, table or "", {"tables": [t.qualified for t in visible]})
        return visible


def check_result(decision: Decision, statements: list[dict[str, Any]]) -> CheckResult:
    return CheckResult(decision.verdict.value, list(decision.rules), decision.reason, decision.hint, statements)

