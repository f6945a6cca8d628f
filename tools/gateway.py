"""The gateway: connections, the guard and the audit store, and the tools over them.

server/ calls these with a Caller; each returns plain data (server/ renders it for MCP).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from bastion.policy import Decision, Verdict
from bastion.policy.approvals import ApprovalPolicy
from bastion.policy import hints
from bastion.policy.errors import BastionError, InvalidInput, QueryRejected, UnknownConnection
from bastion.policy.patterns import matches
from bastion.policy.presets import SENSITIVE_CATALOG_PATTERNS
from bastion.store import events as ev
from bastion.store.approvals import ApprovalStore
from bastion.store.audit_store import AuditStore
from bastion.tools import approvals, masking, shell, sql
from bastion.tools.alerts import AlertRule, Alerts
from bastion.tools.calls import Caller
from bastion.tools.connections import AnyConnection, Connection, ShellConnection
from bastion.tools.executors.base import QueryResult, TableInfo
from bastion.tools.executors.shell_base import ShellResult
from bastion.tools.guard import MAX_COMMAND_BYTES, Guard, Guarded, Vetted, validate_text
from bastion.tools.holds import Holds, held_rule
from bastion.tools.notify import ApprovalNotifier
from bastion.tools.recorder import Recorder

log = logging.getLogger(__name__)


def _readable(target: Connection, caller: Caller, catalog: list[TableInfo]) -> list[TableInfo]:
    """The tables and views of ``catalog`` that ``caller`` may read or write on ``target``."""
    rules = target.policy.rules_for(caller.identity)
    return [t for t in catalog
            if any(matches(r.read_tables, t.qualified) or matches(r.write_tables, t.qualified) for r in rules)
            and not matches(SENSITIVE_CATALOG_PATTERNS, t.qualified)]


def _hinted(target: Connection, vetted: Vetted, text: str) -> Vetted:
    """A refused SQL text's hint made concrete where the passing call is known (describe for a
    catalog query, and the like: policy.hints)."""
    vetted.decision = hints.refine(vetted.decision, text, target.name, target.dialect)
    return vetted


@dataclass
class CheckResult:
    verdict: str
    rules: list[str]
    reason: str
    hint: str | None
    facts: dict[str, Any]


class Gateway:
    def __init__(self, connections: dict[str, AnyConnection], store: AuditStore,
                 alerts: tuple[AlertRule, ...] = (), *,
                 approval_policies: dict[str, dict[str, tuple[ApprovalPolicy, bool]]] | None = None,
                 wait_s: float = 60.0) -> None:
        self.connections = connections
        self.store = store
        self.approvals = ApprovalStore(store)
        self.approval_policies = approval_policies or {}
        self.guard = Guard(Recorder(store), Alerts(alerts, store) if alerts else None)
        self.guard.holds = Holds(self.approvals, self.approval_policy, wait_s, self.guard.record, self.self_confirmable)
        self.notifier: ApprovalNotifier | None = None  # where webhooks are configured

    async def expire_holds(self, every_s: float = 15.0) -> None:
        """Run for the gateway's life: holds nobody touches still expire (and their webhooks fire)."""
        while True:
            try:
                await anyio.to_thread.run_sync(self.approvals.expire_due)
                await anyio.to_thread.run_sync(self.store.heartbeat)  # this gateway is alive (replicas on other hosts)
            except Exception:  # a busy or failing store: try again next round
                log.exception("expiring holds failed")
            await anyio.sleep(every_s)

    def self_confirmable(self, connection: str, decision: Decision) -> bool:
        """Whether the rule that held ``decision`` lets the requester confirm it themself."""
        found = self.approval_policies.get(connection, {}).get(held_rule(decision) or "")
        return bool(found and found[1])

    async def confirmation_for(self, caller: Caller, connection: str, text: str, cwd: str | None = None) -> str | None:
        """What to ask the requester, when ``text`` would be held by a rule that lets them confirm it
        themself; None otherwise (including when the call would fail anyway: it fails as usual)."""
        target = self.connections.get(connection)
        if target is None or not target.visible_to(caller.identity):
            return None
        # Most connections let nobody confirm for themself: no second vetting of every call there.
        if not any(confirm for _, confirm in self.approval_policies.get(connection, {}).values()):
            return None
        try:
            validate_text(text, what="text")
            workdir = shell.resolve_cwd(target, cwd) if isinstance(target, ShellConnection) else None
            vetted = await self._vet(target, caller, text, workdir)
        except BastionError:
            return None
        decision = vetted.decision
        if decision.verdict is not Verdict.REVIEW or not self.self_confirmable(connection, decision):
            return None
        return f"Run this on `{connection}`? {decision.reason}.\n\n{text}"

    def approval_policy(self, connection: str, decision: Decision) -> ApprovalPolicy:
        """Who decides what ``decision`` held on ``connection``: the holding rule's approvers, else the defaults."""
        policies = self.approval_policies.get(connection, {})
        found = policies.get(held_rule(decision) or "") or policies.get("")
        return found[0] if found else ApprovalPolicy(frozenset({"approvers"}))

    async def start(self) -> list[str]:
        """Close calls a previous run left open (crash, kill): they end as `call.interrupted`. Then
        read what each PostgreSQL login may do (least privilege, logged: a connection whose logins
        hold more than its rules need is not served); a database that does not answer within two
        seconds is checked again before its first call."""
        interrupted = self.store.close_interrupted()
        if interrupted:
            log.warning("marked %d calls left open by a previous run as interrupted", len(interrupted))
            if self.guard.limits is not None:  # their per-identity slots end with them
                self.guard.limits.release(interrupted)
        async with anyio.create_task_group() as checks:
            for connection in self.connections.values():
                verify = getattr(getattr(connection, "executor", None), "verify_least_privilege", None)
                if verify is not None:
                    checks.start_soon(_verify_quietly, connection.name, verify)
        for connection in self.connections.values():  # what was accepted or refused, in the record too
            report = getattr(getattr(connection, "executor", None), "privilege_record", lambda: None)()
            if report is not None:
                await self.guard.recorder.append(ev.ConnectionChecked(type="connection.checked",
                                                                      connection=connection.name, result=report))
        return interrupted

    async def record_auth_refused(self, reason: str, client: dict[str, object] | None,
                                  details: Mapping[str, object]) -> None:
        """A presented token was refused (401): why and from where, never the token."""
        await self.guard.recorder.append(ev.auth_refused(reason, client, details))

    async def shutdown(self) -> None:
        """The end of a gateway process (the MCP server's, or a CLI command's): connections closed,
        notices flushed, a signed checkpoint at the end of the chain (a cut tail then shows at the
        next verify), the approvals and the audit store closed."""
        await self.close()
        self.store.checkpoint()
        self.approvals.close()
        self.store.close()

    async def close(self) -> None:
        if self.notifier is not None:
            await anyio.to_thread.run_sync(self.notifier.flush, 10.0)
        for connection in self.connections.values():
            try:
                await connection.close()
            except Exception:  # closing is best effort
                log.exception("closing %s", connection.name)

    # -- lookups ---------------------------------------------------------------------------------

    def visible(self, caller: Caller) -> list[AnyConnection]:
        return [c for c in self.connections.values() if c.visible_to(caller.identity)]

    def connection(self, caller: Caller, name: str, kind: type[AnyConnection] | None = None) -> AnyConnection:
        connection = self.connections.get(name)
        if connection is None or not connection.visible_to(caller.identity):
            names = ", ".join(f"`{c.name}`" for c in self.visible(caller)) or "none"
            raise UnknownConnection(f"there is no connection `{name}` you may use",
                                    hint=f"Connections you may use: {names} (see list_connections).")
        if kind is not None and not isinstance(connection, kind):
            tool = "shell_run" if isinstance(connection, ShellConnection) else "sql_query"
            raise InvalidInput(f"`{name}` is a {connection.kind} connection", hint=f"Use {tool} for it.")
        return connection

    async def _resolve(self, caller: Caller, tool: str, name: str, text: str, kind: type[AnyConnection] | None,
                       reason: str | None = None) -> Any:
        try:
            return self.connection(caller, name, kind)
        except BastionError as error:
            await self.guard.refuse(caller, tool, name, text, reason, error)
            raise

    # -- tools -----------------------------------------------------------------------------------

    async def list_connections(self, caller: Caller) -> list[dict[str, Any]]:
        async def work() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            out = [{"name": c.name, "kind": c.kind, "description": c.description,
                    "rules": c.rules_summary(caller.identity)} for c in self.visible(caller)]
            return out, {"connections": [c["name"] for c in out]}

        return await self.guard.record_call(caller, "list_connections", "", "", work)

    async def sql_query(self, caller: Caller, connection: str, text: str, reason: str | None,
                        confirmed: bool = False) -> Guarded[QueryResult]:
        target: Connection = await self._resolve(caller, "sql_query", connection, text, Connection, reason)
        await sql.prepare(target, text)  # the catalogs lineage and functions read, current before the text is vetted
        return await self.guard.run(caller, "sql_query", connection, text, reason, what="SQL text",
                                    vet=lambda: _hinted(target, sql.vet_sql(target, caller, text), text),
                                    execute=self._explained(target, caller, text, sql.runner(target, caller)),
                                    result_record=sql.result_record, preview=sql.previewer(target, caller),
                                    confirmed=confirmed)

    def _explained(self, target: Connection, caller: Caller, text: str,
                   execute: Callable[[Vetted], Awaitable[QueryResult]]) -> Callable[[Vetted], Awaitable[QueryResult]]:
        """``execute``, with a database's refusal of what the policy allowed mapped to an `engine:*`
        rule and a hint that names what exists (policy.hints)."""
        async def run(vetted: Vetted) -> QueryResult:
            try:
                return await execute(vetted)
            except QueryRejected as error:
                tables = {t.qualified: [c.name for c in t.columns] for t in await self._readable(target, caller)}
                mapped = hints.for_rejection(error.message, target.dialect, target.name, text, tables)
                if mapped is None:
                    raise
                rule, hint = mapped
                raise QueryRejected(error.message, hint=hint, detail=error.detail, rule=rule) from error

        return run

    async def _readable(self, target: Connection, caller: Caller) -> list[TableInfo]:
        """What describe would list, for a hint; nothing if the catalog cannot be read."""
        try:
            return _readable(target, caller, await target.executor.catalog())
        except BastionError:
            return []

    async def shell_run(self, caller: Caller, connection: str, command: str, reason: str | None,
                        cwd: str | None = None, confirmed: bool = False) -> Guarded[ShellResult]:
        target: ShellConnection = await self._resolve(caller, "shell_run", connection, command, ShellConnection, reason)
        try:
            workdir = shell.resolve_cwd(target, cwd)
        except InvalidInput as error:
            await self.guard.refuse(caller, "shell_run", connection, command, reason, error)
            raise
        return await self.guard.run(caller, "shell_run", connection, command, reason, what="command",
                                    vet=lambda: shell.vet_shell(target, caller, command, workdir),
                                    execute=shell.runner(target, caller, workdir), result_record=shell.result_record,
                                    max_bytes=MAX_COMMAND_BYTES, confirmed=confirmed)

    async def _vet(self, target: AnyConnection, caller: Caller, text: str, cwd: str | None) -> Vetted:
        """Analyse and decide a text without running it (shell: in ``cwd``; SQL: with a fresh catalog for masking)."""
        if isinstance(target, ShellConnection):  # off the event loop, as shell_run vets: its cost is not bounded by size
            return await anyio.to_thread.run_sync(shell.vet_shell, target, caller, text, cwd or target.policy.cwd)
        await sql.prepare(target, text)
        return _hinted(target, sql.vet_sql(target, caller, text), text)

    async def check(self, caller: Caller, connection: str, text: str) -> CheckResult:
        target = await self._resolve(caller, "check", connection, text, None)  # either kind
        try:
            validate_text(text, what="text")
        except InvalidInput as error:
            await self.guard.refuse(caller, "check", connection, text, None, error)
            raise
        vetted = await self._vet(target, caller, text, target.policy.cwd if isinstance(target, ShellConnection) else None)
        d = vetted.decision

        async def work() -> tuple[CheckResult, dict[str, Any]]:
            return CheckResult(d.verdict.value, list(d.rules), d.reason, d.hint, vetted.facts or {}), {"verdict": d.verdict.value}

        return await self.guard.record_call(caller, "check", connection, text, work, decision=d, facts=vetted.facts)

    async def approvals_list(self, caller: Caller, status: str | None = "pending") -> list[dict[str, Any]]:
        """The holds ``caller`` may see in ``status`` (None: any), as the approvals service lists them."""
        async def work() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            found = await approvals.list_visible(self.approvals, caller.identity, None if status is None else [status])
            now = self.approvals.clock()
            holds = [approvals.summary(h, now) for h in found]
            return holds, {"holds": [h["hold_id"] for h in holds]}

        return await self.guard.record_call(caller, "approvals_list", "", status or "", work)

    async def approval_decide(self, caller: Caller, hold_id: str, approve: bool, reason: str | None) -> dict[str, Any]:
        async def work() -> tuple[dict[str, Any], dict[str, Any]]:
            held = await approvals.decide(self.approvals, caller.identity, hold_id, approve, reason)
            summary = approvals.summary(held, self.approvals.clock())
            return summary, {"hold_id": hold_id, "approve": approve, "status": summary["status"]}

        return await self.guard.record_call(caller, "approval_decide", "", f"{'approve' if approve else 'deny'} {hold_id}", work)

    async def describe(self, caller: Caller, connection: str, table: str | None) -> list[TableInfo]:
        target: Connection = await self._resolve(caller, "describe", connection, table or "", Connection)

        async def work() -> tuple[list[TableInfo], dict[str, Any]]:
            visible = _readable(target, caller, await target.executor.catalog())
            if table:
                wanted = table.lower()
                found = [t for t in visible if wanted in (t.qualified.lower(), t.name.lower())]
                if not found:
                    more = "…" if len(visible) > 30 else ""
                    raise InvalidInput(f"no table `{table}` you may read on `{connection}`",
                                       hint="Tables: " + ", ".join(t.qualified for t in visible[:30]) + more)
                visible = found
            await masking.refresh(target)
            return masking.describe(target, visible), {"tables": [t.qualified for t in visible]}

        return await self.guard.record_call(caller, "describe", connection, table or "", work)


async def _verify_quietly(name: str, verify: Callable[[], Awaitable[str]]) -> None:
    with anyio.move_on_after(START_CHECK_S):
        try:
            await verify()  # logs what it finds; the verdict is kept for the first call
        except Exception:  # unreachable now: checked again before the first call
            log.warning("cannot check the logins of %s at start; checked again before its first call", name)


START_CHECK_S = 2.0
