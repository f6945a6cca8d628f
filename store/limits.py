"""Per-identity limits (`[limits]`): calls running at once and calls per minute, counted in the audit
store's database (table `call_slots`, migration ``0008_call_slots``), so they hold across every
gateway sharing the store (several replicas on one PostgreSQL store, or processes on one SQLite file).

`admit` runs in one write transaction (the store's write lock): it counts the identity's running
calls and its calls in the last minute, and either records the call as started or refuses it with
`RateLimited`, which says when to retry. `release` marks it ended. A call held for approval is
running while it waits. Rows of calls a crashed gateway left running are released at the next
start-up (with the calls closed as interrupted), and ignored after an hour whatever happens.
Refused calls take no slot and do not count toward the minute.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone

from bastion.policy.errors import RateLimited
from bastion.store.audit_store import AuditStore

WINDOW_S = 60.0  # calls per minute: a sliding window of this length
STALE_S = 3600.0  # a slot not released after this long is a lost one (its gateway died)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


class CallLimits:
    def __init__(self, audit: AuditStore, *, concurrent: int | None = None, per_minute: int | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.audit = audit
        self.concurrent, self.per_minute = concurrent, per_minute
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()  # one transaction at a time on the connection
        self._conn = audit.connect()

    def admit(self, subject: str, call_id: str) -> None:
        """Record ``call_id`` as started for ``subject``, or raise `RateLimited` (nothing recorded)."""
        now = self.clock()
        window_start = _iso(now - timedelta(seconds=WINDOW_S))
        stale = _iso(now - timedelta(seconds=STALE_S))
        with self._lock, self.audit.write_transaction(self._conn, "the call limits") as conn:
            conn.execute("DELETE FROM call_slots WHERE started < ? AND (ended IS NOT NULL OR started < ?)",
                         (window_start, stale))
            if self.concurrent is not None:
                running = conn.execute("SELECT count(*) FROM call_slots WHERE subject = ? AND ended IS NULL "
                                       "AND started >= ?", (subject, stale)).fetchone()[0]
                if running >= self.concurrent:
                    raise RateLimited(
                        f"`{subject}` has {running} calls running, the most one identity may have at once "
                        f"(across every gateway)", retry_after_s=1.0,
                        hint="Retry in about 1 s, once one of them has ended.")
            if self.per_minute is not None:
                recent = [row[0] for row in conn.execute(
                    "SELECT started FROM call_slots WHERE subject = ? AND started > ? ORDER BY started",
                    (subject, window_start)).fetchall()]
                if len(recent) >= self.per_minute:
                    # The call that must leave the window before one more fits in it.
                    frees = datetime.fromisoformat(recent[len(recent) - self.per_minute])
                    wait = max((frees + timedelta(seconds=WINDOW_S) - now).total_seconds(), 0.1)
                    raise RateLimited(
                        f"`{subject}` made {len(recent)} calls in the last minute, the most one identity may "
                        f"make (across every gateway)", retry_after_s=round(wait, 1),
                        hint=f"Retry in {wait:.1f} s.")
            conn.execute("INSERT INTO call_slots VALUES (?, ?, ?, NULL, ?)",
                         (call_id, subject, _iso(now), self.audit.instance))

    def release(self, call_ids: Iterable[str]) -> None:
        """Mark the calls ended (a call never admitted is ignored)."""
        ids = list(call_ids)
        if not ids:
            return
        with self._lock, self.audit.write_transaction(self._conn, "the call limits") as conn:
            conn.executemany("UPDATE call_slots SET ended = ? WHERE call_id = ? AND ended IS NULL",
                             [(_iso(self.clock()), call_id) for call_id in ids])
