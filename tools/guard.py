"""The guarded pipeline for one SQL call: analyse → decide → record → run → record.

Nothing runs before `call.requested` is durable; every call ends in exactly one terminal event;
any failure inside the guard denies (fail closed). Masking (⑥) and approvals (hold) slot in here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import anyio

from bastion.policy import ConnectionPolicy, Decision, Identity, Verdict, analyse, decide, hints
from bastion.policy.errors import (ApprovalRequired, AuditUnavailable, BastionError, Denied, ExecutionError, InvalidInput,
                                   RateLimited, RowsAffectedExceeded)
from bastion.policy.shell.rules import ShellPolicy
from bastion.store import events as ev
from bastion.store.errors import StoreError
from bastion.store.limits import CallLimits
from bastion.tools.alerts import Alerts
from bastion.tools.calls import Caller
from bastion.tools.connections import AnyConnection
from bastion.tools.holds import Holds
from bastion.tools.offload import parsing
from bastion.tools.recorder import Recorder

log = logging.getLogger(__name__)
R = TypeVar("R")

MAX_TEXT_BYTES = 256 * 1024
# Shell commands are short, and bash's parser port costs ~0.1 ms a word: a smaller limit.
MAX_COMMAND_BYTES = 32 * 1024
_RECORDED_TEXT_LIMIT = 64 * 1024


@dataclass
class Vetted:
    """What the guard made of a text: facts for the log, the decision, and what to run if allowed."""

    facts: dict[str, Any] | None
    decision: Decision
    plan: Any = None
    # Who it runs as (`{"as": role-or-user}`), where the connection maps identities.
    run_as: dict[str, str] | None = None


@dataclass
class Guarded(Generic[R]):
    call_id: str
    result: R
    duration_ms: float
    decision: Decision


def new_call_id() -> str:
    return uuid.uuid4().hex[:20]


def validate_text(text: str, *, what: str = "SQL text", max_bytes: int = MAX_TEXT_BYTES) -> None:
    """Refuse text no parser should see: empty, oversize, not UTF-8, or holding NUL bytes."""
    if not text.strip():
        raise InvalidInput(f"the {what} is empty", hint="Send one SQL statement, e.g. `SELECT * FROM orders LIMIT 10`.")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"the {what} is not valid UTF-8 (it holds an unpaired surrogate)",
                           hint="Send the statement as plain UTF-8 text.") from None
    if size > max_bytes:
        raise InvalidInput(f"the {what} is {size:,} bytes; the limit is {max_bytes:,}",
                           hint="Send one statement at a time, without inline data dumps.")
    if "\x00" in text:
        raise InvalidInput(f"the {what} holds a NUL character", hint="Remove the NUL (\\x00) characters.")


def recordable(text: str) -> str:
    """The text as the log can hold it: valid UTF-8 (unpaired surrogates escaped), exact unless it
    was refused for being over the size limit, in which case its first 64 KiB are kept."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(safe.encode()) <= MAX_TEXT_BYTES:
        return safe
    return safe[:_RECORDED_TEXT_LIMIT] + f"…[clipped; {len(safe):,} chars]"


def error_record(error: BaseException) -> ev.ErrorRecord:
    if isinstance(error, BastionError):
        out: ev.ErrorRecord = {"code": error.code, "message": error.message}
        if error.hint:
            out["hint"] = error.hint
        if error.detail:
            out["detail"] = error.detail
        return out
    return {"code": "internal", "message": type(error).__name__}


def scoped(connection: AnyConnection, caller: Caller, vetted: Vetted) -> Vetted:
    """Attach who the call runs as; on a mapped connection, an identity without a mapping is denied
    (it cannot even see the connection, so this is a second lock, not the first)."""
    if not connection.scoping.mapped:
        return vetted
    run_as = connection.run_as(caller.identity)
    if run_as is None:
        return Vetted(vetted.facts, Decision.deny("scope:unmapped", f"`{caller.identity.subject}` has no role or user mapped on this connection",
                                                  hint="Ask the gateway's operator to map one of your groups."))
    vetted.run_as = run_as.as_record()
    return vetted


def fail_closed(vet: Callable[[], Vetted]) -> Vetted:
    """Run the guard; any exception inside it is a denial, never a pass."""
    try:
        return vet()
    except Exception as error:  # fail closed
        log.exception("guard failure")
        return Vetted(None, Decision.deny("guard:internal-error", f"the guard failed while checking this text ({type(error).__name__})",
                                          hint="Report this to the gateway's operator; the call was not run."))


def denial_for(decision: Decision) -> Denied:
    return ApprovalRequired(decision) if decision.verdict is Verdict.REVIEW else Denied(decision)


class Guard:
    # Tools whose every text is vetted off the event loop (others: tools.offload): a shell text's cost is not bounded by its
    # size (a 31-byte brace expansion; the analysis has budgets, policy.shell.words.Budget, but a
    # budget's worth of work must not hold other callers either).
    OFFLOAD_TOOLS = frozenset({"shell_run"})

    def __init__(self, recorder: Recorder, alerts: Alerts | None = None) -> None:
        self.recorder = recorder
        self.alerts = alerts
        self.holds: Holds | None = None  # set by the gateway: review verdicts are held for approvers
        self.limits: CallLimits | None = None  # set by the gateway: [limits] per identity
        self._vet_limiter = anyio.CapacityLimiter(2)

    def _base(self, call_id: str, caller: Caller, tool: str, connection: str, text: str,
              reason: str | None) -> ev.CallRequested:
        return ev.CallRequested(
            type=ev.REQUESTED, call_id=call_id, identity=caller.identity.as_record(),
            client=caller.client or None, session=caller.session, connection=connection,
            tool=tool, text=recordable(text), reason=reason,
        )

    async def record(self, event: ev.AuditEvent) -> None:
        """Append, shielded from cancellation: once `call.requested` is written, the call's terminal
        event is written too, whatever the client does meanwhile."""
        with anyio.CancelScope(shield=True):
            await self.recorder.append(event)

    async def refuse(self, caller: Caller, tool: str, connection: str, text: str, reason: str | None,
                     error: BastionError) -> None:
        """Record a call refused before the guard could decide (bad input, unknown connection)."""
        call_id = new_call_id()
        with anyio.CancelScope(shield=True):
            await self.recorder.append(self._base(call_id, caller, tool, connection, text, reason))
            await self.recorder.append(ev.CallDenied(type=ev.DENIED, call_id=call_id, error=error_record(error)))

    async def _vet(self, vet: Callable[[], Vetted], text: str, tool: str = "") -> Vetted:
        if tool in self.OFFLOAD_TOOLS:
            return await anyio.to_thread.run_sync(fail_closed, vet, limiter=self._vet_limiter)
        return await parsing(text, lambda: fail_closed(vet), self._vet_limiter)

    async def run(self, caller: Caller, tool: str, connection: str, text: str, reason: str | None,
                  **options: Any) -> Guarded[Any]:
        """`guarded` within the caller's limits, counted as running (a call alone has its events
        written on the event loop's thread: `Recorder.alone`)."""
        self.recorder.calls += 1
        try:
            return await self._admitted(caller, tool, connection, text, reason, **options)
        finally:
            self.recorder.calls -= 1

    async def _admitted(self, caller: Caller, tool: str, connection: str, text: str, reason: str | None,
                        **options: Any) -> Guarded[Any]:
        """`guarded`, within the caller's per-identity limits (``limits``, counted in the store across
        gateways): over one, the call is refused and recorded, and the agent told when to retry."""
        if self.limits is None:
            return await self.guarded(caller, tool, connection, text, reason, **options)
        call_id = new_call_id()
        try:
            await anyio.to_thread.run_sync(self.limits.admit, caller.identity.subject, call_id)
        except RateLimited as error:
            await self.refuse(caller, tool, connection, text, reason, error)
            raise
        except StoreError as error:
            raise AuditUnavailable("the audit store cannot be written, so nothing was run",
                                   hint="Tell the gateway's operator; retry once the audit store is writable.",
                                   detail=str(error)) from error
        try:
            return await self.guarded(caller, tool, connection, text, reason, call_id=call_id, **options)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.limits.release, [call_id])

    async def guarded(self, caller: Caller, tool: str, connection: str, text: str, reason: str | None, *,
                  what: str, vet: Callable[[], Vetted], execute: Callable[[Vetted], Awaitable[R]],
                  result_record: Callable[[R], ev.Outcome], max_bytes: int = MAX_TEXT_BYTES,
                  preview: Callable[[Vetted], Awaitable[dict[str, Any]]] | None = None,
                  confirmed: bool = False, call_id: str | None = None) -> Guarded[R]:
        """① vet (analyse + decide) ③ record ④ deny, or hold until approved, or ⑤ run ⑦ record.
        ``what`` names the text in errors; ``preview`` shows approvers a held call's impact;
        ``confirmed``: the requester confirmed it themself (MCP elicitation), which a rule with
        self_confirm accepts instead of approvers."""
        try:
            validate_text(text, what=what, max_bytes=max_bytes)
        except InvalidInput as error:
            await self.refuse(caller, tool, connection, text, reason, error)
            raise
        vetted = await self._vet(vet, text, tool)
        if vetted.decision.allowed and self.alerts is not None:
            # Over an egress budget: reads are held or denied as the alert rule says.
            blocked = await anyio.to_thread.run_sync(self.alerts.egress_block, caller.identity)
            if blocked is not None:  # a hold keeps the plan: approved, it runs what was vetted
                vetted = Vetted(vetted.facts, blocked, vetted.plan if blocked.verdict is Verdict.REVIEW else None,
                                vetted.run_as)
        decision = vetted.decision
        call_id = call_id or new_call_id()
        requested = self._base(call_id, caller, tool, connection, text, reason)
        requested["facts"] = vetted.facts
        record = requested["decision"] = decision.as_record()
        if vetted.run_as and decision.verdict is not Verdict.DENY:
            record["run_as"] = vetted.run_as
        reviewable = decision.verdict is Verdict.REVIEW and vetted.plan is not None and self.holds is not None
        self_confirmed = reviewable and confirmed and self.holds is not None and self.holds.self_confirm(connection, decision)
        if self_confirmed:
            record["confirmed_by"] = caller.identity.subject
        # ③ Durable before anything runs: if this raises, nothing ran.
        await self.record(requested)
        if reviewable and not self_confirmed:
            assert self.holds is not None
            # Returns only once approved (and the approval is used by this call); otherwise it
            # records this call's terminal event and raises what the agent is told.
            await self.holds.settle(call_id, caller, tool, connection, text, reason, decision, vetted.facts,
                                    (lambda: preview(vetted)) if preview else None)
        elif not (decision.allowed or self_confirmed) or vetted.plan is None:
            denied = denial_for(decision)
            denial = ev.CallDenied(type=ev.DENIED, call_id=call_id, decision=decision.as_record(),
                                   error=error_record(denied))
            await self.record(denial)
            await self._alert(requested, denial)
            raise denied
        started = time.perf_counter()
        limits = decision.limits
        hold_past_bound = self.holds is not None and limits is not None and limits.over_rows_affected == "review"

        async def first_run() -> R | RowsAffectedExceeded:
            try:
                return await execute(vetted)
            except RowsAffectedExceeded as over:
                if hold_past_bound:
                    return over  # rolled back; held below, not failed
                raise

        outcome = await self._attempt(call_id, started, tool, first_run)
        if isinstance(outcome, RowsAffectedExceeded):
            vetted = await self._held_past_bound(call_id, caller, tool, connection, text, reason, vetted, outcome)
            outcome = await self._attempt(call_id, started, tool, lambda: execute(vetted))
        result: R = outcome
        duration_ms = (time.perf_counter() - started) * 1000
        terminal = ev.CallFinished(type=ev.FINISHED, call_id=call_id, connection=connection, tool=tool,
                                   duration_ms=round(duration_ms, 3), **result_record(result))
        try:
            await self.record(terminal)
        except AuditUnavailable as error:
            # It ran: say so, so nobody retries a write. The call is closed as interrupted at the next start.
            raise AuditUnavailable("it ran, but its result could not be recorded, so it is not returned",
                                   hint="Do not retry a write: check its effect first. Tell the gateway's operator.",
                                   detail=error.detail) from error
        await self._alert(requested, terminal)
        return Guarded(call_id, result, duration_ms, decision)

    async def _held_past_bound(self, call_id: str, caller: Caller, tool: str, connection: str, text: str,
                               reason: str | None, vetted: Vetted, over: RowsAffectedExceeded) -> Vetted:
        """A write past its rule's max_rows_affected (rolled back), held for approvers who see the
        count. Returns once approved: it then runs again bounded by that count, so a write that has
        grown since is refused. Otherwise `Holds.settle` records the end and raises."""
        assert self.holds is not None and vetted.decision.limits is not None
        impact = {"statements": [{"kind": "write", "rows": over.changed}], "rolled_back": True,
                  "max_rows_affected": over.bound}

        async def preview() -> dict[str, Any]:
            return impact

        await self.holds.settle(call_id, caller, tool, connection, text, reason, vetted.decision, vetted.facts, preview)
        limits = replace(vetted.decision.limits, max_rows_affected=over.changed, over_rows_affected="deny")
        return replace(vetted, decision=replace(vetted.decision, limits=limits))

    async def _alert(self, requested: ev.CallRequested, terminal: ev.Terminal) -> None:
        """Evaluate the alert rules after a call ended; an alert failure never fails the call."""
        if self.alerts is None:
            return
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.alerts.after, requested, terminal)
        except Exception:
            log.exception("alert evaluation failed")

    async def _attempt(self, call_id: str, started: float, tool: str, work: Callable[[], Awaitable[R]]) -> R:
        """Run ``work``; if it fails or is cancelled, record `call.failed` (shielded) and re-raise."""
        try:
            return await work()
        except anyio.get_cancelled_exc_class():
            await self._failed(call_id, started, {"code": "cancelled", "message": "the client cancelled the call"})
            raise
        except BastionError as error:
            await self._failed(call_id, started, error_record(error))
            raise
        except Exception as error:
            log.exception("%s failure", tool)
            await self._failed(call_id, started, {"code": "internal", "message": type(error).__name__})
            raise ExecutionError(f"the gateway failed while running {tool}") from error

    async def _failed(self, call_id: str, started: float, error: ev.ErrorRecord) -> None:
        await self.record(ev.CallFailed(type=ev.FAILED, call_id=call_id, error=error,
                                         duration_ms=round((time.perf_counter() - started) * 1000, 3)))

    async def record_call(self, caller: Caller, tool: str, connection: str, text: str,
                          work: Callable[[], Awaitable[tuple[R, dict[str, Any]]]], *,
                          decision: Decision | None = None, facts: ev.JsonObject | None = None) -> R:
        """Record a call that runs nothing guarded on a target (check, describe, list_connections):
        `call.requested`, then ``work()`` → (value, result for the log), then finished or failed."""
        call_id = new_call_id()
        requested = self._base(call_id, caller, tool, connection, text, None)
        requested["facts"], requested["decision"] = facts, decision.as_record() if decision else None
        await self.record(requested)
        value, result = await self._attempt(call_id, time.perf_counter(), tool, work)
        await self.record(ev.CallFinished(type=ev.FINISHED, call_id=call_id, result=result))
        return value


def safe_check(policy: ConnectionPolicy | ShellPolicy, identity: Identity, text: str) -> Decision:
    """Decide a text against an SQL or shell policy with no gateway (`bastion check`); failures deny."""
    from bastion.policy.shell.decide import vet_shell_text

    try:
        validate_text(text)
    except InvalidInput as error:
        return Decision.deny("guard:invalid-input", error.message, hint=error.hint)

    def vet() -> Vetted:
        if isinstance(policy, ShellPolicy):
            return Vetted(None, vet_shell_text(identity, policy, text)[1])
        decision = decide(identity, policy, analyse(text, policy.dialect, policy.default_schema))
        return Vetted(None, hints.refine(decision, text, policy.connection, policy.dialect))

    return fail_closed(vet).decision
