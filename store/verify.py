"""Walk the log and find the first broken link: an edited, deleted, inserted or reordered event,
or (with the checkpoint key) a forged checkpoint or a truncated tail."""

from __future__ import annotations

import hmac
import sqlite3
from dataclasses import dataclass, field

from store import events as ev


@dataclass
class Report:
    events: int = 0
    checkpoints: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (seq, what is wrong), first first

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(conn: sqlite3.Connection, key: bytes | None = None, *, batch: int = 10_000) -> Report:
    """Check every event's hash against its stored content and its link to the one before it; with
    ``key``, check every checkpoint's HMAC and that the chain still holds what it vouched for."""
    report = Report()
    hashes: dict[int, str] = {}
    want_checkpoints = {}
    if key is not None:
        want_checkpoints = {seq: (h, mac) for seq, h, mac in conn.execute("SELECT seq, hash, mac FROM checkpoints")}
    prev_seq, prev_hash = 0, ev.GENESIS
    columns = ["seq", *ev.FIELDS, "prev_hash", "hash"]
    cursor = conn.execute(f"SELECT {', '.join(columns)} FROM events ORDER BY seq")
    while rows := cursor.fetchmany(batch):
        for values in rows:
            row = dict(zip(columns, values))
            seq = row["seq"]
            report.events += 1
            if seq != prev_seq + 1 and not report.problems:
                report.problems.append((seq, f"events {prev_seq + 1}..{seq - 1} are missing (deleted)"))
            if row["prev_hash"] != prev_hash and not report.problems:
                report.problems.append((seq, "its link to the previous event is broken (an event was deleted, "
                                             "inserted or moved before it)"))
            if ev.chain_hash(row["prev_hash"], row) != row["hash"] and not report.problems:
                report.problems.append((seq, "its content does not match its hash (the event was edited)"))
            if seq in want_checkpoints:
                hashes[seq] = row["hash"]
            prev_seq, prev_hash = seq, row["hash"]
    for seq, (hash_, mac) in sorted(want_checkpoints.items()):
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
