"""Walk the log and find the first broken link: an edited, deleted, inserted or reordered event,
or (with the checkpoint key) a forged checkpoint or a truncated tail.

Large logs are checked in ranges by several processes at once; the ranges' ends are then linked.
"""

from __future__ import annotations

import hmac
import os
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from bastion.store import events as ev

_COLUMNS = ["seq", *ev.FIELDS, "prev_hash", "hash"]
_PARALLEL_FROM = 200_000  # below this, one process is quicker than starting others


@dataclass
class Report:
    events: int = 0
    checkpoints: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (seq, what is wrong), first first

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Range:
    events: int
    first_seq: int | None
    first_prev: str | None
    last_seq: int
    last_hash: str | None
    problem: tuple[int, str] | None
    hashes: dict[int, str]


def _check_range(path: str, low: int, high: int, wanted: frozenset[int]) -> _Range:
    """Hashes and links of events low <= seq <= high, on their own connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq",
                              (low, high))
        return _walk(cursor, wanted)
    finally:
        conn.close()


def _walk(cursor: sqlite3.Cursor, wanted: frozenset[int]) -> _Range:
    n_fields = len(ev.FIELDS)
    count, problem, hashes = 0, None, {}
    first_seq = first_prev = last_hash = None
    last_seq = 0
    chain_hash = ev.chain_hash_values
    while rows := cursor.fetchmany(10_000):
        for row in rows:
            seq, prev_hash, hash_ = row[0], row[n_fields + 1], row[n_fields + 2]
            if first_seq is None:
                first_seq, first_prev = seq, prev_hash
            elif problem is None:
                if seq != last_seq + 1:
                    problem = (seq, f"events {last_seq + 1}..{seq - 1} are missing (deleted)")
                elif prev_hash != last_hash:
                    problem = (seq, "its link to the previous event is broken (an event was deleted, inserted or "
                                    "moved before it)")
            if problem is None and chain_hash(prev_hash, row[1 : n_fields + 1]) != hash_:
                problem = (seq, "its content does not match its hash (the event was edited)")
            if seq in wanted:
                hashes[seq] = hash_
            count, last_seq, last_hash = count + 1, seq, hash_
    return _Range(count, first_seq, first_prev, last_seq, last_hash, problem, hashes)


def verify(conn: sqlite3.Connection, key: bytes | None = None, *, workers: int | None = None) -> Report:
    """Check every event's hash against its stored content and its link to the one before it; with
    ``key``, check every checkpoint's HMAC and that the chain still holds what it vouched for."""
    report = Report()
    checkpoints = {seq: (h, mac) for seq, h, mac in conn.execute("SELECT seq, hash, mac FROM checkpoints")} if key else {}
    wanted = frozenset(checkpoints)
    low, high, total = conn.execute("SELECT min(seq), max(seq), count(*) FROM events").fetchone()
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    workers = workers or min(os.cpu_count() or 1, 4)
    if total and total >= _PARALLEL_FROM and workers > 1 and path:
        step = (high - low) // workers + 1
        bounds = [(low + i * step, min(high, low + (i + 1) * step - 1)) for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            ranges = list(pool.map(_check_range, [path] * workers, [b[0] for b in bounds], [b[1] for b in bounds],
                                   [wanted] * workers))
    else:
        cursor = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events ORDER BY seq")
        ranges = [_walk(cursor, wanted)]
    # Link the ranges: each must start where the one before it ended (the first from the genesis).
    prev_seq, prev_hash, hashes = 0, ev.GENESIS, {}
    for r in ranges:
        if r.first_seq is not None and not report.problems:
            if r.first_seq != prev_seq + 1:
                report.problems.append((r.first_seq, f"events {prev_seq + 1}..{r.first_seq - 1} are missing (deleted)"))
            elif r.first_prev != prev_hash:
                report.problems.append((r.first_seq, "its link to the previous event is broken (an event was deleted, "
                                                     "inserted or moved before it)"))
        if r.problem and not report.problems:
            report.problems.append(r.problem)
        if r.first_seq is not None:
            prev_seq, prev_hash = r.last_seq, r.last_hash or prev_hash
        report.events += r.events
        hashes.update(r.hashes)
    for seq, (hash_, mac) in sorted(checkpoints.items()):
        report.checkpoints += 1
        assert key is not None
        if not hmac.compare_digest(ev.checkpoint_mac(key, seq, hash_), mac):
            report.problems.append((seq, "its checkpoint's signature is wrong (forged, or another key)"))
        elif seq not in hashes:
            report.problems.append((seq, "a signed checkpoint vouches for this event, but it is gone (the log was "
                                         "truncated or the event deleted)"))
        elif hashes[seq] != hash_:
            report.problems.append((seq, "the chain no longer matches its signed checkpoint (it was rewritten)"))
    report.problems.sort(key=lambda p: p[0])
    return report
