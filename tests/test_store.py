"""The SQLite audit store: append-only, hash-chained, durable, and closes what a crash left open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bastion.store import SqliteAuditStore, StoreError
from bastion.store import events as ev
from tests.conftest import requirement


@requirement("inv:append-only")
def test_events_cannot_be_updated_or_deleted(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "a.db")
    store.append({"type": ev.REQUESTED, "call_id": "c1", "text": "SELECT 1"})
    for statement in ("UPDATE events SET text = 'x'", "DELETE FROM events"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            store.db.execute(statement)
    assert store.call("c1")[0]["text"] == "SELECT 1"


def test_each_event_links_to_the_previous_one(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "a.db")
    first = store.append({"type": ev.REQUESTED, "call_id": "c1"})
    second = store.append({"type": ev.FINISHED, "call_id": "c1", "row_count": 1})
    assert first["prev_hash"] == ev.GENESIS and second["prev_hash"] == first["hash"]
    rows = store.tail(2)
    for row in rows:
        assert ev.chain_hash(row["prev_hash"], {k: _stored(k, row[k]) for k in ev.FIELDS}) == row["hash"]


def _stored(name: str, value: object) -> object:
    import json

    if value is None:
        return None
    if name in ev.JSON_FIELDS:
        return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    return int(value) if isinstance(value, bool) else value


def test_the_chain_continues_across_reopen(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "a.db")
    last = store.append({"type": ev.REQUESTED, "call_id": "c1"})
    store.close()
    assert SqliteAuditStore(tmp_path / "a.db").append({"type": ev.DENIED, "call_id": "c1"})["prev_hash"] == last["hash"]


@requirement("inv:interrupted-on-restart")
def test_calls_left_open_are_closed_as_interrupted(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "a.db")
    store.append({"type": ev.REQUESTED, "call_id": "open"})
    store.append({"type": ev.REQUESTED, "call_id": "done"})
    store.append({"type": ev.FINISHED, "call_id": "done"})
    assert store.close_interrupted() == ["open"]
    assert [e["type"] for e in store.call("open")] == [ev.REQUESTED, ev.INTERRUPTED]
    assert store.close_interrupted() == []


def test_migrations_are_recorded_and_not_rerun(tmp_path: Path) -> None:
    SqliteAuditStore(tmp_path / "a.db").close()
    store = SqliteAuditStore(tmp_path / "a.db")
    assert [r["name"] for r in store.db.query("SELECT name FROM _migrations")] == ["0001_events", "0002_instances", "0003_checkpoints", "0004_search", "0005_approvals", "0006_tree_checkpoints", "0007_tree_nodes"]


def test_the_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "a.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_an_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open the audit store"):
        SqliteAuditStore(blocker / "sub" / "a.db")


def test_two_processes_sharing_a_log_keep_one_chain(tmp_path: Path) -> None:
    first, second = SqliteAuditStore(tmp_path / "a.db"), SqliteAuditStore(tmp_path / "a.db")
    events = [store.append({"type": ev.REQUESTED, "call_id": f"c{i}"}) for i, store in enumerate([first, second] * 3)]
    for previous, event in zip(events, events[1:]):
        assert event["prev_hash"] == previous["hash"]


@requirement("inv:interrupted-on-restart")
def test_start_up_leaves_a_live_processs_calls_open_and_closes_a_dead_ones(tmp_path: Path) -> None:
    import subprocess
    import sys

    live = SqliteAuditStore(tmp_path / "a.db")
    live.append({"type": ev.REQUESTED, "call_id": "running-elsewhere"})
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    dead = SqliteAuditStore(tmp_path / "a.db")
    dead.append({"type": ev.REQUESTED, "call_id": "left-by-a-crash"})
    dead.db.execute("UPDATE instances SET pid = ? WHERE id = ?", (int(dead_pid), dead.instance))
    assert SqliteAuditStore(tmp_path / "a.db").close_interrupted() == ["left-by-a-crash"]
    assert live.open_calls() == ["running-elsewhere"]


@pytest.mark.anyio
async def test_concurrent_appends_through_the_recorder_share_transactions_and_keep_one_chain(tmp_path: Path) -> None:
    import anyio

    from bastion.store.verify import verify
    from bastion.tools.recorder import Recorder

    store = SqliteAuditStore(tmp_path / "audit.db")
    recorder = Recorder(store)
    written: list[dict] = []  # type: ignore[type-arg]
    commits: list[str] = []
    store.db.conn.set_trace_callback(lambda statement: commits.append(statement) if statement == "COMMIT" else None)

    async def one(n: int) -> None:
        written.append(await recorder.append({"type": ev.REQUESTED, "call_id": f"c{n}", "text": f"SELECT {n}"}))

    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(one, n)
    # Every caller got its own event back, durable, with its place in the one chain.
    assert sorted(e["seq"] for e in written) == list(range(1, 201))
    assert {e["call_id"] for e in written} == {f"c{n}" for n in range(200)}
    assert verify(store.db.conn).ok
    assert 0 < len(commits) < 100  # group commit: many events per transaction (one fsync)


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this value")


@pytest.mark.anyio
async def test_one_bad_event_never_costs_another_and_a_lone_surrogate_is_stored(tmp_path: Path) -> None:
    import anyio

    from bastion.policy.errors import AuditUnavailable
    from bastion.store.verify import verify
    from bastion.tools.recorder import Recorder

    store = SqliteAuditStore(tmp_path / "audit.db")
    recorder = Recorder(store)
    outcomes: dict[str, object] = {}

    async def one(call_id: str, extra: dict) -> None:  # type: ignore[type-arg]
        try:
            outcomes[call_id] = await recorder.append({"type": ev.REQUESTED, "call_id": call_id, **extra})
        except AuditUnavailable as error:
            outcomes[call_id] = error

    async with anyio.create_task_group() as tg:  # in one group-commit batch, with the bad ones
        for n in range(50):
            tg.start_soon(one, f"c{n}", {"text": f"SELECT {n}"})
        tg.start_soon(one, "surrogate", {"reason": "why \ud800 not", "text": "SELECT 1"})
        tg.start_soon(one, "unprintable", {"facts": {"x": _Unprintable()}})
    assert isinstance(outcomes.pop("unprintable"), AuditUnavailable)
    assert all(isinstance(o, dict) and o["seq"] for o in outcomes.values()), "every other call is recorded"
    stored = {e["call_id"]: e for e in store.iter_all()}
    assert set(stored) == {f"c{n}" for n in range(50)} | {"surrogate"}
    assert stored["surrogate"]["reason"] == "why \ufffd not"
    assert verify(store.db.conn).ok
