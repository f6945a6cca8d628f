"""Held calls and approvals, in the audit store's database (tables `holds` and `votes`, migration
``0005_approvals``), SQLite or PostgreSQL alike.

A call whose verdict is review is *held*: `hold()` creates a hold for its binding (the hash of
requester subject, connection, tool and exact text; policy/approvals.py), or joins the live one
that already exists, so an identical call re-issued never makes a second hold. Approvers `decide()`;
once enough have approved, one call with the same binding may `consume()` the approval and run.
A hold's life::

    pending ──decide(approve) × min_approvals──▶ approved ──consume(call, binding)──▶ consumed
       │  └─────decide(deny, reason)───────────▶ denied
       └──────────expiry (ttl)─────────────────▶ expired ◀──expiry── approved (never used)

Every change of state is one write transaction (``BEGIN IMMEDIATE``: the store's write lock) on
this store's own connection, and
its audit event is appended in that same transaction (`AuditStore.append_in`): the state and
its event commit together or not at all, and several gateway processes sharing the file see one
order of events. Events (store/events.py), all carrying the hold's facts in ``result``:

- ``call.held``          under the calling call's id, once per call that holds or joins;
- ``approval.granted``,
  ``approval.denied``,
  ``approval.consumed``,
  ``approval.expired``,
  ``approval.preview``   under the hold id as ``call_id`` (``bastion audit show <hold_id>`` shows a
                         hold's life; the calls' own timelines stay requested → held → terminal).

Methods are synchronous (a database round trip) apart from `wait`; the tools layer calls them with
``anyio.to_thread.run_sync``, as it does the audit store. Refusals raise policy/errors.py's
`ApprovalError` subclasses (a stable code, what was wrong, what would pass); a database that cannot
be read or written raises `StoreError`.

After each committed change, listeners (`subscribe`) are called with (event type, `Held`):
tools/notify.py's `ApprovalNotifier.on_change` sends the webhooks. A listener never fails a change.
"""

from __future__ import annotations

import builtins
import inspect
import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import anyio

from bastion.policy.approvals import ApprovalPolicy, binding_hash, refusal, text_hash
from bastion.policy.errors import HoldClosed, HoldNotFound, ReasonRequired
from bastion.policy.identity import Identity, IdentityRecord
from bastion.store import events as ev
from bastion.store.errors import StoreError
from bastion.store.audit_store import AuditStore, Connection

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Listener = Callable[[str, "Held"], None]
OnTick = Callable[[float], "Awaitable[None] | None"]


class HoldStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CONSUMED = "consumed"


LIVE = (HoldStatus.PENDING, HoldStatus.APPROVED)  # a new identical call joins these


def _literal(*statuses: HoldStatus) -> str:
    """Statuses as SQL literals, spelled by the enum. Literals, not parameters: the partial unique
    index on live holds (migrations.py) serves a query only when its WHERE names them as written."""
    return ", ".join(f"'{status.value}'" for status in statuses)


_IS_LIVE = f"status IN ({_literal(*LIVE)})"


@dataclass(frozen=True)
class Vote:
    """One approver's vote on a hold (table `votes`, append-only, one per approver)."""

    approver: str  # the approver's subject
    approve: bool
    reason: str | None
    at: str  # UTC, ISO 8601
    identity: IdentityRecord | None  # the approver's; the column allows NULL

    def as_record(self) -> dict[str, Any]:
        return {"approver": self.approver, "approve": self.approve, "reason": self.reason, "at": self.at,
                "identity": self.identity}


@dataclass(frozen=True)
class Held:
    """A held call as stored (one row of `holds`, with its votes). Times are UTC ISO 8601 strings.

    ``joined`` is set only on `ApprovalStore.hold`'s return: True when that call joined a hold
    that already existed for its binding, False when it created the hold.
    """

    hold_id: str
    binding: str
    call_id: str  # the first call that was held; later identical calls join (their `call.held` says so)
    created: str
    expires_at: str
    status: HoldStatus
    requester: IdentityRecord  # who asked
    requester_subject: str
    connection: str | None
    tool: str
    text: str  # the exact text
    text_hash: str
    facts: ev.JsonObject | None  # the call's analysis, as its call.requested records it
    reason: str | None  # the agent's reason
    rule: str | None  # the rule that held it
    approver_groups: tuple[str, ...]
    min_approvals: int
    preview: dict[str, Any] | None
    decided_at: str | None  # when it became approved or denied
    consumed_by_call: str | None
    votes: tuple[Vote, ...] = ()
    joined: bool = False

    @property
    def approvals(self) -> int:
        return sum(1 for vote in self.votes if vote.approve)

    @property
    def denial(self) -> Vote | None:
        """The vote that denied it, if one did (its reason is what the agent is told)."""
        return next((vote for vote in self.votes if not vote.approve), None)

    def as_record(self) -> dict[str, Any]:
        """JSON-ready, for the HTTP API, the page and the MCP tools (``joined`` left out)."""
        return {
            "hold_id": self.hold_id, "status": str(self.status), "call_id": self.call_id, "created": self.created,
            "expires_at": self.expires_at, "requester": self.requester, "connection": self.connection,
            "tool": self.tool, "text": self.text, "text_hash": self.text_hash, "facts": self.facts,
            "reason": self.reason, "rule": self.rule, "approver_groups": list(self.approver_groups),
            "min_approvals": self.min_approvals, "approvals": self.approvals, "preview": self.preview,
            "decided_at": self.decided_at, "consumed_by_call": self.consumed_by_call, "binding": self.binding,
            "votes": [vote.as_record() for vote in self.votes],
        }


def new_hold_id() -> str:
    """``hold-`` and 16 random hex digits: unguessable, and never mistaken for a call id."""
    return f"hold-{secrets.token_hex(8)}"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    # One format everywhere (UTC, microseconds), so stored times compare as strings in SQL.
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)


class ApprovalStore:
    """Held calls and votes, sharing ``audit``'s database file and hash chain.

    ``clock`` returns the current time (aware datetime); tests inject one to reach expiry.
    ``listeners`` are called after each committed change (see the module docstring).
    """

    def __init__(self, audit: AuditStore, *, clock: Clock | None = None,
                 listeners: Iterable[Listener] = ()) -> None:
        self.audit = audit
        self.clock = clock or _utc_now
        self._listeners = builtins.list(listeners)
        self._lock = threading.Lock()  # one transaction at a time on the writer connection
        self._read_lock = threading.Lock()
        try:
            # The audit store has migrated the database (0005_approvals).
            self._conn = audit.connect()
            self._reader = audit.connect()
        except audit.Error as error:
            raise StoreError(f"cannot open the approvals in {audit.where()}: {error}") from error

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(event_type, held)`` after every committed change: ``call.held`` (check
        ``held.joined``: False when the hold was created), ``approval.granted`` (check
        ``held.status``: approved once enough approvals are in), ``approval.denied``,
        ``approval.expired``, ``approval.consumed``, ``approval.preview``. Called in the thread that
        made the change; it should return quickly (start a thread for slow work)."""
        self._listeners.append(listener)

    # -- changes (each one transaction, with its event) -------------------------------------------

    def hold(self, *, call_id: str, requester: Identity, connection: str | None, tool: str, text: str,
             policy: ApprovalPolicy, rule: str | None, facts: ev.JsonObject | None = None, reason: str | None = None) -> Held:
        """Hold the call ``call_id``: join the live hold for its binding (pending, or approved and
        not yet used, unexpired), else create one, pending, expiring after ``policy.ttl_s``.
        Appends ``call.held`` for ``call_id`` either way. Returns the hold, ``joined`` set.

        A joined hold keeps its own rule, approver groups and expiry. If its status is approved,
        the caller may `consume` it straight away.
        """
        binding = binding_hash(requester.subject, connection, tool, text)
        now = self.clock()
        changes: builtins.list[tuple[str, Held]] = []
        with self._transaction() as conn:
            changes += self._expire(conn, _iso(now), binding=binding)
            row = conn.execute(f"SELECT * FROM holds WHERE binding = ? AND {_IS_LIVE}", (binding,)).fetchone()
            joined = row is not None
            if row is None:
                hold_id = new_hold_id()
                conn.execute(
                    "INSERT INTO holds (hold_id, binding, call_id, created, expires_at, status, requester, "
                    "requester_subject, connection, tool, text, text_hash, facts, reason, rule, approver_groups, "
                    f"min_approvals) VALUES (?, ?, ?, ?, ?, {_literal(HoldStatus.PENDING)}, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (hold_id, binding, call_id, _iso(now), _iso(now + timedelta(seconds=policy.ttl_s)),
                     _json(requester.as_record()), requester.subject, connection, tool, text, text_hash(text),
                     _json(facts), reason, rule, _json(sorted(policy.approver_groups)), policy.min_approvals))
                row = conn.execute("SELECT * FROM holds WHERE hold_id = ?", (hold_id,)).fetchone()
            held = self._held(conn, row, joined=joined)
            self.audit.append_in(conn, [ev.CallHeld(
                type=ev.HELD, call_id=call_id, connection=connection, tool=tool,
                result={**self._summary(held), "joined": joined, "expires_at": held.expires_at,
                        "approver_groups": list(held.approver_groups), "min_approvals": held.min_approvals},
            )])
        changes.append((ev.HELD, held))
        self._notify(changes)
        return held

    def decide(self, hold_id: str, approver: Identity, approve: bool, reason: str | None = None) -> Held:
        """Record ``approver``'s vote on a pending, unexpired hold; returns the hold after it.

        Refused (nothing recorded): no such hold (`HoldNotFound`); not pending, or past its expiry
        (`HoldClosed`; an overdue hold is marked expired first); the requester themself
        (`SelfApproval`), someone in none of its approver groups (`NotAllowedToDecide`), a second
        vote by the same approver (`AlreadyVoted`) — checked here again, inside the transaction,
        whatever the channel checked before; a denial without a reason (`ReasonRequired`).

        One denial denies the hold. Approvals from ``min_approvals`` different approvers approve
        it. Appends ``approval.granted`` or ``approval.denied``.
        """
        reason = (reason or "").strip() or None
        now = _iso(self.clock())
        failure: Exception | None = None
        changes: builtins.list[tuple[str, Held]] = []
        with self._transaction() as conn:
            held = self._get(conn, hold_id)
            if held.status in LIVE and held.expires_at <= now:
                changes += self._expire(conn, now, hold_id=hold_id)
                failure = self._closed(changes[-1][1])
            elif held.status is not HoldStatus.PENDING:
                failure = self._closed(held)
            elif (refused := refusal(approver, held)) is not None:
                failure = refused
            elif not approve and reason is None:
                failure = ReasonRequired(f"a denial of held call `{hold_id}` needs a reason",
                                         hint="Say why, so the requester knows what would pass instead.")
            else:
                try:
                    conn.execute("INSERT INTO votes (hold_id, approver, approve, reason, at, identity) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (hold_id, approver.subject, int(approve), reason, now, _json(approver.as_record())))
                except self.audit.IntegrityError:  # unreachable under BEGIN IMMEDIATE; the UNIQUE constraint backs it
                    failure = refusal(approver, self._get(conn, hold_id))
                if failure is None:
                    approvals = held.approvals + 1 if approve else held.approvals
                    status = (HoldStatus.DENIED if not approve
                              else HoldStatus.APPROVED if approvals >= held.min_approvals else HoldStatus.PENDING)
                    if status is not HoldStatus.PENDING:
                        conn.execute("UPDATE holds SET status = ?, decided_at = ? WHERE hold_id = ?",
                                     (str(status), now, hold_id))
                    held = self._get(conn, hold_id)
                    kind: ev.VoteType = ev.APPROVAL_GRANTED if approve else ev.APPROVAL_DENIED
                    self.audit.append_in(conn, [ev.ApprovalVote(
                        type=kind, call_id=hold_id, identity=approver.as_record(), reason=reason,
                        connection=held.connection, tool=held.tool,
                        result={**self._summary(held), "approvals": approvals, "min_approvals": held.min_approvals},
                    )])
                    changes.append((kind, held))
        self._notify(changes)
        if failure is not None:
            raise failure
        return held

    def consume(self, hold_id: str, call_id: str, binding: str) -> bool:
        """Use an approved hold for call ``call_id``: True exactly once, for a call whose binding is
        the hold's, before its expiry; then the hold is consumed. False otherwise — not approved
        (yet), used already (two calls racing: one wins), expired, or another binding (a text that
        differs by one character is another call, never approved by this hold). Atomic across
        processes. Appends ``approval.consumed`` when it succeeds."""
        now = _iso(self.clock())
        changes: builtins.list[tuple[str, Held]] = []
        with self._transaction() as conn:
            changes += self._expire(conn, now, hold_id=hold_id)
            used = conn.execute(
                f"UPDATE holds SET status = {_literal(HoldStatus.CONSUMED)}, consumed_by_call = ? "
                f"WHERE hold_id = ? AND binding = ? AND status = {_literal(HoldStatus.APPROVED)} AND expires_at > ?",
                (call_id, hold_id, binding, now)).rowcount == 1
            if used:
                held = self._get(conn, hold_id)
                self.audit.append_in(conn, [ev.ApprovalConsumed(
                    type=ev.APPROVAL_CONSUMED, call_id=hold_id, connection=held.connection,
                    tool=held.tool, result={**self._summary(held), "consumed_by_call": call_id},
                )])
                changes.append((ev.APPROVAL_CONSUMED, held))
        self._notify(changes)
        return used

    def expire_due(self, now: datetime | None = None) -> builtins.list[Held]:
        """Move every pending or approved hold whose expiry has passed (at ``now``, default the
        clock's time) to expired, each with an ``approval.expired`` event; returns them. Run it
        periodically: `hold`, `decide`, `consume` and `wait` also expire the holds they touch."""
        with self._transaction() as conn:
            changes = self._expire(conn, _iso(now or self.clock()))
        self._notify(changes)
        return [held for _, held in changes]

    def set_preview(self, hold_id: str, preview: dict[str, Any]) -> Held:
        """Attach the impact preview approvers are shown (EXPLAIN output, rows a rolled-back dry run
        touched, ...) to a hold; appends ``approval.preview``. `HoldNotFound` if there is no such hold."""
        with self._transaction() as conn:
            if conn.execute("UPDATE holds SET preview = ? WHERE hold_id = ?", (_json(preview), hold_id)).rowcount != 1:
                raise HoldNotFound(f"there is no held call `{hold_id}`")
            held = self._get(conn, hold_id)
            self.audit.append_in(conn, [ev.ApprovalPreview(type=ev.APPROVAL_PREVIEW, call_id=hold_id, connection=held.connection,
                                                           tool=held.tool, result={**self._summary(held), "preview": preview})])
        self._notify([(ev.APPROVAL_PREVIEW, held)])
        return held

    # -- waiting ---------------------------------------------------------------------------------

    async def wait(self, hold_id: str, timeout_s: float, poll_s: float = 0.25, on_tick: OnTick | None = None, *,
                   tick_s: float = 1.0) -> Held:
        """Wait until the hold leaves pending (approved, denied, expired — decided by this process or
        by any other sharing the file) or ``timeout_s`` passes; returns the hold as it is then
        (still pending on timeout: the hold lives on). A hold whose expiry passes while waiting is
        marked expired. Each poll is one primary-key SELECT, off the event loop; on PostgreSQL a
        change made by any gateway ends the sleep between polls at once (NOTIFY).

        ``on_tick(elapsed_s)`` (sync or async) is called about every ``tick_s`` seconds while
        pending, for progress notifications. Cancelling the wait leaves the hold as it is.
        """
        started = time.monotonic()
        next_tick = tick_s
        await anyio.to_thread.run_sync(self.audit.listen)
        while True:
            seen = self.audit.hold_version(hold_id)
            row = await anyio.to_thread.run_sync(self._status, hold_id)
            if row is None:
                raise HoldNotFound(f"there is no held call `{hold_id}`")
            status, expires_at = row
            if status != HoldStatus.PENDING:
                break
            if expires_at <= _iso(self.clock()):
                await anyio.to_thread.run_sync(self._expire_one, hold_id)
                break
            elapsed = time.monotonic() - started
            if elapsed >= timeout_s:
                break
            if on_tick is not None and elapsed >= next_tick:
                ticked = on_tick(elapsed)
                if inspect.isawaitable(ticked):
                    await ticked
                next_tick = elapsed + tick_s
            # Woken early where the backend is told of a change (PostgreSQL: NOTIFY from any gateway).
            await self.audit.hold_changed(hold_id, min(poll_s, max(timeout_s - elapsed, 0.0)), seen)
        held = await anyio.to_thread.run_sync(self.get, hold_id)
        assert held is not None  # holds are never deleted
        return held

    # -- reading ---------------------------------------------------------------------------------

    def get(self, hold_id: str) -> Held | None:
        """The hold with its votes, or None."""
        with self._reading() as conn:
            row = conn.execute("SELECT * FROM holds WHERE hold_id = ?", (hold_id,)).fetchone()
            return None if row is None else self._held(conn, row)

    def live_for(self, binding: str) -> Held | None:
        """The live hold for a binding (pending, or approved and not yet used; not past its expiry), or None."""
        with self._reading() as conn:
            row = conn.execute(f"SELECT * FROM holds WHERE binding = ? AND {_IS_LIVE} AND expires_at > ?",
                               (binding, _iso(self.clock()))).fetchone()
            return None if row is None else self._held(conn, row)

    def list(self, status: str | Iterable[str] | None = None, limit: int = 100) -> builtins.list[Held]:
        """Holds, newest first, with their votes; only those in ``status`` (one or several) if given.
        Stored status: a pending hold past its expiry stays pending until something expires it."""
        statuses = [status] if isinstance(status, str) else builtins.list(status or ())
        where = f"WHERE status IN ({', '.join('?' for _ in statuses)}) " if statuses else ""
        with self._reading() as conn:
            rows = conn.execute(f"SELECT * FROM holds {where}ORDER BY created DESC, rowid DESC LIMIT ?",
                                (*statuses, limit)).fetchall()
            return [self._held(conn, row) for row in rows]

    def close(self) -> None:
        self._reader.close()
        self._conn.close()

    # -- internals -------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the store's write lock, across processes)."""
        with self._lock, self.audit.write_transaction(self._conn, "the approvals") as conn:
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._read_lock:
            try:
                # One snapshot for the hold and its votes.
                self._reader.execute("BEGIN")
                try:
                    yield self._reader
                finally:
                    self._reader.execute("COMMIT")
            except self.audit.Error as error:
                raise StoreError(f"cannot read the approvals: {error}") from error

    def _status(self, hold_id: str) -> tuple[str, str] | None:
        with self._read_lock:
            try:
                row = self._reader.execute("SELECT status, expires_at FROM holds WHERE hold_id = ?", (hold_id,)).fetchone()
            except self.audit.Error as error:
                raise StoreError(f"cannot read the approvals: {error}") from error
        return None if row is None else (row[0], row[1])

    def _expire_one(self, hold_id: str) -> None:
        with self._transaction() as conn:
            changes = self._expire(conn, _iso(self.clock()), hold_id=hold_id)
        self._notify(changes)

    def _expire(self, conn: Connection, now: str, *, binding: str | None = None,
                hold_id: str | None = None) -> builtins.list[tuple[str, Held]]:
        """Inside a transaction: live holds past their expiry (all, or one binding's, or one) → expired."""
        sql = f"SELECT * FROM holds WHERE {_IS_LIVE} AND expires_at <= ?"
        params: tuple[Any, ...] = (now,)
        if binding is not None:
            sql, params = sql + " AND binding = ?", (*params, binding)
        if hold_id is not None:
            sql, params = sql + " AND hold_id = ?", (*params, hold_id)
        out = []
        for row in conn.execute(sql + " ORDER BY expires_at", params).fetchall():
            conn.execute(f"UPDATE holds SET status = {_literal(HoldStatus.EXPIRED)} WHERE hold_id = ?", (row["hold_id"],))
            held = self._get(conn, row["hold_id"])
            self.audit.append_in(conn, [ev.ApprovalExpired(
                type=ev.APPROVAL_EXPIRED, call_id=held.hold_id, connection=held.connection, tool=held.tool,
                result={**self._summary(held), "was": row["status"], "expires_at": held.expires_at,
                        "approvals": held.approvals, "min_approvals": held.min_approvals},
            )])
            out.append((ev.APPROVAL_EXPIRED, held))
        return out

    def _get(self, conn: Connection, hold_id: str) -> Held:
        row = conn.execute("SELECT * FROM holds WHERE hold_id = ?", (hold_id,)).fetchone()
        if row is None:
            raise HoldNotFound(f"there is no held call `{hold_id}`",
                               hint="`bastion approvals list` shows the held calls.")
        return self._held(conn, row)

    @staticmethod
    def _held(conn: Connection, row: Any, *, joined: bool = False) -> Held:
        votes = tuple(
            Vote(v["approver"], bool(v["approve"]), v["reason"], v["at"],
                 json.loads(v["identity"]) if v["identity"] else None)
            for v in conn.execute("SELECT * FROM votes WHERE hold_id = ? ORDER BY rowid", (row["hold_id"],)))
        return Held(
            hold_id=row["hold_id"], binding=row["binding"], call_id=row["call_id"], created=row["created"],
            expires_at=row["expires_at"], status=HoldStatus(row["status"]), requester=json.loads(row["requester"]),
            requester_subject=row["requester_subject"], connection=row["connection"], tool=row["tool"],
            text=row["text"], text_hash=row["text_hash"], facts=json.loads(row["facts"]) if row["facts"] else None,
            reason=row["reason"], rule=row["rule"], approver_groups=tuple(json.loads(row["approver_groups"])),
            min_approvals=row["min_approvals"], preview=json.loads(row["preview"]) if row["preview"] else None,
            decided_at=row["decided_at"], consumed_by_call=row["consumed_by_call"], votes=votes, joined=joined)

    @staticmethod
    def _summary(held: Held) -> dict[str, Any]:
        """What every approval event's ``result`` says about its hold."""
        return {"hold_id": held.hold_id, "status": str(held.status), "rule": held.rule, "binding": held.binding,
                "text_hash": held.text_hash, "hold_call_id": held.call_id, "requester": held.requester_subject}

    @staticmethod
    def _closed(held: Held) -> HoldClosed:
        what = {
            HoldStatus.APPROVED: "was approved already",
            HoldStatus.DENIED: "was denied already",
            HoldStatus.EXPIRED: f"expired at {held.expires_at}",
            HoldStatus.CONSUMED: f"was approved and used already (by call `{held.consumed_by_call}`)",
        }.get(held.status, f"is {held.status}")
        return HoldClosed(f"held call `{held.hold_id}` {what}, so it can no longer be decided",
                          hint="Only pending held calls can be approved or denied. If the agent makes the same "
                               "call again, it is held anew.")

    def _notify(self, changes: builtins.list[tuple[str, Held]]) -> None:
        for kind, held in changes:
            for listener in self._listeners:
                try:
                    listener(kind, held)
                except Exception:
                    log.exception("approval listener failed on %s for %s", kind, held.hold_id)
