"""The pipeline with a fake executor: record before run, fail closed, nothing runs unrecorded."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from bastion.policy import ConnectionPolicy, Identity
from bastion.policy.errors import BastionError, AuditUnavailable, Denied, InvalidInput
from bastion.policy.presets import READ_ONLY, READ_WRITE
from bastion.store import SqliteAuditStore, StoreError
from bastion.store import events as ev
from tests.conftest import requirement
from bastion.tools.calls import Caller
from bastion.tools.connections import Connection
from bastion.tools.executors.base import QueryResult, RunRequest, TableInfo
from bastion.tools.gateway import Gateway

pytestmark = pytest.mark.anyio
CALLER = Caller(Identity("alice", frozenset({"analysts"})), {"name": "test-client", "version": "1"})


class FakeExecutor:
    dialect = "postgres"

    def __init__(self, store: SqliteAuditStore | None = None) -> None:
        self.requests: list[RunRequest] = []
        self.store = store
        self.seen_before_run: list[str] = []
        self.block = anyio.Event()
        self.blocking = False

    async def run(self, request: RunRequest) -> QueryResult:
        if self.store is not None:  # what the log held when execution began
            self.seen_before_run = [e["type"] for e in self.store.tail(5)]
        self.requests.append(request)
        if self.blocking:
            await self.block.wait()
        return QueryResult(["n"], [[1]], 1)

    async def catalog(self) -> list[TableInfo]:
        return []

    async def close(self) -> None:
        pass


def gateway(tmp_path: Path, executor: FakeExecutor, rule=READ_ONLY) -> Gateway:  # type: ignore[no-untyped-def]
    store = SqliteAuditStore(tmp_path / "audit.db")
    executor.store = store
    connection = Connection("db", "postgres", ConnectionPolicy("db", "postgres", (rule,)), executor)
    return Gateway({"db": connection}, store)


@requirement("inv:record-before-run")
async def test_call_requested_is_durable_before_the_executor_runs(tmp_path: Path) -> None:
    executor = FakeExecutor()
    gw = gateway(tmp_path, executor)
    done = await gw.sql_query(CALLER, "db", "SELECT 1", "why")
    assert executor.seen_before_run[-1] == ev.REQUESTED
    # A separate connection to the file sees it too: it was committed, not just buffered.
    reopened = SqliteAuditStore(tmp_path / "audit.db")
    assert [e["type"] for e in reopened.call(done.call_id)] == [ev.REQUESTED, ev.FINISHED]
    assert reopened.call(done.call_id)[0]["client"] == {"name": "test-client", "version": "1"}


@requirement("inv:audit-unavailable-blocks")
async def test_nothing_runs_when_the_audit_store_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executor = FakeExecutor()
    gw = gateway(tmp_path, executor)

    def failing_disk(events: list) -> list:  # type: ignore[type-arg]
        raise StoreError("disk I/O error")

    monkeypatch.setattr(gw.store, "append_many", failing_disk)
    with pytest.raises(AuditUnavailable) as caught:
        await gw.sql_query(CALLER, "db", "SELECT 1", None)
    assert executor.requests == []
    assert "nothing was run" in caught.value.for_agent()


async def test_a_call_alone_is_recorded_on_its_own_thread_and_concurrent_calls_through_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One call at a time (stdio): both events are written on the event loop's thread, with no hand-off
    to the writer thread and back. Calls running together go to the writer thread, which can put
    what they queue in one transaction. Either way every event is in the one chain."""
    import threading

    from bastion.store.verify import verify

    executor = FakeExecutor()
    gw = gateway(tmp_path, executor)
    writes: list[tuple[str, int]] = []
    real = gw.store.append_many

    def watched(events: list) -> list:  # type: ignore[type-arg]
        writes.append((threading.current_thread().name, len(events)))
        return real(events)

    monkeypatch.setattr(gw.store, "append_many", watched)
    await gw.sql_query(CALLER, "db", "SELECT 1", None)
    assert writes == [(threading.current_thread().name, 1)] * 2
    writes.clear()
    executor.blocking = True
    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(gw.sql_query, CALLER, "db", f"SELECT {n}", None)
        while len(executor.requests) < 21:  # all twenty running at once
            await anyio.sleep(0.01)
        executor.block.set()
    assert "bastion-audit-writer" in {name for name, _ in writes}
    assert sum(n for _, n in writes) == 40
    assert [e["type"] for e in gw.store.iter_all()].count(ev.FINISHED) == 21
    assert verify(gw.store.conn).ok


async def test_the_executor_gets_the_parsed_statements_and_limits(tmp_path: Path) -> None:
    executor = FakeExecutor()
    gw = gateway(tmp_path, executor)
    await gw.sql_query(CALLER, "db", "SELECT 2 -- two;", None)
    (request,) = executor.requests
    assert [s.text for s in request.statements] == ["SELECT 2 -- two;"]
    assert request.read_only and request.limits.max_rows == READ_ONLY.limits.max_rows
    assert request.identity == CALLER.identity


async def test_a_denied_call_never_reaches_the_executor(tmp_path: Path) -> None:
    executor = FakeExecutor()
    gw = gateway(tmp_path, executor)
    with pytest.raises(Denied):
        await gw.sql_query(CALLER, "db", "SELECT 1; DROP TABLE x", None)
    assert executor.requests == []


async def test_review_holds_the_call_and_answers_pending_when_nobody_decides_in_time(tmp_path: Path) -> None:
    executor = FakeExecutor()
    gw = gateway(tmp_path, executor, READ_WRITE)
    assert gw.guard.holds is not None
    gw.guard.holds.wait_s = 0.2
    with pytest.raises(BastionError) as caught:
        await gw.sql_query(CALLER, "db", "TRUNCATE orders", None)
    assert caught.value.code == "pending_approval" and "call sql_query again with exactly the same text" in caught.value.for_agent().lower()
    assert executor.requests == [] and gw.store.tail(1)[0]["type"] == ev.PENDING


@requirement("inv:terminal-event")
async def test_a_cancelled_call_is_recorded_as_failed(tmp_path: Path) -> None:
    executor = FakeExecutor()
    executor.blocking = True
    gw = gateway(tmp_path, executor)
    with anyio.move_on_after(0.2):
        await gw.sql_query(CALLER, "db", "SELECT 1", None)
    last = gw.store.tail(1)[0]
    assert last["type"] == ev.FAILED and last["error"]["code"] == "cancelled"


async def test_check_does_not_run_anything(tmp_path: Path) -> None:
    executor = FakeExecutor()
    gw = gateway(tmp_path, executor)
    outcome = await gw.check(CALLER, "db", "SELECT * FROM pg_read_file('/etc/passwd')")
    assert outcome.verdict == "deny" and outcome.rules == ["read-only:function"] and executor.requests == []


async def test_check_refuses_bad_input_like_a_query(tmp_path: Path) -> None:
    gw = gateway(tmp_path, FakeExecutor())
    with pytest.raises(InvalidInput):
        await gw.check(CALLER, "db", "")
    assert [e["type"] for e in gw.store.tail(2)] == [ev.REQUESTED, ev.DENIED]
