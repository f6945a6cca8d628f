"""The SQLite audit store (the embedded default): one file, WAL, append-only, hash-chained.

Writes are serialised by SQLite's write lock (``BEGIN IMMEDIATE``, across processes sharing the
file) and committed with ``synchronous=FULL``, so an append that has returned is on disk:
`call.requested` is durable before anything runs. A transaction of only the guard's terminal events
(events.FLUSHED_LATER) commits with ``synchronous=NORMAL`` instead: in the WAL, so a killed gateway
loses nothing, and fsynced by a flusher thread within events.FLUSH_S (or at once by the next FULL
commit, whose fsync covers the whole WAL). The log itself is store/audit_store.py's.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import ClassVar

from bastion.store import events as ev
from bastion.store.audit_store import AuditStore
from bastion.store.checkpoints import FileWitness, HttpWitness, Signer
from bastion.store.errors import StoreError
from bastion.store.migrations import MIGRATIONS, migrate


class SqliteAuditStore(AuditStore):
    full_text: ClassVar[bool] = True
    Error: ClassVar[type[Exception]] = sqlite3.Error
    IntegrityError: ClassVar[type[Exception]] = sqlite3.IntegrityError
    conn: sqlite3.Connection
    _reader: sqlite3.Connection

    def __init__(self, path: str | Path, *, signer: Signer | None = None, checkpoint_every: int = 1000,
                 witness: FileWitness | HttpWitness | None = None, sync: str = "before-run") -> None:
        super().__init__(signer=signer, checkpoint_every=checkpoint_every, witness=witness, sync=sync)
        self.path = Path(path)
        self._full = True  # the writer connection's synchronous setting
        self._flush = threading.Condition()
        self._unflushed_at: float | None = None  # when the oldest commit not yet fsynced was made
        self._flusher: threading.Thread | None = None
        self._flusher_idle = False  # waiting for a commit to need a flush (a notify), not for a due time
        self._closing = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            migrate(self.conn, MIGRATIONS, self.where())
            # Reads get their own connection: on the writer's, a read could land inside another
            # thread's write transaction. WAL lets both run.
            self._reader = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            self._reader.row_factory = sqlite3.Row
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot open the audit store at {self.path}: {error}") from error
        self._start_witness()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=FULL")  # per connection: a change that returned is on disk
        return conn

    def where(self) -> str:
        return str(self.path)

    def _begin_write(self, durable: bool) -> None:
        if durable != self._full:  # outside a transaction: SQLite ignores it inside one
            self.conn.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            self._full = durable
        self.conn.execute("BEGIN IMMEDIATE")

    def _committed(self, durable: bool, now: bool) -> None:
        if now and not durable:
            self.flush()
        with self._flush:
            if durable or now:  # this fsync of the WAL covered every earlier commit too
                self._unflushed_at = None
                return
            if self._unflushed_at is None:
                self._unflushed_at = time.monotonic()
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever, name="bastion-audit-flush", daemon=True)
                self._flusher.start()
            elif self._flusher_idle:  # a busy flusher wakes on its own clock: no thread wake-up per call
                self._flush.notify()

    def _flush_forever(self) -> None:
        while True:
            with self._flush:
                if self._unflushed_at is None:  # nothing to flush: idle until a commit (or close) says so
                    if self._closing:
                        return
                    self._flusher_idle = True
                    self._flush.wait()
                    self._flusher_idle = False
                    continue
                due = self._unflushed_at + ev.FLUSH_S
                if time.monotonic() < due and not self._closing:
                    self._flush.wait(due - time.monotonic())
                    continue  # a FULL commit may have flushed it meanwhile: look again
                self._unflushed_at = None  # a commit from here on sets it again
            self.flush()

    def unflushed(self) -> bool:
        """Whether a commit is waiting for its fsync."""
        with self._flush:
            return self._unflushed_at is not None

    def flush(self) -> None:
        """fsync the WAL: every commit made so far is on disk. A missing WAL was checkpointed into the
        database file, which SQLite fsyncs after a checkpoint."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._flush:
            self._closing = True
            self._unflushed_at = None
            self._flush.notify()
        self.flush()
        super().close()

    def unwritable(self) -> str | None:
        """Takes the write lock for a moment on a connection of its own and writes nothing."""
        try:
            probe = sqlite3.connect(self.path, timeout=1, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
            finally:
                probe.close()
        except sqlite3.Error as error:
            return f"the audit store cannot be written: {error}"
        return None
