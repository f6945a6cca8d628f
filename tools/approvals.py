"""The approvers' side of held calls, shared by every channel (MCP tools, CLI, HTTP API, page):
list what a person may decide, and decide it. The store re-checks everything inside its transaction."""

from __future__ import annotations

from typing import Any

import anyio

from bastion.policy import Identity
from bastion.store.approvals import ApprovalStore, Held

OPEN = ("pending", "approved")


def concerns(held: Held, identity: Identity) -> bool:
    """A hold someone may see: they may decide it, or they asked for it."""
    return held.requester_subject == identity.subject or identity.in_any(held.approver_groups)


async def visible(approvals: ApprovalStore, identity: Identity, status: str | None = "pending",
                  limit: int = 100) -> list[Held]:
    await anyio.to_thread.run_sync(approvals.expire_due)
    holds = await anyio.to_thread.run_sync(lambda: approvals.list(status, limit=limit))
    return [h for h in holds if concerns(h, identity)]


async def decide(approvals: ApprovalStore, identity: Identity, hold_id: str, approve: bool,
                 reason: str | None) -> Held:
    return await anyio.to_thread.run_sync(approvals.decide, hold_id, identity, approve, reason)


def summary(held: Held) -> dict[str, Any]:
    """A hold as an approver reads it: what, who, why, which rule, what it would touch."""
    record = held.as_record()
    return {k: record[k] for k in ("hold_id", "status", "requester", "connection", "tool", "text", "reason", "rule",
                                   "approver_groups", "min_approvals", "approvals", "expires_at", "preview", "votes")}
