"""The audit store, on SQLite and on PostgreSQL alike (`store_at`): append-only, hash-chained,
durable, and closes what a crash left open; migrations recorded, upgraded in place, a newer schema refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bastion.store import SqliteAuditStore, StoreError
from bastion.store import events as ev
from tests.conftest import requirement
from tests.store_backends import StoreAt


@requirement("inv:append-only")
def test_events_cannot_be_updated_or_deleted(store_at: StoreAt) -> None:
    store = store_at.open()
    store.append({"type": ev.REQUESTED, "call_id": "c1", "text": "SELECT 1"})
    statements = ["UPDATE events SET text = 'x'", "DELETE FROM events"]
    if store_at.kind == "postgres":
        statements.append("TRUNCATE events")
    for statement in statements:
        with pytest.raises(store.Error, match="append-only"):
            store.conn.execute(statement)
    assert store.call("c1")[0]["text"] == "SELECT 1"


def test_each_event_links_to_the_previous_one(store_at: StoreAt) -> None:
    store = store_at.open()
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


def test_the_chain_continues_across_reopen(store_at: StoreAt) -> None:
    store = store_at.open()
    last = store.append({"type": ev.REQUESTED, "call_id": "c1"})
    store.close()
    assert store_at.open().append({"type": ev.DENIED, "call_id": "c1"})["prev_hash"] == last["hash"]


@requirement("inv:interrupted-on-restart")
def test_calls_left_open_are_closed_as_interrupted(store_at: StoreAt) -> None:
    store = store_at.open()
    store.append({"type": ev.REQUESTED, "call_id": "open"})
    store.append({"type": ev.REQUESTED, "call_id": "done"})
    store.append({"type": ev.FINISHED, "call_id": "done"})
    assert store.close_interrupted() == ["open"]
    assert [e["type"] for e in store.call("open")] == [ev.REQUESTED, ev.INTERRUPTED]
    assert store.close_interrupted() == []


def test_migrations_are_recorded_and_not_rerun(store_at: StoreAt) -> None:
    store_at.open().close()
    store = store_at.open()
    assert [r["name"] for r in store.read("SELECT name FROM _migrations ORDER BY name")] == ["0001_events", "0002_instances", "0003_checkpoints", "0004_search", "0005_approvals", "0006_tree_checkpoints", "0007_tree_nodes", "0008_call_slots", "0009_instance_seen"]


def test_the_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "a.db")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_an_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open the audit store"):
        SqliteAuditStore(blocker / "sub" / "a.db")


def test_two_processes_sharing_a_log_keep_one_chain(store_at: StoreAt) -> None:
    first, second = store_at.open(), store_at.open()
    events = [store.append({"type": ev.REQUESTED, "call_id": f"c{i}"}) for i, store in enumerate([first, second] * 3)]
    for previous, event in zip(events, events[1:]):
        assert event["prev_hash"] == previous["hash"]


@requirement("inv:interrupted-on-restart")
def test_start_up_leaves_a_live_processs_calls_open_and_closes_a_dead_ones(store_at: StoreAt) -> None:
    import subprocess
    import sys

    live = store_at.open()
    live.append({"type": ev.REQUESTED, "call_id": "running-elsewhere"})
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    dead = store_at.open()
    dead.append({"type": ev.REQUESTED, "call_id": "left-by-a-crash"})
    dead.conn.execute("UPDATE instances SET pid = ? WHERE id = ?", (int(dead_pid), dead.instance))
    assert store_at.open().close_interrupted() == ["left-by-a-crash"]
    assert live.open_calls() == ["running-elsewhere"]


@pytest.mark.anyio
async def test_concurrent_appends_through_the_recorder_share_transactions_and_keep_one_chain(store_at: StoreAt) -> None:
    import anyio

    from bastion.store.verify import verify
    from bastion.tools.recorder import Recorder

    store = store_at.open()
    recorder = Recorder(store)
    written: list[dict] = []  # type: ignore[type-arg]
    counting = _CountingCommits(store.conn)
    store.conn = counting  # type: ignore[assignment]

    async def one(n: int) -> None:
        written.append(await recorder.append({"type": ev.REQUESTED, "call_id": f"c{n}", "text": f"SELECT {n}"}))

    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(one, n)
    # Every caller got its own event back, durable, with its place in the one chain.
    assert sorted(e["seq"] for e in written) == list(range(1, 201))
    assert {e["call_id"] for e in written} == {f"c{n}" for n in range(200)}
    assert verify(store.conn).ok
    assert 0 < counting.commits < 100  # group commit: many events per transaction (one fsync)


class _CountingCommits:
    """The writer's connection, counting its COMMITs."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.commits = conn, 0

    def execute(self, sql: str, *args: Any) -> Any:
        self.commits += sql == "COMMIT"
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this value")


@pytest.mark.anyio
async def test_one_bad_event_never_costs_another_and_a_lone_surrogate_is_stored(store_at: StoreAt) -> None:
    import anyio

    from bastion.policy.errors import AuditUnavailable
    from bastion.store.verify import verify
    from bastion.tools.recorder import Recorder

    store = store_at.open()
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
        tg.start_soon(one, "nul", {"text": "SELECT 'a\x00b'", "facts": {"text": "a\x00b"}})
        tg.start_soon(one, "unprintable", {"facts": {"x": _Unprintable()}})
    assert isinstance(outcomes.pop("unprintable"), AuditUnavailable)
    assert all(isinstance(o, dict) and o["seq"] for o in outcomes.values()), "every other call is recorded"
    stored = {e["call_id"]: e for e in store.iter_all()}
    assert set(stored) == {f"c{n}" for n in range(50)} | {"surrogate", "nul"}
    assert stored["surrogate"]["reason"] == "why \ufffd not"
    # A NUL (which PostgreSQL's text cannot hold) is U+FFFD in a text column, kept escaped in JSON.
    assert stored["nul"]["text"] == "SELECT 'a\ufffdb'" and stored["nul"]["facts"] == {"text": "a\x00b"}
    assert verify(store.conn).ok


def test_a_store_migrated_by_an_older_version_is_upgraded_in_place(store_at: StoreAt) -> None:
    from bastion.store import migrations, pg_migrations

    full = (pg_migrations if store_at.kind == "postgres" else migrations).MIGRATIONS
    older = store_at.open()
    older.append({"type": ev.REQUESTED, "call_id": "before"})
    # As if the last two migrations had not existed yet: forget them and undo what they made.
    last, table = full[-2][0], "call_slots"
    older.conn.execute("DELETE FROM _migrations WHERE name >= ?", (last,))
    older.conn.execute(f"DROP TABLE {table}")
    older.conn.execute("ALTER TABLE instances DROP COLUMN seen")
    store = store_at.open()
    assert [r[0] for r in store.read("SELECT name FROM _migrations ORDER BY name")][-2:] == [last, full[-1][0]]
    assert store.read(f"SELECT count(*) FROM {table}")[0][0] == 0
    assert store.append({"type": ev.FINISHED, "call_id": "before"})["seq"] == 2


def test_a_schema_newer_than_the_code_is_refused(store_at: StoreAt) -> None:
    from bastion.store.migrations import SchemaTooNew

    store_at.open().conn.execute("INSERT INTO _migrations VALUES ('0099_from_the_future', 'x')")
    with pytest.raises(SchemaTooNew, match="0099_from_the_future.*newer than this Bastion"):
        store_at.open()


def test_start_up_leaves_a_replica_on_another_host_alone_while_its_heartbeat_is_recent(store_at: StoreAt) -> None:
    from datetime import datetime, timedelta, timezone

    def replica(call_id: str, seen: datetime) -> None:
        other = store_at.open()
        other.append({"type": ev.REQUESTED, "call_id": call_id})
        other.conn.execute("UPDATE instances SET host = 'another-host', pid = 1, seen = ? WHERE id = ?",
                           (seen.isoformat(timespec="microseconds"), other.instance))

    now = datetime.now(timezone.utc)
    replica("on-a-live-replica", now - timedelta(seconds=5))
    replica("on-a-silent-one", now - timedelta(minutes=5))
    assert store_at.open().close_interrupted() == ["on-a-silent-one"]


def test_search_finds_calls_by_word_and_filter_on_either_backend(store_at: StoreAt) -> None:
    from bastion.store.search import search

    store = store_at.open()
    for n, (who, text) in enumerate([("alice", "SELECT email FROM customers"), ("bob", "SELECT email FROM orders"),
                                     ("alice", "DELETE FROM orders WHERE id = 7")]):
        store.append({"type": ev.REQUESTED, "call_id": f"c{n}", "text": text, "identity": {"subject": who},
                      "connection": "shop", "tool": "sql_query", "decision": {"verdict": "allow"}})
    assert [e["call_id"] for e in search(store, "email")] == ["c1", "c0"]  # newest first
    assert [e["call_id"] for e in search(store, "orders", user="alice")] == ["c2"]
    assert [e["call_id"] for e in search(store, "", user="bob")] == ["c1"]
    assert search(store, "nothing like this") == []
