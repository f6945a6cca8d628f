"""Replay: the timeline of a call or a session, and recorded calls re-run against a sandbox.

A re-run is compared with the recording row by row: columns, then rows in order, then (for a write,
which returns no rows) the rows it affected. A difference names the first differing row and its
columns with both values; a column the recording masked shows the re-run's value only where the
re-run masked it too (the sandbox may not mask: its raw value never reaches the report).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from bastion.policy import Identity
from bastion.policy.errors import BastionError, InvalidInput
from bastion.store.audit_store import AuditStore
from bastion.store.events import StoredEvent
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
    row_count: int | None = None  # rows returned, or affected by a write (which returns none)
    truncated: bool = False


def timeline(store: AuditStore, ident: str) -> list[Step]:
    """The calls of a call id, or of a session (the MCP session id, or the gateway process for stdio)."""
    requested = [e for e in store.call(ident) if e["type"] == "call.requested"]
    if not requested:
        requested = store.session(ident)
    if not requested:
        raise InvalidInput(f"no call or session `{ident}` in the audit log")
    return [_step(store, event) for event in requested]


def _step(store: AuditStore, requested: StoredEvent) -> Step:
    call_id = requested["call_id"] or ""  # never None on a call.requested row
    events = store.call(call_id)
    last = events[-1]
    decision = requested.get("decision") or {}
    if last["type"] == "call.finished":
        result = last.get("result") or {}
        if "rows" in result:
            summary = (f"{last.get('row_count')} rows{' (truncated)' if last.get('truncated') else ''}, digest {digest(result)}"
                       if result.get("columns") else f"{last.get('row_count')} rows affected")
        elif "exit_code" in result:
            summary = f"exit {result['exit_code']}, {len(result.get('stdout') or '')} bytes of output"
        else:
            summary = json.dumps(result, ensure_ascii=False)[:80]
    else:
        result = None
        summary = (last.get("error") or {}).get("message", "") or last["type"]
    identity = requested["identity"]
    return Step(call_id, requested["time"], identity["subject"] if identity else "", tuple(identity["groups"] if identity else ()),
                requested.get("tool") or "", requested.get("connection") or "", requested.get("text") or "",
                decision.get("verdict", ""), last["type"], summary, bool(decision.get("read_only")), result,
                last.get("row_count"), bool(last.get("truncated")))


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
    diff: list[str] = field(default_factory=list)  # what differs first, for a person to read


_SHOWN = 3  # differing rows described at most


def _plain(rows: Any) -> list[list[Any]]:
    """Rows as the log holds them (JSON: tuples become lists, dates and decimals text)."""
    return json.loads(json.dumps(rows or [], default=str))


def _masked_columns(result: dict[str, Any]) -> set[str]:
    return set(((result or {}).get("masking") or {}).get("columns") or {})


def compare(recorded: dict[str, Any], recorded_count: int | None, now: dict[str, Any], now_count: int,
            *, truncated: bool = False) -> list[str]:
    """What differs between a recorded result and a re-run's, first things first; [] when the same.

    Writes return no rows: their row counts (rows affected) are compared. Truncated recordings are
    compared on the rows both hold."""
    out: list[str] = []
    columns, now_columns = list(recorded.get("columns") or []), list(now.get("columns") or [])
    if columns != now_columns:
        out.append(f"columns: recorded {columns}, now {now_columns}")
        return out
    rows, now_rows = _plain(recorded.get("rows")), _plain(now.get("rows"))
    if not columns:  # a write, or a statement that returns nothing: what it affected
        if recorded_count is not None and recorded_count != now_count:
            out.append(f"rows affected: {recorded_count} recorded, {now_count} now")
        return out
    if not truncated and recorded_count is not None and recorded_count != now_count:
        out.append(f"row count: {recorded_count} recorded, {now_count} now")
    hidden = _masked_columns(recorded) - _masked_columns(now)

    def value(row: list[Any], i: int, column: str, mine: bool) -> str:
        if not mine and column in hidden:
            return "(withheld: masked in the recording, not in this re-run)"
        return json.dumps(row[i], ensure_ascii=False, default=str)

    shown = 0
    for index in range(min(len(rows), len(now_rows)) if truncated else max(len(rows), len(now_rows))):
        if shown >= _SHOWN:
            out.append("…")
            break
        was = rows[index] if index < len(rows) else None
        is_ = now_rows[index] if index < len(now_rows) else None
        if was == is_:
            continue
        shown += 1
        if was is None:
            assert is_ is not None  # not both None: they compared equal above
            out.append(f"row {index + 1}: only now: " + ", ".join(f"{c}={value(is_, i, c, False)}"
                                                                for i, c in enumerate(columns)))
        elif is_ is None:
            out.append(f"row {index + 1}: only recorded: " + ", ".join(f"{c}={value(was, i, c, True)}"
                                                                     for i, c in enumerate(columns)))
        else:
            out.append(f"row {index + 1}: " + "; ".join(
                f"{c}: recorded {value(was, i, c, True)}, now {value(is_, i, c, False)}"
                for i, c in enumerate(columns) if i < len(was) and i < len(is_) and was[i] != is_[i]))
    return out


async def rerun(gateway: Gateway, steps: list[Step], sandbox: str, *, include_writes: bool = False) -> list[Rerun]:
    """Re-run the recorded SQL calls against the ``sandbox`` connection (guarded and recorded like any
    call, as the original identity with source `replay`) and compare the results row by row."""
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
        now = {"columns": done.result.columns, "rows": done.result.rows, "masking": done.result.masking}
        diff = compare(step.result or {}, step.row_count, now, done.result.row_count,
                       truncated=step.truncated or done.result.truncated)
        what = f"{done.result.row_count} rows" + (f", digest {digest(now)}" if done.result.columns else " affected")
        out.append(Rerun(step, True, step.result is not None and not diff, what, diff))
    return out
