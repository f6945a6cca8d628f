"""The SQLite audit store (the embedded default): one file, WAL, append-only, hash-chained.

Writes are serialised by SQLite's write lock (``BEGIN IMMEDIATE``, across processes sharing the
file) and committed with ``synchronous=FULL``, so an append that has returned is on disk:
`call.requested` is durable before anything runs. The log itself is store/audit_store.py's.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import ClassVar

import sqlite_utils

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
                 witness: FileWitness | HttpWitness | None = None) -> None:
        super().__init__(signer=signer, checkpoint_every=checkpoint_every, witness=witness)
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self.db = sqlite_utils.Database(self.conn)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            migrate(self.conn, MIGRATIONS, self.where())
            # Reads get their own connection: on the writer's, a read (sqlite-utils opens a
            # savepoint) could interleave with another thread's transaction. WAL lets both run.
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
