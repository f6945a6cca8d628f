"""Tampering with the log is found: edited, deleted, inserted, reordered, a cut tail, a re-forged
chain; a kill -9 mid-burst leaves a chain that verifies. Group commit shares transactions.
(The witness and the attacks it answers: tests/test_audit_witness.py.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from bastion.store import AuditStore, SqliteAuditStore
from bastion.store import events as ev
from bastion.store.audit_store import Connection
from bastion.store.checkpoints import Signer
from bastion.store.verify import verify
from tests.conftest import ROOT, requirement
from tests.store_backends import StoreAt

SIGNER = Signer.generate("audit.test.example/verify")  # the private half stays with the gateway
KEY = SIGNER.verifier  # verifying needs only the public key


def filled(tmp_path: Path, n: int = 10, **kw: object) -> tuple[SqliteAuditStore, Path]:
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path, signer=SIGNER, **kw)  # type: ignore[arg-type]
    for i in range(n):
        store.append({"type": ev.REQUESTED, "call_id": f"c{i}", "text": f"SELECT {i}"})
    return store, path


def tamper(path: Path, *statements: str) -> sqlite3.Connection:
    """What someone with write access to the file can do: drop the triggers and change rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS events_append_only_update")
    conn.execute("DROP TRIGGER IF EXISTS events_append_only_delete")
    for statement in statements:
        conn.execute(statement)
    return conn


def filled_at(at: StoreAt, n: int = 10, **kw: object) -> AuditStore:
    store = at.open(signer=SIGNER, **kw)
    for i in range(n):
        store.append({"type": ev.REQUESTED, "call_id": f"c{i}", "text": f"SELECT {i}"})
    return store


def tamper_at(at: StoreAt, store: AuditStore, *statements: str) -> Connection:
    """The same on either backend: on PostgreSQL, the owner disables the append-only triggers."""
    if at.kind == "sqlite":
        return tamper(Path(at.target), *statements)
    conn = store.connect()
    conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
    for statement in statements:
        conn.execute(statement)
    return conn


def test_an_untouched_log_verifies(tmp_path: Path) -> None:
    store, _ = filled(tmp_path)
    store.checkpoint()
    report = verify(store.conn, verifier=KEY, every=1000)
    assert report.ok and report.events == 10 and report.checkpoints == 1 and report.covered == 10


@requirement("inv:append-only")
@pytest.mark.parametrize(("statements", "seq", "says"), [
    (["UPDATE events SET text = 'SELECT 42' WHERE seq = 4"], 4, "edited"),
    (["DELETE FROM events WHERE seq = 5"], 6, "missing"),
    (["UPDATE events SET seq = 100 WHERE seq = 3", "UPDATE events SET seq = 3 WHERE seq = 7",
      "UPDATE events SET seq = 7 WHERE seq = 100"], 3, "link"),
    (["DELETE FROM events WHERE seq = 6",
      "INSERT INTO events (seq, event_id, type, time, prev_hash, hash) "
      "SELECT 6, 'forged', 'call.denied', '2026-01-01', hash, hash FROM events WHERE seq = 5"], 6, "edited"),
])
def test_tampering_is_found_at_the_first_broken_link(store_at: StoreAt, statements: list[str], seq: int,
                                                     says: str) -> None:
    conn = tamper_at(store_at, filled_at(store_at), *statements)
    report = verify(conn)
    assert not report.ok and report.problems[0][0] == seq and says in report.problems[0][1]


def test_a_cut_tail_is_found_only_with_the_public_key(store_at: StoreAt) -> None:
    store = filled_at(store_at)
    store.checkpoint()
    conn = tamper_at(store_at, store, "DELETE FROM events WHERE seq > 7")
    assert verify(conn).ok  # the remaining events still chain
    report = verify(conn, verifier=KEY)
    assert not report.ok and report.problems[0][0] == 8 and "vouches for 10 events, but the log holds 7" in report.problems[0][1]


def test_a_re_forged_chain_is_found_with_the_key(store_at: StoreAt) -> None:
    store = filled_at(store_at, 20, checkpoint_every=5)
    conn = tamper_at(store_at, store, "UPDATE events SET text = 'DROP TABLE evidence' WHERE seq = 2")
    # Re-forge: recompute every hash from the edited row on, as an attacker without the key can.
    prev = conn.execute("SELECT hash FROM events WHERE seq = 1").fetchone()[0]
    columns = list(ev.FIELDS)
    for seq, *values in conn.execute(f"SELECT seq, {', '.join(columns)} FROM events WHERE seq >= 2 ORDER BY seq").fetchall():
        row = dict(zip(columns, values))
        new = ev.chain_hash(prev, row)
        conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, new, seq))
        prev = new
    assert verify(conn).ok
    report = verify(conn, verifier=KEY)
    assert not report.ok and report.problems[0][0] == 5 and "rewritten" in report.problems[0][1]
    report = verify(conn, verifier=Signer.generate("audit.test.example/verify").verifier)
    assert not report.ok and "not signed by" in report.problems[0][1]


def test_legacy_hmac_checkpoints_are_still_checked_with_their_key(tmp_path: Path) -> None:
    """Logs written before migration 0006 hold HMAC checkpoints; `verify --key-env` still checks them."""
    _, path = filled(tmp_path)
    conn = sqlite3.connect(path, isolation_level=None)
    hash_7 = conn.execute("SELECT hash FROM events WHERE seq = 7").fetchone()[0]
    conn.execute("INSERT INTO checkpoints VALUES (7, ?, '2026-01-01', ?)", (hash_7, ev.checkpoint_mac(b"old", 7, hash_7)))
    assert verify(conn, b"old").ok and verify(conn, b"old").checkpoints == 1
    assert "forged, or another key" in verify(conn, b"other").problems[0][1]


def test_group_commit_shares_transactions_among_concurrent_appends(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    commits = []
    original = store._write

    def counting(batch):  # type: ignore[no-untyped-def]
        commits.append(len(batch))
        return original(batch)

    store._write = counting  # type: ignore[method-assign]
    threads = [threading.Thread(target=lambda i=i: [store.append({"type": ev.REQUESTED, "call_id": f"{i}-{j}"})
                                                     for j in range(50)]) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(commits) == 800 and len(commits) < 800
    assert verify(store.conn).ok and verify(store.conn).events == 800


@requirement("inv:record-before-run")
def test_kill_9_during_a_burst_leaves_no_partial_event_and_a_chain_that_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    script = (
        "import sys, threading\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from store import SqliteAuditStore\n"
        f"store = SqliteAuditStore({str(path)!r})\n"
        "def burst(i):\n"
        "    n = 0\n"
        "    while True:\n"
        "        store.append({'type': 'call.requested', 'call_id': f'{i}-{n}', 'text': 'x' * 500}); n += 1\n"
        "for i in range(8): threading.Thread(target=burst, args=(i,), daemon=True).start()\n"
        "print('go', flush=True)\n"
        "threading.Event().wait()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        # Killed once 200 events are durable (a hang guard, not a time: a loaded machine commits slower).
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as reader:
            deadline = time.monotonic() + 60
            while (durable := reader.execute("SELECT count(*) FROM events").fetchone()[0]) < 200:
                assert proc.poll() is None and time.monotonic() < deadline, f"the burst stalled at {durable} events"
                time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    report = verify(sqlite3.connect(path))
    assert report.ok and report.events >= durable  # nothing seen committed was lost


@pytest.mark.parametrize("where", [3, 17])
def test_a_large_log_is_checked_in_parallel_ranges_that_are_linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   where: int) -> None:
    from bastion.store import verify as verify_module

    monkeypatch.setattr(verify_module, "_PARALLEL_FROM", 10)
    _, path = filled(tmp_path, 20)
    conn = sqlite3.connect(path)
    assert verify(conn, workers=2).ok
    conn = tamper(path, f"DELETE FROM events WHERE seq = {where}")
    report = verify(conn, workers=2)
    assert not report.ok and report.problems[0][0] == where + 1


def test_a_value_the_column_stores_otherwise_still_verifies(store_at: StoreAt) -> None:
    """duration_ms is REAL: an int given to append is stored as a float and hashed as one."""
    store = store_at.open(signer=SIGNER, checkpoint_every=2)
    store.append({"type": ev.FINISHED, "call_id": "c", "duration_ms": 5, "row_count": 1, "truncated": False})
    store.append({"type": ev.FINISHED, "call_id": "d", "duration_ms": 2.5})
    report = verify(store.conn, verifier=KEY, every=2)
    assert report.ok and report.covered == 2, report.problems



class _Counting:
    """A connection that remembers how many rows each query returned."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.returned: list[int] = []

    def execute(self, sql: str, parameters: tuple[object, ...] = ()) -> object:
        rows = self.conn.execute(sql, parameters).fetchall()
        self.returned.append(len(rows))
        return _Rows(rows)


class _Rows(list):  # type: ignore[type-arg]
    def fetchall(self) -> list[object]:
        return self

    def fetchone(self) -> object:
        return self[0] if self else None


@pytest.mark.parametrize("where", [4, 11])
def test_one_walk_reads_the_log_a_bounded_page_at_a_time(store_at: StoreAt, monkeypatch: pytest.MonkeyPatch,
                                                         where: int) -> None:
    """A large PostgreSQL log is verified in bounded memory: no query returns more than a page (psycopg
    would otherwise hold the whole log at once), and the pages still link (a break found in any)."""
    from bastion.store import verify as verify_module

    monkeypatch.setattr(verify_module, "_PAGE", 3)
    store = filled_at(store_at, 13)
    counting = _Counting(store.conn)
    report = verify(counting, verifier=KEY)  # type: ignore[arg-type]
    assert report.ok and report.events == 13, report.problems
    assert max(counting.returned) == 3 and sum(counting.returned) >= 13
    assert [row[0] for row in verify_module._Pages(store.conn, 1, 5).fetchmany(10)] == [1, 2, 3, 4, 5]  # as begun
    conn = tamper_at(store_at, store, f"DELETE FROM events WHERE seq = {where}")
    report = verify(conn)
    assert not report.ok and report.problems[0][0] == where + 1 and report.events == 12
