"""Walk the log and find the first broken link: an edited, deleted, inserted or reordered event;
with the checkpoints' public key, a checkpoint that is forged, missing at its cadence, or vouches for
events the log no longer holds as they were; with the witness too, a log rolled back, cut, or
rewritten and re-signed after the witness saw it. (Legacy: with the HMAC key, the HMAC checkpoints
written before migration 0006.)

Large logs are checked in ranges by several processes at once; the ranges' ends are then linked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bastion.store import events as ev
from bastion.store.audit_store import Connection
from bastion.store.checkpoints import Checkpoint, FileWitness, NoteError, Verifier, open_checkpoint
from bastion.store.merkle import Frontier, leaf_hash

_COLUMNS = ["seq", *ev.FIELDS, "prev_hash", "hash"]
_PARALLEL_FROM = 200_000  # below this, one process is quicker than starting others
_PAGE = 10_000  # rows read at once


@dataclass
class Report:
    events: int = 0
    checkpoints: int = 0  # signed checkpoints checked (Ed25519; legacy HMAC ones with the HMAC key)
    witnessed: int = 0  # the witness's checkpoints checked
    covered: int = 0  # events vouched for by a verified signed checkpoint (the rest: by the chain only)
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
    leaves: bytes  # the events' Merkle leaf hashes, 32 bytes each, when asked for


def _check_range(path: str, low: int, high: int, wanted: frozenset[int], leaves: bool = False) -> _Range:
    """Hashes and links of events low <= seq <= high, on their own connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq",
                              (low, high))
        return _walk(cursor, wanted, leaves)
    finally:
        conn.close()


def _walk(cursor: Any, wanted: frozenset[int], leaves: bool = False) -> _Range:
    n_fields = len(ev.FIELDS)
    count, problem, hashes = 0, None, {}
    first_seq = first_prev = last_hash = None
    last_seq = 0
    canonical, sha256 = ev.canonical, hashlib.sha256
    leaf_hashes = bytearray()  # 32 bytes an event: a list of bytes objects would take about 75
    while rows := cursor.fetchmany(_PAGE):
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
            data = canonical(row[1 : n_fields + 1])
            if leaves:
                leaf_hashes += leaf_hash(data)
            if problem is None and sha256(prev_hash.encode() + b"\n" + data).hexdigest() != hash_:
                problem = (seq, "its content does not match its hash (the event was edited)")
            if seq in wanted:
                hashes[seq] = hash_
            count, last_seq, last_hash = count + 1, seq, hash_
    return _Range(count, first_seq, first_prev, last_seq, last_hash, problem, hashes, bytes(leaf_hashes))


class _Pages:
    """The events low <= seq <= high in order, a page at a time by seq (keyset), for `_walk`: psycopg's
    client-side cursor holds a query's whole result, so one query over a large PostgreSQL log would
    pin all of it in memory; a page is the rows `_walk` asks for at once."""

    def __init__(self, conn: Connection, low: int, high: int) -> None:
        self.conn, self.after, self.high = conn, low - 1, high

    def fetchmany(self, size: int) -> list[Any]:
        if self.after >= self.high:
            return []
        # No upper bound in the query: with one, PostgreSQL may sort the rest of the range for each page.
        rows = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                 (self.after, size)).fetchall()
        if rows and rows[-1][0] > self.high:  # appended since the walk began
            rows = [row for row in rows if row[0] <= self.high]
            self.after = self.high
        elif rows:
            self.after = rows[-1][0]
        return rows


def verify(conn: Connection, key: bytes | None = None, *, verifier: Verifier | Sequence[Verifier] | None = None,
           witness: FileWitness | None = None, every: int | None = None, workers: int | None = None) -> Report:
    """Check every event's hash against its stored content and its link to the one before it.

    With ``verifier`` (the checkpoints' public key, or the keys of a log whose key was rotated): every signed checkpoint's signature and that the
    log's first `size` events still hash to its Merkle root; with ``every``, that a checkpoint exists
    at each multiple of it after the first checkpoint; with ``witness``, the same for every checkpoint
    the witness holds (it remembers what the log was). With ``key`` (legacy HMAC), the HMAC
    checkpoints of migration 0003."""
    report = Report()
    if verifier is not None and not isinstance(verifier, Verifier) and not verifier:
        verifier = None
    want_leaves = verifier is not None
    checkpoints = {seq: (h, mac) for seq, h, mac in conn.execute("SELECT seq, hash, mac FROM checkpoints")} if key else {}
    wanted = frozenset(checkpoints)
    low, high, total = conn.execute("SELECT min(seq), max(seq), count(*) FROM events").fetchone()
    # A SQLite file is checked in ranges by several processes; a PostgreSQL store in one walk, by pages.
    path = conn.execute("PRAGMA database_list").fetchone()[2] if isinstance(conn, sqlite3.Connection) else None
    workers = workers or min(os.cpu_count() or 1, 4)
    if total and total >= _PARALLEL_FROM and workers > 1 and path:
        step = (high - low) // workers + 1
        bounds = [(low + i * step, min(high, low + (i + 1) * step - 1)) for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            ranges = list(pool.map(_check_range, [path] * workers, [b[0] for b in bounds], [b[1] for b in bounds],
                                   [wanted] * workers, [want_leaves] * workers))
    else:
        ranges = [_walk(_Pages(conn, low or 0, high or 0), wanted, want_leaves)]
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
    if verifier is not None:
        _check_tree(conn, report, b"".join(r.leaves for r in ranges), verifier, witness, every)
    report.problems.sort(key=lambda p: p[0])
    return report


def _check_tree(conn: Connection, report: Report, leaves: bytes, verifier: Verifier | Sequence[Verifier],
                witness: FileWitness | None, every: int | None) -> None:
    """The signed checkpoints in the store (and the witness's) against the Merkle tree of the events."""
    total = len(leaves) // 32
    try:
        stored = conn.execute("SELECT size, note FROM tree_checkpoints ORDER BY size").fetchall()
    except sqlite3.OperationalError:  # a log never opened by a gateway with migration 0006
        stored = []
    signed: list[tuple[str, Checkpoint]] = []
    for size, note in stored:
        try:
            checkpoint = open_checkpoint(note, verifier)
        except NoteError as error:
            report.problems.append((size, f"the signed checkpoint at {size} events does not verify: {error} "
                                          "(forged, or the log was regenerated with another key)"))
            continue
        if checkpoint.size != size:
            report.problems.append((size, f"the checkpoint filed at {size} events signs {checkpoint.size} (moved)"))
            continue
        signed.append(("store", checkpoint))
    report.checkpoints += len(signed)
    for note in witness.notes() if witness is not None else []:
        try:
            checkpoint = open_checkpoint(note, verifier)
        except NoteError as error:
            report.problems.append((0, f"the witness holds a checkpoint that does not verify with this public key: "
                                       f"{error} (the log, or this key, is not the one the witness saw)"))
            continue
        report.witnessed += 1
        signed.append(("witness", checkpoint))
    # One pass over the leaves: the root at every size a checkpoint vouches for.
    sizes = sorted({c.size for _, c in signed if c.size <= total})
    roots, tree, i = {}, Frontier(), 0
    for size in sizes:
        while tree.size < size:
            tree.append(leaves[i * 32:(i + 1) * 32])
            i += 1
        roots[size] = tree.root()
    seen: set[tuple[str, int]] = set()
    for where, checkpoint in signed:
        size = checkpoint.size
        if (where, size) in seen:
            continue
        seen.add((where, size))
        said = "the witness saw" if where == "witness" else "a signed checkpoint vouches for"
        if size > total:
            report.problems.append((total + 1, f"{said} {size} events, but the log holds {total} (it was cut, or "
                                               "rolled back to an older copy)"))
        elif roots[size] != checkpoint.root:
            report.problems.append((size, f"{said} the first {size} events with another Merkle root than they have "
                                          "now (history was rewritten)"))
        else:
            report.covered = max(report.covered, size)
    if every:
        present = [c.size for w, c in signed if w == "store"]
        if not present and total >= every:
            report.problems.append((every, f"no signed checkpoint, though one is due every {every} events and the log "
                                           f"holds {total} (deleted, or written without the signing key)"))
        elif present:
            have = set(present)
            for due in range((min(present) // every + 1) * every, total + 1, every):
                if due not in have:
                    report.problems.append((due, f"the signed checkpoint due at {due} events is missing (deleted)"))
