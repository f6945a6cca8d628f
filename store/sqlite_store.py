"""The SQLite audit store (the embedded default): WAL, append-only, hash-chained.

Writes are serialised by a lock and committed with ``synchronous=FULL``, so an append that has
returned is on disk: `call.requested` is durable before anything runs.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from store import events as ev
from store.errors import StoreError
from store.migrations import MIGRATIONS


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class SqliteAuditStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.instance = uuid.uuid4().hex[:16]
        self._registered = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot open the audit store at {self.path}: {error}") from error

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {row[0] for row in self.db.execute("SELECT name FROM _migrations").fetchall()}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in sql.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, now_iso()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- writing -------------------------------------------------------------------------------

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append one event durably; returns it with event_id, time, seq and hash filled in."""
        event = dict(event)
        event.setdefault("event_id", uuid.uuid4().hex)
        event.setdefault("time", now_iso())
        event.setdefault("instance", self.instance)
        with self._lock:
            try:
                conn = self.db.conn
                conn.execute("BEGIN IMMEDIATE")  # the write lock, across processes sharing the file
                try:
                    if not self._registered:
                        conn.execute("INSERT INTO instances VALUES (?, ?, ?, ?)",
                                     (self.instance, socket.gethostname(), os.getpid(), now_iso()))
                    # Read the chain's end inside the lock: another process may have appended.
                    last = conn.execute("SELECT hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
                    # The chain covers the row exactly as stored, so a verifier needs nothing but the table.
                    row = {k: _column(k, event.get(k)) for k in ev.FIELDS}
                    row["prev_hash"] = last[0] if last else ev.GENESIS
                    row["hash"] = ev.chain_hash(row["prev_hash"], row)
                    cursor = conn.execute(
                        f"INSERT INTO events ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                        tuple(row.values()),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise StoreError(f"cannot write the audit store: {error}") from error
            self._registered = True
            event["prev_hash"], event["hash"], event["seq"] = row["prev_hash"], row["hash"], cursor.lastrowid
        return event

    def close_interrupted(self) -> list[str]:
        """Mark calls left without a terminal event by a gateway process that is gone as interrupted
        (run at start-up). Calls of a live process sharing this log are left alone."""
        live = {row[0] for row in self.db.execute("SELECT id, host, pid FROM instances").fetchall()
                if row[1] == socket.gethostname() and _alive(row[2]) and row[0] != self.instance}
        rows = self.db.execute(
            f"SELECT call_id, instance FROM events WHERE type = ? AND call_id NOT IN "
            f"(SELECT call_id FROM events WHERE type IN ({', '.join('?' for _ in ev.TERMINAL)})) ORDER BY seq",
            (ev.REQUESTED, *ev.TERMINAL)).fetchall()
        open_calls = [call_id for call_id, instance in rows if instance not in live]
        for call_id in open_calls:
            self.append({"type": ev.INTERRUPTED, "call_id": call_id,
                         "error": {"code": "interrupted", "message": "the gateway stopped before the call ended"}})
        return open_calls

    # -- reading -------------------------------------------------------------------------------

    def open_calls(self) -> list[str]:
        placeholders = ", ".join("?" for _ in ev.TERMINAL)
        rows = self.db.execute(
            f"SELECT call_id FROM events WHERE type = ? AND call_id NOT IN "
            f"(SELECT call_id FROM events WHERE type IN ({placeholders})) ORDER BY seq",
            (ev.REQUESTED, *ev.TERMINAL),
        ).fetchall()
        return [r[0] for r in rows]

    def tail(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM events ORDER BY seq DESC LIMIT ?", (limit,))
        return list(reversed(rows))

    def after(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))

    def call(self, call_id: str) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM events WHERE call_id = ? ORDER BY seq", (call_id,))

    def iter_all(self) -> Iterator[dict[str, Any]]:
        seq = 0
        while batch := self.after(seq):
            yield from batch
            seq = batch[-1]["seq"]

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        try:
            return [_decode(row) for row in self.db.query(sql, params)]
        except sqlite3.Error as error:
            raise StoreError(f"cannot read the audit store: {error}") from error

    def close(self) -> None:
        self.db.conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


def _column(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in ev.JSON_FIELDS:
        return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    if isinstance(value, bool):
        return int(value)
    return value


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for name in ev.JSON_FIELDS:
        if row.get(name) is not None:
            row[name] = json.loads(row[name])
    if row.get("truncated") is not None:
        row["truncated"] = bool(row["truncated"])
    return row
