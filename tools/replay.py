"""Replay: the timeline of a call or a session, and recorded reads re-run against a sandbox."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from bastion.policy import Identity
from bastion.policy.errors import BastionError, InvalidInput
from bastion.store.sqlite_store import SqliteAuditStore
from bastion.tools.calls import Caller
from bastion.tools.gateway import Gateway


@dataclass
class Step:
    """One call as the log tells it."""

    call_id: str
    time: str
    subject: str
    groups: tuple[str, ...]
    tool: str
    connection: str
    text: str
    verdict: str
    outcome: str  # the terminal event type
    summary: str
    read_only: bool
    result: Any


def timeline(store: SqliteAuditStore, ident: str) -> list[Step]:
    """The calls of a call id, or of a session (the MCP session id, or the gateway process for stdio)."""
    requested = [e for e in store.call(ident) if e["type"] == "call.requested"]
    if not requested:
        requested = store.session(ident)
    if not requested:
        raise InvalidInput(f"no call or session `{ident}` in the audit log")
    return [_step(store, event) for event in requested]


def _step(store: SqliteAuditStore, requested: dict[str, Any]) -> Step:
    events = store.call(requested["call_id"])
    last = events[-1]
    decision = requested.get("decision") or {}
    if last["type"] == "call.finished":
        result = last.get("result") or {}
        if "rows" in result:
            summary = f"{last.get('row_count')} rows{' (truncated)' if last.get('truncated') else ''}, digest {digest(result)}"
        elif "exit_code" in result:
            summary = f"exit {result['exit_code']}, {len(result.get('stdout') or '')} bytes of output"
        else:
            summary = json.dumps(result, ensure_ascii=False)[:80]
    else:
        result = None
        summary = (last.get("error") or {}).get("message", "") or last["type"]
    identity = requested.get("identity") or {}
    return Step(requested["call_id"], requested["time"], identity.get("subject", ""), tuple(identity.get("groups") or ()),
                requested.get("tool") or "", requested.get("connection") or "", requested.get("text") or "",
                decision.get("verdict", ""), last["type"], summary, bool(decision.get("read_only")), result)


def digest(result: dict[str, Any]) -> str:
    """A short content digest of a result's rows (and columns), to compare runs."""
    body = json.dumps({"columns": result.get("columns"), "rows": result.get("rows")}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:12]


@dataclass
class Rerun:
    step: Step
    ran: bool
    same: bool | None
    now: str  # summary of the re-run, or why it did not run


async def rerun(gateway: Gateway, steps: list[Step], sandbox: str, *, include_writes: bool = False) -> list[Rerun]:
    """Re-run the recorded SQL calls against the ``sandbox`` connection (guarded and recorded like any
    call, as the original identity with source `replay`) and compare row counts and digests."""
    target = gateway.connections.get(sandbox)
    if target is None or not getattr(target, "sandbox", False):
        raise InvalidInput(f"`{sandbox}` is not a connection marked `sandbox = true`",
                           hint="Replay runs only against a connection the config marks as a sandbox.")
    out = []
    for step in steps:
        if step.tool != "sql_query" or step.outcome != "call.finished":
            out.append(Rerun(step, False, None, "not a finished SQL call"))
            continue
        if not step.read_only and not include_writes:
            out.append(Rerun(step, False, None, "a write (replay writes with --include-writes)"))
            continue
        # As the original identity (row-level security must see the same user), marked as a replay.
        caller = Caller(Identity(step.subject, frozenset(step.groups), source="replay"), {"name": "bastion replay"})
        try:
            done = await gateway.sql_query(caller, sandbox, step.text, f"replay of {step.call_id}")
        except BastionError as error:
            out.append(Rerun(step, False, None, error.for_agent()))
            continue
        now = {"columns": done.result.columns, "rows": done.result.rows}
        same = step.result is not None and digest(now) == digest(step.result) and \
            done.result.row_count == len(step.result.get("rows") or [])
        out.append(Rerun(step, True, same, f"{done.result.row_count} rows, digest {digest(now)}"))
    return out
