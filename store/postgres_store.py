"""The PostgreSQL audit store: one log, holds, votes and alerts shared by several gateways.

The shared code (store/audit_store.py, store/approvals.py, store/verify.py, tools/alerts.py) is
written once, in SQLite's dialect; `PgConnection` speaks it to PostgreSQL, translating the few
places the dialects differ (`translate`):

- ``?`` parameters become ``%s``;
- ``BEGIN IMMEDIATE`` (SQLite's write lock) becomes ``BEGIN`` plus a transaction-level advisory lock
  (`pg_advisory_xact_lock`, keyed by the schema): one writer at a time across every gateway, held
  until COMMIT or ROLLBACK, so reading the chain's end and appending after it is atomic; plain
  ``BEGIN`` (a reader's snapshot) becomes REPEATABLE READ;
- ``INSERT OR IGNORE`` becomes ``ON CONFLICT DO NOTHING``; ``json_extract(col, '$.key')`` becomes
  ``(col::json ->> 'key')``.

Rows answer by position and by column name, as sqlite3.Row does. Connections run in autocommit;
transactions are the explicit BEGIN ... COMMIT the shared code issues. Durability is PostgreSQL's
(``synchronous_commit`` on, the default): an append that returned is committed. A transaction of only
the guard's terminal events (events.FLUSHED_LATER) is an asynchronous commit instead (``SET LOCAL
synchronous_commit = off``): visible to every gateway at once, flushed by PostgreSQL's WAL writer
within three ``wal_writer_delay`` (600 ms by default); a server crash in between leaves the call
open, and it is closed as interrupted.

Holds: the `holds` table NOTIFYs ``bastion_holds`` with the hold id on every change
(store/pg_migrations.py). One listening connection per store wakes this process's waiters
(`hold_changed`), so a call held here and approved on another gateway runs at once.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import psycopg
from psycopg import conninfo

from bastion.store.audit_store import AuditStore
from bastion.store.checkpoints import FileWitness, HttpWitness, Signer
from bastion.store.errors import StoreError
from bastion.store.migrations import migrate
from bastion.store.pg_migrations import MIGRATIONS

# The advisory lock's first key ("Bast"); the second is the schema's hashtext, so two stores in
# two schemas of one database never wait for each other.
_LOCK_CLASS = 0x42617374
_WRITE_LOCK = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS}, hashtext(current_schema()))"
_JSON_EXTRACT = re.compile(r"json_extract\(([\w.]+), '\$\.(\w+)'\)")
_CHANNEL = "bastion_holds"


@functools.lru_cache(maxsize=512)
def translate(sql: str, with_params: bool = True) -> str:
    """SQLite's dialect, as the shared code writes it, in PostgreSQL's (see the module docstring)."""
    if with_params:
        sql = sql.replace("%", "%%").replace("?", "%s")
    sql = _JSON_EXTRACT.sub(r"(\1::json ->> '\2')", sql)
    if sql.startswith("INSERT OR IGNORE INTO "):
        sql = "INSERT INTO " + sql[len("INSERT OR IGNORE INTO "):] + " ON CONFLICT DO NOTHING"
    return sql


class Row(tuple[Any, ...]):
    """A row that answers by position and by column name, like sqlite3.Row."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


class PgConnection:
    """A psycopg connection spoken to in SQLite's dialect (the part of sqlite3.Connection the store uses)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        if sql == "BEGIN IMMEDIATE":
            self.raw.execute("BEGIN")
            return self.raw.execute(_WRITE_LOCK)
        if sql == "BEGIN":
            return self.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        if parameters:
            return self.raw.execute(translate(sql), tuple(parameters))
        return self.raw.execute(translate(sql, False))

    def executemany(self, sql: str, rows: Any) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(translate(sql), rows)

    def close(self) -> None:
        self.raw.close()

    def __del__(self) -> None:
        # As sqlite3 does: a store nobody closed (a CLI command's, at exit) closes its connections.
        raw = getattr(self, "raw", None)
        if raw is not None and not raw.closed:
            raw.close()


def connect(url: str, password: str | None = None) -> PgConnection:
    """A connection in autocommit, rows by name and position."""
    dsn = conninfo.make_conninfo(url, password=password) if password else url
    raw = psycopg.connect(dsn, autocommit=True, row_factory=_row_factory, connect_timeout=10,
                          application_name="bastion-audit")
    return PgConnection(raw)


class PostgresAuditStore(AuditStore):
    Error: ClassVar[type[Exception]] = psycopg.Error
    IntegrityError: ClassVar[type[Exception]] = psycopg.IntegrityError
    conn: PgConnection
    _reader: PgConnection

    def __init__(self, url: str, *, password: str | None = None, signer: Signer | None = None,
                 checkpoint_every: int = 1000, witness: FileWitness | HttpWitness | None = None,
                 sync: str = "before-run") -> None:
        super().__init__(signer=signer, checkpoint_every=checkpoint_every, witness=witness, sync=sync)
        self.url, self._password = url, password
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._waiters_lock = threading.Lock()
        self._versions: dict[str, int] = {}  # per hold, the notifications heard
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()
        self._closed = threading.Event()
        try:
            self.conn = connect(url, password)
        except psycopg.Error as error:
            raise StoreError(f"cannot open the audit store at {self.where()}: {_first_line(error)}") from error
        try:
            migrate(self.conn, MIGRATIONS, self.where())
            self._reader = connect(url, password)
        except BaseException as error:
            self.conn.close()
            if isinstance(error, psycopg.Error):
                raise StoreError(f"cannot open the audit store at {self.where()}: {_first_line(error)}") from error
            raise
        self._start_witness()

    def _connect(self) -> PgConnection:
        return connect(self.url, self._password)

    def _begin_write(self, durable: bool) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        if not durable:  # PostgreSQL's asynchronous commit: its WAL writer flushes it within 3 × wal_writer_delay
            self.conn.execute("SET LOCAL synchronous_commit = off")

    def _make_commit_durable(self) -> bool:
        self.conn.execute("SET LOCAL synchronous_commit = on")
        return True

    def where(self) -> str:
        """The URL without user or password: host, port and database."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if not host:
            host = str(conninfo.conninfo_to_dict(self.url).get("host", "") or "localhost")
        return f"postgresql://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"

    def unwritable(self) -> str | None:
        """Whether this login may insert events on a primary that accepts writes; writes nothing."""
        try:
            probe = connect(self.url, self._password)
            try:
                row = probe.execute(
                    "SELECT pg_is_in_recovery(), has_table_privilege(format('%I.events', current_schema()), 'INSERT')"
                ).fetchone()
            finally:
                probe.close()
        except psycopg.Error as error:
            return f"the audit store cannot be written: {_first_line(error)}"
        recovery, insert = row if row is not None else (False, False)
        if recovery:
            return "the audit store cannot be written: the PostgreSQL server is a read-only standby"
        if not insert:
            return "the audit store cannot be written: its login may not INSERT into `events` (see docs/audit.md, grants)"
        return None

    # -- waking waiters on a hold -----------------------------------------------------------------

    def listen(self) -> None:
        with self._waiters_lock:
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen_forever, name="bastion-audit-listen",
                                                  daemon=True)
                self._listener.start()
        self._listening.wait(10)  # else a waiter falls back to polling until it is

    def hold_version(self, hold_id: str) -> int:
        return self._versions.get(hold_id, 0)

    async def hold_changed(self, hold_id: str, timeout_s: float, seen: int) -> None:
        loop, woken = asyncio.get_running_loop(), asyncio.Event()
        entry = (loop, woken)
        with self._waiters_lock:
            if self._versions.get(hold_id, 0) != seen:
                return  # changed since the caller read it
            self._waiters.setdefault(hold_id, set()).add(entry)
        try:
            await asyncio.wait_for(woken.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            with self._waiters_lock:
                waiting = self._waiters.get(hold_id)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._waiters[hold_id]

    def _listen_forever(self) -> None:
        """LISTEN on a connection of its own; reconnect after a failure (waiters poll meanwhile)."""
        while not self._closed.is_set():
            try:
                listener = connect(self.url, self._password)
                try:
                    listener.execute(f"LISTEN {_CHANNEL}")
                    self._listening.set()
                    while not self._closed.is_set():
                        for note in listener.raw.notifies(timeout=1.0):
                            self._wake(note.payload)
                finally:
                    self._listening.clear()
                    listener.close()
            except psycopg.Error:
                self._closed.wait(1.0)

    def _wake(self, hold_id: str) -> None:
        with self._waiters_lock:
            self._versions[hold_id] = self._versions.get(hold_id, 0) + 1
            waiting = list(self._waiters.get(hold_id, ()))
        for loop, woken in waiting:
            try:
                loop.call_soon_threadsafe(woken.set)
            except RuntimeError:  # that loop has closed
                pass

    def close(self) -> None:
        self._closed.set()
        super().close()


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
