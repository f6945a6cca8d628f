"""The approvals service: the approvers' side of held calls, the one every channel calls.

    MCP tools approvals_list, approval_decide  ─┐  through Gateway.approvals_list / approval_decide
    CLI bastion approvals list/show/approve/deny┘  (recorded as calls, as any tool)
    JSON API  /approvals/api/...  (server/approvals_api.py) ─┐  directly; the store records the votes
    page      /approvals/...      (server/approvals_page.py) ┘

One visibility rule (`concerns`), one status as shown (`effective_status`: a live hold past its
expiry is expired, whether or not the store has marked it yet; reading never writes), one listing
(`list_visible`), one way to decide (`decide`: a reason of at most `MAX_REASON` characters, then
policy's `refusal` first for a clear message, then the store, which checks everything again inside
its transaction). Refusals are policy/errors.py's ApprovalErrors; a store that cannot be read or
written raises StoreError.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import anyio

from bastion.policy import Identity
from bastion.policy.approvals import refusal
from bastion.policy.errors import HoldNotFound, InvalidInput, NotAllowedToDecide, ReasonRequired
from bastion.store.approvals import ApprovalStore, Held, HoldStatus

STATUSES: tuple[str, ...] = tuple(str(s) for s in HoldStatus)  # every status a hold can have, in its life's order
MAX_REASON = 2000  # characters of an approver's reason
LIST_SCAN = 1000  # holds read per listing, before the visibility filter
LIST_LIMIT = 100  # holds answered per listing, unless the channel asks for fewer or more


def concerns(held: Held, identity: Identity) -> bool:
    """A hold someone may see: they may decide it, or they asked for it."""
    return held.requester_subject == identity.subject or identity.in_any(held.approver_groups)


def effective_status(held: Held, now: datetime) -> HoldStatus:
    """The status to show: a live hold past its expiry is expired, whether or not the store has
    marked it yet (the store expires it the next time anything touches it, and the gateway's
    `expire_holds` does every few seconds)."""
    if held.status in (HoldStatus.PENDING, HoldStatus.APPROVED) and _moment(held.expires_at) <= now:
        return HoldStatus.EXPIRED
    return held.status


def _moment(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def statuses(names: Iterable[str] | None) -> set[HoldStatus]:
    """The statuses named (None: all of them); InvalidInput names one that is not a status."""
    if names is None:
        return set(HoldStatus)
    wanted = set(names)
    unknown = sorted(wanted - set(STATUSES))
    if unknown or not wanted:
        raise InvalidInput(f"unknown status `{unknown[0] if unknown else ''}`",
                           hint=f"Use one or more of {', '.join(STATUSES)}, or all.")
    return {HoldStatus(name) for name in wanted}


async def list_visible(store: ApprovalStore, identity: Identity, names: Iterable[str] | None = (HoldStatus.PENDING,),
                       limit: int = LIST_LIMIT) -> list[Held]:
    """The holds ``identity`` may see whose effective status is one of ``names`` (None: any),
    newest first, at most ``limit``."""
    shown = statuses(names)
    stored = set(shown)
    if HoldStatus.EXPIRED in stored:  # overdue holds the store has not marked yet are still stored live
        stored |= {HoldStatus.PENDING, HoldStatus.APPROVED}
    holds = await anyio.to_thread.run_sync(functools.partial(store.list, sorted(stored), limit=LIST_SCAN))
    now = store.clock()
    return [h for h in holds if concerns(h, identity) and effective_status(h, now) in shown][:limit]


async def load_visible(store: ApprovalStore, identity: Identity, hold_id: str) -> Held:
    """The hold, if ``identity`` may see it; else HoldNotFound or NotAllowedToDecide."""
    held = await anyio.to_thread.run_sync(store.get, hold_id)
    if held is None:
        raise HoldNotFound(f"there is no held call `{hold_id}`",
                           hint="The list of held calls shows the ids you may see.")
    if not concerns(held, identity):
        groups = ", ".join(f"`{g}`" for g in held.approver_groups)
        raise NotAllowedToDecide(f"`{identity.subject}` is not in an approver group of held call `{hold_id}`",
                                 hint=f"Only its requester and members of {groups} may see it.")
    return held


async def decide(store: ApprovalStore, identity: Identity, hold_id: str, approve: bool, reason: str | None) -> Held:
    """Vote on a hold as ``identity``; returns the hold after the vote, or raises the ApprovalError
    that explains the refusal (nothing is recorded then)."""
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > MAX_REASON:
        raise InvalidInput(f"the reason is {len(reason)} characters long", hint=f"Keep it under {MAX_REASON}.")
    held = await load_visible(store, identity, hold_id)
    refused = refusal(identity, held)  # the clear message first; the store checks again in its transaction
    if refused is not None:
        raise refused
    if not approve and reason is None:
        raise ReasonRequired(f"a denial of held call `{hold_id}` needs a reason",
                             hint="Say why, so the requester knows what would pass instead.")
    return await anyio.to_thread.run_sync(functools.partial(store.decide, hold_id, identity, approve, reason))


def summary(held: Held, now: datetime) -> dict[str, Any]:
    """A hold as an approver reads it: what, who, why, which rule, what it would touch; its status as shown."""
    record = held.as_record()
    return {**{k: record[k] for k in ("hold_id", "status", "requester", "connection", "tool", "text", "reason", "rule",
                                      "approver_groups", "min_approvals", "approvals", "expires_at", "preview", "votes")},
            "status": str(effective_status(held, now))}
