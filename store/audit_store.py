"""The audit store's shared logic, whatever the database: the append-only, hash-chained log, its
group commit, signed checkpoints over a Merkle tree, start-up recovery and reading.

A backend (store/sqlite_store.py, store/postgres_store.py) opens the connections and migrates the
schema; everything else is here, written once in SQLite's dialect of SQL (``?`` parameters,
``BEGIN IMMEDIATE`` for the write lock, ``INSERT OR IGNORE``, ``json_extract``), which the
PostgreSQL backend's connection translates (store/postgres_store.py's `PgConnection`). One write transaction at a time
holds the write lock (SQLite's ``BEGIN IMMEDIATE``; PostgreSQL's transaction-level advisory lock),
reads the chain's end, and appends: several processes sharing one store keep one chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Iterator, Protocol, Sequence, TypeVar, cast

import anyio

from bastion.store import events as ev
from bastion.store.checkpoints import FileWitness, HttpWitness, Signer, checkpoint_text
from bastion.store.errors import StoreError
from bastion.store.merkle import Frontier, leaf_hash


SYNC_MODES = ("before-run", "every-event")

_INSERT = (f"INSERT INTO events (seq, {', '.join(ev.FIELDS)}, prev_hash, hash) "
           f"VALUES ({', '.join('?' for _ in range(len(ev.FIELDS) + 3))})")


E = TypeVar("E", bound=ev.AuditEvent)

# A process on another host is live while its heartbeat is younger than this (it beats every 15 s).
HEARTBEAT_LIVE_S = 60.0


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _ago(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")


class Connection(Protocol):
    """The part of a DB-API connection the shared code uses (sqlite3's, or store/postgres_store.py's `PgConnection`)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Any, /) -> Any: ...

    def close(self) -> None: ...


class AuditStore:
    """The log over one database. A backend sets ``conn`` (the writer's connection), ``_reader`` (one
    for reads, so a read never interleaves with another thread's transaction) and the two error
    classes, and implements `connect`, `unwritable` and `where`."""

    full_text: ClassVar[bool] = False  # a full-text index over requested calls (store/search.py)
    Error: ClassVar[type[Exception]]  # the driver's error base class
    IntegrityError: ClassVar[type[Exception]]  # a constraint refused a row
    conn: Connection
    _reader: Connection

    def __init__(self, *, signer: Signer | None = None, checkpoint_every: int = 1000,
                 witness: FileWitness | HttpWitness | None = None, sync: str = "before-run") -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync is one of {', '.join(SYNC_MODES)}, not {sync!r}")
        # "before-run": a transaction of only the guard's terminal events (ev.FLUSHED_LATER) is
        # fsynced soon after it commits rather than before the call goes on; "every-event": always before.
        self.flush_later = sync == "before-run"
        self._queue_lock = threading.Lock()  # guards the queue and who is writing
        self._write_lock = threading.Lock()  # one transaction at a time on the shared connection
        self._read_lock = threading.Lock()  # one query at a time on the reader
        self._queue: list[_Ticket] = []
        self._writing = False
        # Signed checkpoints: with a signer, a Merkle tree over the events (its O(log n) frontier
        # kept here, checked against the log's end at each transaction) and a checkpoint signed at
        # every multiple of `checkpoint_every` events, each also appended to the witness.
        self._signer = signer
        self.checkpoint_every = checkpoint_every
        self._witness = witness
        self._tree: Frontier | None = None  # the tree of events 1..size, as of the last transaction
        self._tree_hash = ev.GENESIS  # the chain hash of event `size`, to tell the cache is still ours
        self._witnessed = 0  # the largest checkpoint size this process has appended to the witness
        self._signed = 0  # the largest checkpoint size this process has signed
        self.instance = uuid.uuid4().hex[:16]
        self._registered = False
        self._others: list[Connection] = []  # connections handed out by `connect`

    def _start_witness(self) -> None:
        """Once the backend is open: where the witness is (the store's latest checkpoint if it cannot say)."""
        signer, witness = self._signer, self._witness
        if signer is not None and witness is not None:
            witnessed = witness.last_size(signer.verifier)
            if witnessed is None:  # a witness it cannot read back: assume it has what the store has
                row = self.read("SELECT max(size) FROM tree_checkpoints")[0][0]
                witnessed = row or 0
            self._witnessed = witnessed

    def connect(self) -> Connection:
        """A new connection to this store, speaking SQLite's dialect (store/approvals.py's own);
        `close` closes it too."""
        conn = self._connect()
        self._others.append(conn)
        return conn

    def _connect(self) -> Connection:
        raise NotImplementedError

    def where(self) -> str:
        """The store's location for messages: a file path, or a URL without its password."""
        raise NotImplementedError

    def unwritable(self) -> str | None:
        """Why an append would fail now (read-only, locked, no privilege), or None: a readiness probe
        that writes nothing."""
        raise NotImplementedError

    # Waiting on a hold (store/approvals.py): a backend that is told of changes (PostgreSQL, by
    # NOTIFY from any gateway) wakes its waiters at once; this one simply waits out the poll.

    def listen(self) -> None:
        """Start hearing about changed holds (idempotent; returns once listening)."""

    def hold_version(self, hold_id: str) -> int:
        """How many changes of ``hold_id`` this process has heard of: read it before reading the
        hold, give it to `hold_changed`, and a change in between is not missed."""
        return 0

    async def hold_changed(self, hold_id: str, timeout_s: float, seen: int) -> None:
        """Return after ``timeout_s``, or as soon as a change of ``hold_id`` beyond ``seen`` is heard."""
        await anyio.sleep(timeout_s)

    # -- writing -------------------------------------------------------------------------------

    def append(self, event: E) -> E:
        """Append one event durably; returns it with event_id, time, seq and hash filled in."""
        return cast(E, self.append_many([event])[0])  # a copy of ``event``: the same kind

    def append_many(self, events: Sequence[ev.AuditEvent]) -> list[ev.AuditEvent]:
        """Append ``events`` durably, in order; returns them with event_id, time, seq and hash.

        Group commit: concurrent callers queue their events; whichever finds no write in progress
        becomes the writer and writes everything queued, a transaction (one fsync) per batch, until
        the queue is empty; the others wait for their own events to be written. No call returns
        before its events are durable.
        """
        tickets = [_Ticket(self._prepare(event)) for event in events]
        with self._queue_lock:
            self._queue.extend(tickets)
            writer = not self._writing
            self._writing = True
        while writer:
            with self._queue_lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._writing = False
                    break
            try:
                with self._write_lock:
                    self._write(batch)
            except BaseException as error:  # never leave a waiter hanging
                for waiting in batch:
                    if not waiting.ready.is_set():
                        waiting.error = StoreError(f"cannot write the audit store: {error}")
                        waiting.ready.set()
                with self._queue_lock:
                    self._writing = False
                raise
        for ticket in tickets:
            ticket.ready.wait()
            if ticket.error is not None:
                raise ticket.error
        return [ticket.event for ticket in tickets]

    def append_in(self, conn: Connection, events: Sequence[ev.AuditEvent]) -> list[ev.AuditEvent]:
        """Append ``events`` inside a write transaction the caller holds on ``conn``, its own
        connection to this store's file, opened with ``BEGIN IMMEDIATE`` (store/approvals.py: a
        hold's state change and its event commit together or not at all).

        Returns the events with event_id, time, seq and hash filled in; they are durable once the
        caller commits, and never happened if it rolls back. Bypasses the group commit.
        """
        prepared = [self._prepare(event) for event in events]
        for event, row in zip(prepared, self._insert(conn, prepared)):
            event["seq"], event["prev_hash"], event["hash"] = row[0], row[-2], row[-1]
        return prepared

    def _prepare(self, event: ev.AuditEvent) -> ev.AuditEvent:
        event = event.copy()
        event.setdefault("event_id", uuid.uuid4().hex)
        event.setdefault("time", now_iso())
        event.setdefault("instance", self.instance)
        return event

    def _insert(self, conn: Connection, events: list[ev.AuditEvent]) -> list[tuple[Any, ...]]:
        """Chain ``events`` onto the log's end and insert them, inside the caller's write transaction."""
        if not self._registered:
            now = now_iso()
            conn.execute("INSERT OR IGNORE INTO instances (id, host, pid, started, seen) VALUES (?, ?, ?, ?, ?)",
                         (self.instance, socket.gethostname(), os.getpid(), now, now))
        # Read the chain's end inside the lock: another process may have appended.
        last = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        prev, seq = (last[1], last[0]) if last else (ev.GENESIS, 0)
        tree = self._tree_at(conn, seq, prev) if self._signer else None
        rows, checkpoints = [], []
        nodes: list[tuple[int, int, bytes]] = []
        every = self.checkpoint_every
        sha256 = hashlib.sha256
        for event in events:
            # The chain covers the row exactly as stored, so a verifier needs nothing but the table;
            # the same bytes are the event's leaf in the Merkle tree.
            values = [_column(k, event.get(k)) for k in ev.FIELDS]
            try:
                data = ev.canonical(values)
            except UnicodeEncodeError:  # a client's lone surrogate: stored as U+FFFD, never failing the batch
                values = [_encodable(v) for v in values]
                data = ev.canonical(values)
            if b"\\u0000" in data:  # a NUL, which PostgreSQL's text cannot hold: U+FFFD on every backend
                values = [_encodable(v) for v in values]
                data = ev.canonical(values)
            hash_ = sha256(prev.encode() + b"\n" + data).hexdigest()
            seq += 1
            rows.append((seq, *values, prev, hash_))
            prev = hash_
            if tree is not None:
                tree.append(leaf_hash(data), nodes)
                if tree.size % every == 0:  # a checkpoint exactly at each multiple: verify requires them
                    checkpoints.append(self._signed_row(tree, hash_))
        conn.executemany(_INSERT, rows)
        if checkpoints:
            conn.executemany("INSERT OR IGNORE INTO tree_checkpoints VALUES (?, ?, ?, ?, ?, ?)", checkpoints)
        if nodes:
            _store_nodes(conn, nodes)
        if tree is not None:
            self._tree, self._tree_hash = tree, prev
        return rows

    def _signed_row(self, tree: Frontier, chain_hash: str) -> tuple[Any, ...]:
        assert self._signer is not None
        root = tree.root()
        note = self._signer.sign(checkpoint_text(self._signer.name, tree.size, root))
        self._signed = max(self._signed, tree.size)
        return (tree.size, root.hex(), chain_hash, json.dumps(tree.to_json()), now_iso(), note)

    def _tree_at(self, conn: Connection, size: int, chain_hash: str) -> Frontier:
        """The Merkle frontier of events 1..size, inside the caller's write transaction: the cached one
        when the log still ends where this process left it; else caught up from the cache (another
        process appended) or from the latest checkpoint's frontier (a rolled-back transaction, a
        fresh start), reading only the events after it. The cache is replaced before the caller
        commits; if it rolls back instead, the next transaction finds the cache ahead of the log (or
        off its chain) and resumes from a checkpoint."""
        tree = self._tree
        if tree is not None and tree.size == size and self._tree_hash == chain_hash:
            return tree.copy()
        start: tuple[Frontier, str] | None = None
        if tree is not None and tree.size < size:
            row = conn.execute("SELECT hash FROM events WHERE seq = ?", (tree.size,)).fetchone() if tree.size else None
            if (row[0] if row else ev.GENESIS) == self._tree_hash:
                start = (tree.copy(), self._tree_hash)
        if start is None:
            for cp_size, cp_hash, frontier in conn.execute(
                    "SELECT c.size, c.chain_hash, c.frontier FROM tree_checkpoints c JOIN events e ON e.seq = c.size "
                    "AND e.hash = c.chain_hash WHERE c.size <= ? ORDER BY c.size DESC LIMIT 1", (size,)):
                start = (Frontier.from_json(cp_size, json.loads(frontier)), cp_hash)
        tree = start[0] if start else Frontier()
        cursor = conn.execute(f"SELECT {', '.join(ev.FIELDS)} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
                              (tree.size, size))
        while batch := cursor.fetchmany(10_000):
            nodes: list[tuple[int, int, bytes]] = []
            for values in batch:
                tree.append(leaf_hash(ev.canonical(values)), nodes)
            _store_nodes(conn, nodes)
        return tree

    def _witness_pending(self, conn: Connection) -> None:
        """Append the committed checkpoints this process signed and has not witnessed yet (read back
        from the table, so a checkpoint of a transaction that rolled back never reaches it)."""
        if self._witness is None or self._signed <= self._witnessed:
            return
        rows = conn.execute("SELECT size, time, note FROM tree_checkpoints WHERE size > ? AND size <= ? ORDER BY size",
                            (self._witnessed, self._signed)).fetchall()
        if rows:
            self._witness.append([(t, note) for _, t, note in rows])
            self._witnessed = rows[-1][0]
        else:
            self._witnessed = self._signed

    def _write(self, batch: list[_Ticket]) -> None:
        conn = self.conn
        durable = not self.flush_later or any(ticket.event.get("type") not in ev.FLUSHED_LATER for ticket in batch)
        try:
            self._begin_write(durable)  # the write lock, across processes sharing the store
            try:
                signed = self._signed
                rows = self._insert(conn, [ticket.event for ticket in batch])
                # A checkpoint signed here goes to the witness next: on disk first, with every event it covers.
                checkpointed = self._signed > signed
                if checkpointed and not durable:
                    durable = self._make_commit_durable()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except self.Error as error:
            failure = StoreError(f"cannot write the audit store: {error}")
            for ticket in batch:
                ticket.error = failure
                ticket.ready.set()
            return
        self._registered = True
        self._committed(durable, checkpointed)
        witnessed: StoreError | None = None
        try:
            self._witness_pending(conn)
        except (StoreError, self.Error) as error:  # durable, but unwitnessed: fail closed
            witnessed = error if isinstance(error, StoreError) else StoreError(f"cannot read the checkpoints: {error}")
        for ticket, row in zip(batch, rows):
            ticket.event["seq"], ticket.event["prev_hash"], ticket.event["hash"] = row[0], row[-2], row[-1]
            ticket.error = witnessed
            ticket.ready.set()

    def _begin_write(self, durable: bool) -> None:
        """Open the write transaction on ``conn``; ``durable``: its COMMIT returns once on disk, else
        once committed (the backend makes it durable soon after, in `_committed`)."""
        self.conn.execute("BEGIN IMMEDIATE")

    def _make_commit_durable(self) -> bool:
        """Make the open write transaction's COMMIT durable after all; False when the backend cannot
        inside a transaction (then `_committed` makes it durable before the caller goes on)."""
        return False

    def _committed(self, durable: bool, now: bool) -> None:
        """After each group-commit transaction (under the write lock); ``now``: a commit that was not
        durable must be on disk before this returns."""

    def checkpoint(self) -> int | None:
        """Sign a checkpoint at the end of the log now (at shutdown, or `bastion audit checkpoint`) and
        witness it; the tree size it vouches for, or None without a signing key or events."""
        if self._signer is None:
            return None
        with self._write_lock:
            conn = self.conn
            self._begin_write(True)
            try:
                last = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
                if last:
                    tree = self._tree_at(conn, last[0], last[1])
                    conn.execute("INSERT OR IGNORE INTO tree_checkpoints VALUES (?, ?, ?, ?, ?, ?)",
                                 self._signed_row(tree, last[1]))
                    self._tree, self._tree_hash = tree, last[1]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._committed(True, False)
            self._witness_pending(conn)
        return last[0] if last else None

    def close_interrupted(self) -> list[str]:
        """Mark calls left without a terminal event by a gateway process that is gone as interrupted
        (run at start-up). Calls of a live process sharing this log are left alone: on this host, a
        process whose pid is alive; on another host (a replica sharing a PostgreSQL store), one whose
        `heartbeat` is recent."""
        host, recent = socket.gethostname(), _ago(HEARTBEAT_LIVE_S)
        live = {id_ for id_, on, pid, seen in self.read("SELECT id, host, pid, seen FROM instances")
                if id_ != self.instance and (_alive(pid) if on == host else (seen or "") >= recent)}
        rows = self.read(
            f"SELECT call_id, instance FROM events WHERE type = ? AND call_id NOT IN "
            f"(SELECT call_id FROM events WHERE type IN ({', '.join('?' for _ in ev.TERMINAL)})) ORDER BY seq",
            (ev.REQUESTED, *ev.TERMINAL))
        open_calls = [call_id for call_id, instance in rows if instance not in live]
        for call_id in open_calls:
            self.append(ev.CallInterrupted(type=ev.INTERRUPTED, call_id=call_id, error={
                "code": "interrupted", "message": "the gateway stopped before the call ended"}))
        return open_calls

    def heartbeat(self) -> None:
        """Say this process is alive (a gateway calls it every few seconds): another host's gateway
        starting up leaves this one's open calls alone while its heartbeat is recent."""
        if self._registered:
            with self._write_lock:
                self.conn.execute("UPDATE instances SET seen = ? WHERE id = ?", (now_iso(), self.instance))

    @contextmanager
    def write_transaction(self, conn: Connection, what: str) -> Iterator[Connection]:
        """One write transaction on ``conn`` (one of this store's connections, used by one thread at a
        time): ``BEGIN IMMEDIATE`` (the write lock, across processes) … COMMIT, or ROLLBACK on any
        error; a database error becomes a StoreError that says it could not write ``what``."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except self.Error as error:
            raise StoreError(f"cannot write {what}: {error}") from error
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as error:
            conn.execute("ROLLBACK")
            if isinstance(error, self.Error):
                raise StoreError(f"cannot write {what}: {error}") from error
            raise

    # -- reading -------------------------------------------------------------------------------

    def open_calls(self) -> list[str]:
        placeholders = ", ".join("?" for _ in ev.TERMINAL)
        rows = self.read(
            f"SELECT call_id FROM events WHERE type = ? AND call_id NOT IN "
            f"(SELECT call_id FROM events WHERE type IN ({placeholders})) ORDER BY seq",
            (ev.REQUESTED, *ev.TERMINAL),
        )
        return [r[0] for r in rows]

    def tail(self, limit: int = 20) -> list[ev.StoredEvent]:
        rows = self._query("SELECT * FROM events ORDER BY seq DESC LIMIT ?", (limit,))
        return list(reversed(rows))

    def after(self, seq: int, limit: int = 1000) -> list[ev.StoredEvent]:
        return self._query("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))

    def session(self, session: str) -> list[ev.StoredEvent]:
        """The `call.requested` events of one session, oldest first."""
        return self._query("SELECT * FROM events WHERE type = 'call.requested' AND session = ? ORDER BY seq", (session,))

    def call(self, call_id: str) -> list[ev.StoredEvent]:
        return self._query("SELECT * FROM events WHERE call_id = ? ORDER BY seq", (call_id,))

    def iter_all(self) -> Iterator[ev.StoredEvent]:
        seq = 0
        while batch := self.after(seq):
            yield from batch
            seq = batch[-1]["seq"]

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of a read-only query, on the reader connection."""
        try:
            with self._read_lock:
                return self._reader.execute(sql, params).fetchall()
        except self.Error as error:
            raise StoreError(f"cannot read the audit store: {error}") from error

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[ev.StoredEvent]:
        return [_decode(dict(row)) for row in self.read(sql, params)]

    def close(self) -> None:
        for conn in (*self._others, self._reader, self.conn):
            conn.close()
        self._others.clear()


@dataclass
class _Ticket:
    """One queued append: the event, and how its group commit ended."""

    event: ev.AuditEvent
    ready: threading.Event = field(default_factory=threading.Event)
    error: StoreError | None = None


def _store_nodes(conn: Connection, nodes: list[tuple[int, int, bytes]]) -> None:
    conn.executemany("INSERT OR IGNORE INTO tree_nodes VALUES (?, ?, ?)", [(lv, i, h.hex()) for lv, i, h in nodes])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


def _encodable(value: Any) -> Any:
    """A string UTF-8 and every backend can hold: surrogate pairs joined, lone surrogates and NULs
    replaced by U+FFFD (JSON-valued columns keep NUL escaped as \\u0000, which any text column holds)."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")
    return value


def _column(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in ev.JSON_FIELDS:
        return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    if isinstance(value, bool):
        return int(value)
    if name == "duration_ms":  # a REAL column: an int would read back as 5.0 and no longer hash as written
        return float(value)
    return value


def _decode(row: dict[str, Any]) -> ev.StoredEvent:
    for name in ev.JSON_FIELDS:
        if row.get(name) is not None:
            row[name] = json.loads(row[name])
    if row.get("truncated") is not None:
        row["truncated"] = bool(row["truncated"])
    return cast(ev.StoredEvent, row)  # the row has every column, as StoredEvent says
