"""The PostgreSQL audit store as several gateways share it: chosen by `[audit] url`, one chain under
concurrent appends from several processes, held calls woken by NOTIFY from another process.

(The behaviour both backends share is tested on both in tests/test_store.py and
tests/test_approval_store.py.)"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from bastion.policy.approvals import ApprovalPolicy
from bastion.policy.errors import ConfigError
from bastion.policy.identity import Identity
from bastion.server import config as config_module
from bastion.store import events as ev
from bastion.store import open_store
from bastion.store.approvals import ApprovalStore, HoldStatus
from bastion.store.postgres_store import PostgresAuditStore, translate
from bastion.store.verify import verify
from tests.postgres_server import PgServer
from tests.store_backends import postgres_url

SPAWN = multiprocessing.get_context("spawn")
BASTION = str(Path(sys.executable).parent / "bastion")
ALICE = Identity("alice", frozenset({"dev"}))
BOB = Identity("bob", frozenset({"dba"}))
DBA = ApprovalPolicy(frozenset({"dba"}), ttl_s=600)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("audit", "says"), [
    ('kind = "postgres"', "chosen by `url"),
    ('path = "postgresql://bastion@db.internal/audit"', "a PostgreSQL store is `url"),
    ('url = "/var/lib/bastion/audit.db"', "for a SQLite file use `path`"),
    ('url = "postgresql://bastion:hunter2@db.internal/audit"', "put it in `password_env`"),
    ('url = "postgresql://db.internal/audit"\npath = "audit.db"', "not both"),
])
def test_a_postgres_store_is_named_by_url_and_anything_else_is_a_clear_error(tmp_path: Path, audit: str,
                                                                            says: str) -> None:
    with pytest.raises(ConfigError, match=says) as raised:
        config_module.load(_write(tmp_path, f"[audit]\n{audit}\n"))
    assert "hunter2" not in str(raised.value)


def test_the_sql_written_for_sqlite_is_spoken_to_postgres() -> None:
    assert translate("SELECT x FROM t WHERE a = ? AND b LIKE '5%'") == "SELECT x FROM t WHERE a = %s AND b LIKE '5%%'"
    assert translate("INSERT OR IGNORE INTO t VALUES (?)") == "INSERT INTO t VALUES (%s) ON CONFLICT DO NOTHING"
    assert translate("json_extract(r.identity, '$.subject') = ?") == "(r.identity::json ->> 'subject') = %s"


def _append_from_a_process(url: str, name: str, threads: int, per_thread: int) -> None:
    """One gateway process: several threads appending at once (so group commit batches them)."""
    import threading

    store = open_store(url)
    def one(t: int) -> None:
        for i in range(per_thread):
            store.append_many([{"type": ev.REQUESTED, "call_id": f"{name}-{t}-{i}", "text": f"SELECT {i}"},
                               {"type": ev.FINISHED, "call_id": f"{name}-{t}-{i}", "row_count": 1}])
    workers = [threading.Thread(target=one, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store.close()


def test_several_processes_appending_at_once_keep_one_chain_that_the_cli_verifies(
        pg_server: PgServer, pg_schema: str, tmp_path: Path) -> None:
    url = postgres_url(pg_server, pg_schema)
    PostgresAuditStore(url).close()  # migrated once, before the race
    processes = [SPAWN.Process(target=_append_from_a_process, args=(url, f"p{n}", 4, 25)) for n in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
        assert p.exitcode == 0
    store = PostgresAuditStore(url)
    try:
        events = list(store.iter_all())
        assert [e["seq"] for e in events] == list(range(1, 601))
        calls = [e["call_id"] for e in events if e["type"] == ev.REQUESTED]
        assert sorted(calls) == sorted(f"p{n}-{t}-{i}" for n in range(3) for t in range(4) for i in range(25))
        assert len({e["instance"] for e in events}) == 3
        report = verify(store.conn)
        assert report.ok and report.events == 600, report.problems
    finally:
        store.close()
    config = _write(tmp_path, f'[audit]\nurl = "{url}"\n')
    out = subprocess.run([BASTION, "audit", "verify", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "600 events" in out.stdout, out.stdout + out.stderr
    # An edited row is found by the same command (the store refuses UPDATE; its owner can drop the trigger).
    pg_server.execute(f'ALTER TABLE "{pg_schema}".events DISABLE TRIGGER events_append_only')
    pg_server.execute(f"UPDATE \"{pg_schema}\".events SET text = 'DROP TABLE x' WHERE seq = 300")
    out = subprocess.run([BASTION, "audit", "verify", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "300" in out.stdout + out.stderr, out.stdout + out.stderr


def _approve_when_told(url: str, hold_id: str, go: Any) -> None:
    store = ApprovalStore(open_store(url))
    if go.wait(60):
        store.decide(hold_id, BOB, True, "approved on another gateway")


@pytest.mark.anyio
async def test_a_hold_approved_in_another_process_wakes_its_waiter_by_notify_not_by_polling(
        pg_server: PgServer, pg_schema: str) -> None:
    url = postgres_url(pg_server, pg_schema)
    audit = PostgresAuditStore(url)
    approvals = ApprovalStore(audit)
    held = approvals.hold(call_id="c1", requester=ALICE, connection="prod", tool="sql_execute",
                          text="DELETE FROM orders WHERE id = 7", policy=DBA, rule="r")
    go = SPAWN.Event()
    approver = SPAWN.Process(target=_approve_when_told, args=(url, held.hold_id, go))
    approver.start()
    try:
        told_at: list[float] = []

        def tell(_: float) -> None:
            if not told_at:
                told_at.append(time.monotonic())
                go.set()

        with anyio.fail_after(60):
            # Polls only every 30 s: only a notification can end this wait sooner.
            after = await approvals.wait(held.hold_id, 60, poll_s=30, on_tick=tell, tick_s=0.0)
        woke = time.monotonic()
    finally:
        go.set()
        approver.join(30)
        audit.close()
    assert approver.exitcode == 0
    assert after.status is HoldStatus.APPROVED and after.votes[0].reason == "approved on another gateway"
    assert woke - told_at[0] < 30
