"""Held calls on the agent's side: hold (or join), preview, wait with progress, then run once approved.

A call whose verdict is review is held in the approval store. The tool call waits up to ``wait_s``
for approvers, sending progress notifications; approved → it consumes the approval (single use,
bound to requester, connection, tool and exact text) and runs; denied → the approver's reason;
expired → said so; still pending → `pending_approval` with the hold id: the identical call re-issued
joins the same hold and runs once it is approved. Each outcome is the call's terminal event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio

from bastion.policy import Decision
from bastion.policy.approvals import ApprovalPolicy
from bastion.policy.errors import ApprovalDenied, HoldExpired, PendingApproval
from bastion.store import events as ev
from bastion.store.approvals import ApprovalStore, Held, HoldStatus
from bastion.tools.calls import Caller

log = logging.getLogger(__name__)
PolicyFor = Callable[[str, Decision], ApprovalPolicy]
SelfConfirm = Callable[[str, Decision], bool]
Record = Callable[[ev.AuditEvent], Awaitable[None]]
Preview = Callable[[], Awaitable[dict[str, Any]]]


def held_rule(decision: Decision) -> str | None:
    """The configured rule behind a review (rule ids carry a `:check` suffix)."""
    return decision.rules[0].split(":", 1)[0] if decision.rules else None


class Holds:
    def __init__(self, approvals: ApprovalStore, policy_for: PolicyFor, wait_s: float, record: Record,
                 self_confirm: SelfConfirm = lambda connection, decision: False) -> None:
        self.approvals = approvals
        self.policy_for = policy_for
        self.wait_s = wait_s
        self.record = record
        # Whether the rule that held a call lets the requester confirm it themself (elicitation).
        self.self_confirm = self_confirm

    async def settle(self, call_id: str, caller: Caller, tool: str, connection: str, text: str, reason: str | None,
                     decision: Decision, facts: ev.JsonObject | None, preview: Preview | None = None) -> Held:
        """Return the consumed hold once approved (the caller then runs the call); otherwise record
        the call's terminal event and raise what the agent is told."""
        policy = self.policy_for(connection, decision)
        started = time.monotonic()

        async def hold() -> Held:
            return await anyio.to_thread.run_sync(lambda: self.approvals.hold(
                call_id=call_id, requester=caller.identity, connection=connection, tool=tool, text=text,
                policy=policy, rule=held_rule(decision), facts=facts, reason=reason))

        held: Held | None = None
        try:  # from the hold on: a client that gives up while it is made or previewed ends the call too
            held = await hold()
            if not held.joined and preview is not None:
                held = await self._preview(held, preview)
            while True:
                if held.status is HoldStatus.APPROVED:
                    used = await anyio.to_thread.run_sync(self.approvals.consume, held.hold_id, call_id, held.binding)
                    if used:
                        return held
                    held = await hold()  # another identical call used it first: this one is held anew
                    continue
                if held.status is HoldStatus.DENIED:
                    await self._denied(call_id, held)
                if held.status is not HoldStatus.PENDING:
                    await self._expired(call_id, held)
                remaining = self.wait_s - (time.monotonic() - started)
                if remaining <= 0:
                    await self._pending(call_id, tool, held, time.monotonic() - started)
                held = await self.approvals.wait(held.hold_id, remaining, on_tick=self._ticker(caller, held))
        except anyio.get_cancelled_exc_class():
            # The client gave up: the hold stays pending (approvers may still decide, the same text
            # again joins it); this call ends as pending. Cancelled before the hold was made: failed.
            ended: ev.Terminal = (
                ev.CallPending(type=ev.PENDING, call_id=call_id, result={
                    "hold_id": held.hold_id, "status": str(held.status), "cancelled": True}) if held is not None
                else ev.CallFailed(type=ev.FAILED, call_id=call_id, duration_ms=round((time.monotonic() - started) * 1000, 3),
                                   error={"code": "cancelled", "message": "the client cancelled the call"}))
            with anyio.CancelScope(shield=True):
                await self.record(ended)
            raise

    async def _preview(self, held: Held, preview: Preview) -> Held:
        """The impact preview approvers see; a preview that fails is shown as failed, never blocks the hold."""
        try:
            result = await preview()
        except anyio.get_cancelled_exc_class():  # approvers see why there is none, and are told at once
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.approvals.set_preview, held.hold_id,
                                               {"error": "the requester cancelled the call before its preview ended"})
            raise
        except Exception as error:  # the hold stands whatever the preview does
            log.warning("impact preview failed for %s: %s", held.hold_id, error)
            result = {"error": getattr(error, "message", type(error).__name__)}
        return await anyio.to_thread.run_sync(self.approvals.set_preview, held.hold_id, result)

    @staticmethod
    def _ticker(caller: Caller, held: Held) -> Callable[[float], Awaitable[None]] | None:
        progress = caller.progress
        if progress is None:
            return None
        groups = ", ".join(f"`{g}`" for g in held.approver_groups)

        async def tick(elapsed: float) -> None:
            try:
                await progress(elapsed, f"held for approval by {groups}, {elapsed:.0f} s (approval {held.hold_id})")
            except Exception:  # progress is a courtesy; never fail the wait over it
                log.debug("progress notification failed", exc_info=True)

        return tick

    async def _denied(self, call_id: str, held: Held) -> None:
        vote = held.denial
        who, why = (vote.approver, vote.reason) if vote else ("an approver", None)
        error = ApprovalDenied(f"`{who}` denied this held call" + (f': "{why}"' if why else ""),
                               hint="Change the text as the approver asks and call again, or ask them why.")
        await self._end(ev.DENIED, call_id, held, error)

    async def _expired(self, call_id: str, held: Held) -> None:
        error = HoldExpired(f"the approval `{held.hold_id}` {'expired unused' if held.status is HoldStatus.EXPIRED else 'is ' + str(held.status)}",
                            hint="Call again with the same text to ask for approval anew.")
        await self._end(ev.EXPIRED, call_id, held, error)

    async def _pending(self, call_id: str, tool: str, held: Held, waited: float) -> None:
        groups = ", ".join(f"`{g}`" for g in held.approver_groups)
        error = PendingApproval(
            f"held for approval by {groups} (approval `{held.hold_id}`, waited {waited:.0f} s; "
            f"{held.approvals} of {held.min_approvals} approvals so far)",
            hint=f"Call {tool} again with exactly the same text: it runs once approved (until {held.expires_at}).")
        await self._end(ev.PENDING, call_id, held, error)

    async def _end(self, kind: Literal["call.denied", "call.expired", "call.pending"], call_id: str, held: Held,
                   error: Exception) -> None:
        from bastion.tools.guard import error_record

        record, result = error_record(error), {"hold_id": held.hold_id, "status": str(held.status)}
        ended: ev.Terminal
        if kind == ev.DENIED:
            ended = ev.CallDenied(type=kind, call_id=call_id, error=record, result=result)
        elif kind == ev.EXPIRED:
            ended = ev.CallExpired(type=kind, call_id=call_id, error=record, result=result)
        else:
            ended = ev.CallPending(type=kind, call_id=call_id, error=record, result=result)
        await self.record(ended)
        raise error
