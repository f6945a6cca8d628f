"""Held calls and approvals in the store: one hold per binding, exact single-use approvals that
expire and never come from the requester, every change in the audit chain, several processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from bastion.policy.approvals import ApprovalPolicy, binding_hash
from bastion.policy.errors import AlreadyVoted, HoldClosed, HoldNotFound, NotAllowedToDecide, ReasonRequired, SelfApproval
from bastion.policy.identity import Identity
from bastion.store import events as ev
from bastion.store.approvals import ApprovalStore, Held, HoldStatus
from bastion.store.errors import StoreError
from bastion.store.sqlite_store import SqliteAuditStore
from bastion.store.verify import verify
from bastion.store import AuditStore, open_store
from tests.store_backends import StoreAt

ALICE = Identity("alice", frozenset({"dev", "dba"}))  # the requester, and herself a dba
BOB = Identity("bob", frozenset({"dba"}))
CAROL = Identity("carol", frozenset({"dba"}))
MALLORY = Identity("mallory", frozenset({"dev"}))
DBA = ApprovalPolicy(frozenset({"dba"}), ttl_s=600)
TEXT = "DELETE FROM orders WHERE id = 7"
SPAWN = multiprocessing.get_context("spawn")


class Clock:
    """The one thing these tests fake: the time."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def audit(store_at: StoreAt) -> AuditStore:
    return store_at.open()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def approvals(audit: AuditStore, clock: Clock) -> Iterator[ApprovalStore]:
    store = ApprovalStore(audit, clock=clock)
    yield store
    store.close()


def hold(store: ApprovalStore, call_id: str = "call-1", *, text: str = TEXT, who: Identity = ALICE,
         policy: ApprovalPolicy = DBA) -> Held:
    return store.hold(call_id=call_id, requester=who, connection="prod", tool="sql_execute", text=text,
                      policy=policy, rule="read-write:review-kind", facts={"kinds": ["delete"]},
                      reason="remove the duplicate order")


def types(audit: AuditStore, call_id: str | None = None) -> list[str]:
    events = audit.call(call_id) if call_id else list(audit.iter_all())
    return [e["type"] for e in events]


def assert_chain_ok(audit: AuditStore) -> None:
    conn = audit.connect()
    try:
        report = verify(conn)
    finally:
        conn.close()
    assert report.ok, report.problems


# -- holding -------------------------------------------------------------------------------------


def test_a_hold_stores_the_call_and_records_call_held(approvals: ApprovalStore, audit: AuditStore) -> None:
    held = hold(approvals)
    assert held.status is HoldStatus.PENDING and not held.joined and held.hold_id.startswith("hold-")
    assert held.binding == binding_hash("alice", "prod", "sql_execute", TEXT)
    assert (held.text, held.connection, held.tool, held.rule) == (TEXT, "prod", "sql_execute", "read-write:review-kind")
    assert held.requester["subject"] == "alice" and held.facts == {"kinds": ["delete"]}
    assert held.approver_groups == ("dba",) and held.min_approvals == 1
    assert held.expires_at == "2030-01-01T12:10:00.000000+00:00"
    (event,) = audit.call("call-1")
    assert event["type"] == ev.HELD and event["result"]["hold_id"] == held.hold_id
    assert event["result"]["joined"] is False and event["result"]["rule"] == "read-write:review-kind"
    assert event["result"]["approver_groups"] == ["dba"] and event["result"]["expires_at"] == held.expires_at
    assert approvals.get(held.hold_id) == held
    assert approvals.live_for(held.binding) == held


def test_the_identical_call_re_issued_joins_the_pending_hold(approvals: ApprovalStore, audit: AuditStore) -> None:
    first = hold(approvals, "call-1")
    again = hold(approvals, "call-2")
    assert again.hold_id == first.hold_id and again.joined and again.call_id == "call-1"
    assert len(approvals.list()) == 1
    assert audit.call("call-2")[0]["result"]["joined"] is True


def test_identical_calls_from_several_threads_make_one_hold(store_at: StoreAt) -> None:
    audit = store_at.open()
    stores = [ApprovalStore(audit), ApprovalStore(audit)]
    ids: list[str] = []
    threads = [threading.Thread(target=lambda i=i: ids.append(hold(stores[i % 2], f"call-{i}").hold_id))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(stores[0].list()) == 1
    assert sum(1 for e in audit.iter_all() if e["type"] == ev.HELD and not e["result"]["joined"]) == 1


def test_a_text_differing_by_one_character_is_another_hold_and_cannot_use_its_approval(
        approvals: ApprovalStore) -> None:
    first = hold(approvals, "call-1")
    other = hold(approvals, "call-2", text=TEXT.replace("7", "8"))
    assert other.hold_id != first.hold_id and not other.joined
    approvals.decide(first.hold_id, BOB, True)
    assert approvals.consume(first.hold_id, "call-2", other.binding) is False
    assert approvals.consume(other.hold_id, "call-2", other.binding) is False
    assert approvals.get(first.hold_id).status is HoldStatus.APPROVED  # type: ignore[union-attr]
    assert approvals.get(other.hold_id).status is HoldStatus.PENDING  # type: ignore[union-attr]
    assert approvals.consume(first.hold_id, "call-3", first.binding) is True


def test_another_requester_with_the_same_text_gets_their_own_hold(approvals: ApprovalStore) -> None:
    assert hold(approvals, "call-1").hold_id != hold(approvals, "call-2", who=CAROL).hold_id


# -- deciding ------------------------------------------------------------------------------------


def test_an_approval_approves_and_is_recorded_under_the_hold(approvals: ApprovalStore, audit: AuditStore) -> None:
    held = hold(approvals)
    decided = approvals.decide(held.hold_id, BOB, True, "checked the id")
    assert decided.status is HoldStatus.APPROVED and decided.decided_at == "2030-01-01T12:00:00.000000+00:00"
    assert [(v.approver, v.approve, v.reason) for v in decided.votes] == [("bob", True, "checked the id")]
    (granted,) = audit.call(held.hold_id)
    assert granted["type"] == ev.APPROVAL_GRANTED and granted["identity"]["subject"] == "bob"
    assert granted["reason"] == "checked the id" and granted["result"]["binding"] == held.binding
    assert granted["result"]["status"] == "approved" and granted["result"]["hold_call_id"] == "call-1"


def test_self_approval_is_refused_by_the_store_even_for_an_approver(approvals: ApprovalStore,
                                                                   audit: AuditStore) -> None:
    held = hold(approvals)
    before = types(audit)
    with pytest.raises(SelfApproval) as caught:
        approvals.decide(held.hold_id, ALICE, True)
    assert "`alice` asked for held call" in caught.value.for_agent()
    with pytest.raises(SelfApproval):  # not even a denial
        approvals.decide(held.hold_id, ALICE, False, "never mind")
    assert approvals.get(held.hold_id).votes == ()  # type: ignore[union-attr]
    assert types(audit) == before


def test_someone_in_no_approver_group_is_refused(approvals: ApprovalStore) -> None:
    held = hold(approvals)
    with pytest.raises(NotAllowedToDecide) as caught:
        approvals.decide(held.hold_id, MALLORY, True)
    assert caught.value.code == "not_an_approver" and "Only members of `dba`" in caught.value.for_agent()
    assert approvals.get(held.hold_id).status is HoldStatus.PENDING  # type: ignore[union-attr]


def test_two_approvals_are_needed_from_two_different_approvers(approvals: ApprovalStore, audit: AuditStore) -> None:
    held = hold(approvals, policy=ApprovalPolicy(frozenset({"dba"}), min_approvals=2))
    once = approvals.decide(held.hold_id, BOB, True)
    assert once.status is HoldStatus.PENDING and once.approvals == 1
    with pytest.raises(AlreadyVoted):
        approvals.decide(held.hold_id, BOB, True)
    assert approvals.consume(held.hold_id, "call-2", held.binding) is False
    twice = approvals.decide(held.hold_id, CAROL, True)
    assert twice.status is HoldStatus.APPROVED and twice.approvals == 2
    assert types(audit, held.hold_id) == [ev.APPROVAL_GRANTED, ev.APPROVAL_GRANTED]
    assert [e["result"]["approvals"] for e in audit.call(held.hold_id)] == [1, 2]


def test_a_denial_needs_a_reason_and_then_denies(approvals: ApprovalStore, audit: AuditStore) -> None:
    held = hold(approvals)
    for empty in (None, "", "   "):
        with pytest.raises(ReasonRequired):
            approvals.decide(held.hold_id, BOB, False, empty)
    denied = approvals.decide(held.hold_id, BOB, False, "  use a soft delete  ")
    assert denied.status is HoldStatus.DENIED and denied.denial is not None
    assert denied.denial.reason == "use a soft delete"
    (event,) = audit.call(held.hold_id)
    assert event["type"] == ev.APPROVAL_DENIED and event["reason"] == "use a soft delete"
    with pytest.raises(HoldClosed, match="was denied already"):
        approvals.decide(held.hold_id, CAROL, True)
    assert approvals.consume(held.hold_id, "call-2", held.binding) is False
    # A denied hold is not live: the same call made again is held anew.
    assert hold(approvals, "call-3").hold_id != held.hold_id


def test_one_denial_denies_a_hold_that_needs_two_approvals(approvals: ApprovalStore) -> None:
    held = hold(approvals, policy=ApprovalPolicy(frozenset({"dba"}), min_approvals=2))
    approvals.decide(held.hold_id, BOB, True)
    assert approvals.decide(held.hold_id, CAROL, False, "not today").status is HoldStatus.DENIED


def test_deciding_an_unknown_hold_says_so(approvals: ApprovalStore) -> None:
    with pytest.raises(HoldNotFound, match="no held call `hold-nope`"):
        approvals.decide("hold-nope", BOB, True)
    assert approvals.get("hold-nope") is None


# -- using an approval ---------------------------------------------------------------------------


def test_an_approval_is_single_use(approvals: ApprovalStore, audit: AuditStore) -> None:
    held = hold(approvals)
    assert approvals.consume(held.hold_id, "call-2", held.binding) is False  # not approved yet
    approvals.decide(held.hold_id, BOB, True)
    assert approvals.consume(held.hold_id, "call-2", held.binding) is True
    assert approvals.consume(held.hold_id, "call-3", held.binding) is False
    used = approvals.get(held.hold_id)
    assert used is not None and used.status is HoldStatus.CONSUMED and used.consumed_by_call == "call-2"
    assert types(audit, held.hold_id) == [ev.APPROVAL_GRANTED, ev.APPROVAL_CONSUMED]
    assert audit.call(held.hold_id)[-1]["result"]["consumed_by_call"] == "call-2"
    with pytest.raises(HoldClosed, match="used already"):
        approvals.decide(held.hold_id, CAROL, True)
    # Used: the same call made again is held anew, never run on the old approval.
    assert hold(approvals, "call-4").hold_id != held.hold_id


def test_an_approved_hold_is_joined_by_the_re_issued_call_which_may_use_it(approvals: ApprovalStore) -> None:
    held = hold(approvals, "call-1")
    approvals.decide(held.hold_id, BOB, True)
    again = hold(approvals, "call-2")
    assert again.joined and again.hold_id == held.hold_id and again.status is HoldStatus.APPROVED
    assert approvals.consume(again.hold_id, "call-2", again.binding) is True


def test_two_stores_on_one_file_racing_to_consume_use_it_once(store_at: StoreAt) -> None:
    audit = store_at.open()
    first, second = ApprovalStore(audit), ApprovalStore(store_at.open())
    held = hold(first)
    first.decide(held.hold_id, BOB, True)
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def race(i: int) -> None:
        barrier.wait()
        results.append((first, second)[i % 2].consume(held.hold_id, f"call-{i}", held.binding))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert types(audit, held.hold_id).count(ev.APPROVAL_CONSUMED) == 1
    assert_chain_ok(audit)


def _consume_in_another_process(path: str, hold_id: str, binding: str, call_id: str, barrier: Any, out: Any) -> None:
    store = ApprovalStore(open_store(path))
    barrier.wait(60)
    out.put((call_id, store.consume(hold_id, call_id, binding)))


def test_processes_racing_to_consume_use_it_once(store_at: StoreAt) -> None:
    audit = store_at.open()
    approvals = ApprovalStore(audit)
    held = hold(approvals)
    approvals.decide(held.hold_id, BOB, True)
    barrier, out = SPAWN.Barrier(4), SPAWN.Queue()
    processes = [SPAWN.Process(target=_consume_in_another_process,
                               args=(store_at.target, held.hold_id, held.binding, f"call-p{i}", barrier, out))
                 for i in range(4)]
    for p in processes:
        p.start()
    results = dict(out.get(timeout=60) for _ in processes)
    for p in processes:
        p.join(30)
        assert p.exitcode == 0
    winners = [call_id for call_id, used in results.items() if used]
    assert len(winners) == 1 and len(results) == 4
    assert approvals.get(held.hold_id).consumed_by_call == winners[0]  # type: ignore[union-attr]
    assert types(audit, held.hold_id) == [ev.APPROVAL_GRANTED, ev.APPROVAL_CONSUMED]
    assert_chain_ok(audit)


# -- expiry --------------------------------------------------------------------------------------


def test_a_pending_hold_expires(approvals: ApprovalStore, audit: AuditStore, clock: Clock) -> None:
    held = hold(approvals)
    clock.advance(599)
    assert approvals.expire_due() == []
    clock.advance(1)
    (expired,) = approvals.expire_due()
    assert expired.hold_id == held.hold_id and expired.status is HoldStatus.EXPIRED
    assert approvals.expire_due() == []
    (event,) = audit.call(held.hold_id)
    assert event["type"] == ev.APPROVAL_EXPIRED and event["result"]["was"] == "pending"
    with pytest.raises(HoldClosed, match="expired at 2030-01-01T12:10:00"):
        approvals.decide(held.hold_id, BOB, True)
    assert approvals.live_for(held.binding) is None


def test_an_unused_approval_expires_and_can_no_longer_be_used(approvals: ApprovalStore, audit: AuditStore,
                                                             clock: Clock) -> None:
    held = hold(approvals)
    approvals.decide(held.hold_id, BOB, True)
    clock.advance(601)
    assert approvals.live_for(held.binding) is None
    assert approvals.consume(held.hold_id, "call-2", held.binding) is False
    assert approvals.get(held.hold_id).status is HoldStatus.EXPIRED  # type: ignore[union-attr]
    assert types(audit, held.hold_id) == [ev.APPROVAL_GRANTED, ev.APPROVAL_EXPIRED]
    assert audit.call(held.hold_id)[-1]["result"]["was"] == "approved"


def test_deciding_an_overdue_hold_expires_it_and_refuses(approvals: ApprovalStore, audit: AuditStore,
                                                         clock: Clock) -> None:
    held = hold(approvals)
    clock.advance(700)
    with pytest.raises(HoldClosed, match="expired"):
        approvals.decide(held.hold_id, BOB, True)
    assert approvals.get(held.hold_id).votes == ()  # type: ignore[union-attr]
    assert types(audit, held.hold_id) == [ev.APPROVAL_EXPIRED]


def test_the_same_call_after_expiry_is_held_anew(approvals: ApprovalStore, audit: AuditStore,
                                                 clock: Clock) -> None:
    held = hold(approvals, "call-1")
    clock.advance(601)
    fresh = hold(approvals, "call-2")  # expires the overdue hold in the same transaction
    assert fresh.hold_id != held.hold_id and not fresh.joined
    assert approvals.get(held.hold_id).status is HoldStatus.EXPIRED  # type: ignore[union-attr]
    assert types(audit, held.hold_id) == [ev.APPROVAL_EXPIRED]


# -- waiting -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_wait_that_times_out_leaves_the_hold_pending_and_ticks(approvals: ApprovalStore) -> None:
    held = hold(approvals)
    ticks: list[float] = []
    with anyio.fail_after(10):
        after = await approvals.wait(held.hold_id, 0.3, poll_s=0.02, on_tick=ticks.append, tick_s=0.1)
    assert after.status is HoldStatus.PENDING and len(ticks) >= 2 and ticks == sorted(ticks)


@pytest.mark.anyio
async def test_a_wait_returns_when_another_store_on_the_file_decides(store_at: StoreAt) -> None:
    audit = store_at.open()
    waiting, deciding = ApprovalStore(audit), ApprovalStore(store_at.open())
    held = hold(waiting)

    async def approve_on_first_tick(elapsed: float) -> None:
        await anyio.to_thread.run_sync(deciding.decide, held.hold_id, BOB, False, "not now")

    with anyio.fail_after(10):
        after = await waiting.wait(held.hold_id, 30, poll_s=0.02, on_tick=approve_on_first_tick, tick_s=0.05)
    assert after.status is HoldStatus.DENIED and after.denial and after.denial.reason == "not now"


def _approve_when_told(path: str, hold_id: str, go: Any) -> None:
    store = ApprovalStore(open_store(path))
    if go.wait(60):
        store.decide(hold_id, BOB, True, "approved from another process")


@pytest.mark.anyio
async def test_a_wait_is_released_by_an_approval_given_in_another_process(store_at: StoreAt) -> None:
    audit = store_at.open()
    approvals = ApprovalStore(audit)
    held = hold(approvals)
    go = SPAWN.Event()
    approver = SPAWN.Process(target=_approve_when_told, args=(store_at.target, held.hold_id, go))
    approver.start()
    try:
        with anyio.fail_after(60):
            # The other process approves only once this one is waiting.
            after = await approvals.wait(held.hold_id, 60, poll_s=0.02, on_tick=lambda _: go.set(), tick_s=0.05)
    finally:
        go.set()
        approver.join(30)
    assert approver.exitcode == 0
    assert after.status is HoldStatus.APPROVED and after.votes[0].reason == "approved from another process"
    assert approvals.consume(held.hold_id, "call-2", held.binding) is True
    assert_chain_ok(audit)


@pytest.mark.anyio
async def test_a_hold_expiring_during_a_wait_ends_it_as_expired(approvals: ApprovalStore, audit: AuditStore,
                                                                clock: Clock) -> None:
    held = hold(approvals)
    with anyio.fail_after(10):
        after = await approvals.wait(held.hold_id, 30, poll_s=0.02, on_tick=lambda _: clock.advance(601), tick_s=0.02)
    assert after.status is HoldStatus.EXPIRED
    assert types(audit, held.hold_id) == [ev.APPROVAL_EXPIRED]


@pytest.mark.anyio
async def test_a_cancelled_wait_leaves_the_hold_pending(approvals: ApprovalStore) -> None:
    held = hold(approvals)
    with anyio.move_on_after(0.1) as scope:
        await approvals.wait(held.hold_id, 30, poll_s=0.02)
    assert scope.cancelled_caught
    assert approvals.get(held.hold_id).status is HoldStatus.PENDING  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_waiting_on_an_unknown_hold_says_so(approvals: ApprovalStore) -> None:
    with pytest.raises(HoldNotFound):
        await approvals.wait("hold-nope", 1)


# -- the log -------------------------------------------------------------------------------------


def test_every_transition_leaves_its_event_and_the_chain_verifies(approvals: ApprovalStore, audit: AuditStore,
                                                                  clock: Clock) -> None:
    audit.append({"type": ev.REQUESTED, "call_id": "call-1", "text": TEXT})
    used = hold(approvals, "call-1")
    audit.append({"type": ev.PENDING, "call_id": "call-1"})
    approvals.set_preview(used.hold_id, {"explain": "Delete on orders", "rows": 1})
    approvals.decide(used.hold_id, BOB, True)
    approvals.consume(used.hold_id, "call-2", used.binding)
    denied = hold(approvals, "call-3", text="DELETE FROM orders WHERE id = 9")
    approvals.decide(denied.hold_id, BOB, False, "wrong order")
    expired = hold(approvals, "call-4", text="DELETE FROM orders WHERE id = 10")
    clock.advance(601)
    approvals.expire_due()
    assert types(audit, used.hold_id) == [ev.APPROVAL_PREVIEW, ev.APPROVAL_GRANTED, ev.APPROVAL_CONSUMED]
    assert types(audit, denied.hold_id) == [ev.APPROVAL_DENIED]
    assert types(audit, expired.hold_id) == [ev.APPROVAL_EXPIRED]
    assert types(audit, "call-1") == [ev.REQUESTED, ev.HELD, ev.PENDING]
    assert approvals.get(used.hold_id).preview == {"explain": "Delete on orders", "rows": 1}  # type: ignore[union-attr]
    assert_chain_ok(audit)


def test_approval_events_interleave_with_group_committed_appends_in_one_chain(store_at: StoreAt) -> None:
    audit = store_at.open()
    approvals = ApprovalStore(audit)

    def append_many(n: int) -> None:
        for i in range(50):
            audit.append({"type": ev.REQUESTED, "call_id": f"t{n}-{i}"})

    def hold_and_decide() -> None:
        for i in range(20):
            held = hold(approvals, f"h{i}", text=f"DELETE FROM orders WHERE id = {i}")
            approvals.decide(held.hold_id, BOB, True)
            approvals.consume(held.hold_id, f"h{i}", held.binding)

    threads = [threading.Thread(target=append_many, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=hold_and_decide))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(audit.iter_all())) == 150 + 20 * 3
    assert_chain_ok(audit)


def test_a_call_ended_as_pending_is_not_open_and_not_interrupted_at_start_up(store_at: StoreAt) -> None:
    audit = store_at.open()
    audit.append({"type": ev.REQUESTED, "call_id": "waited"})
    audit.append({"type": ev.HELD, "call_id": "waited", "result": {"hold_id": "hold-x"}})
    audit.append({"type": ev.PENDING, "call_id": "waited"})
    audit.append({"type": ev.REQUESTED, "call_id": "held-when-it-crashed"})
    audit.append({"type": ev.HELD, "call_id": "held-when-it-crashed", "result": {"hold_id": "hold-x"}})
    assert ev.PENDING in ev.TERMINAL and ev.HELD not in ev.TERMINAL
    assert audit.open_calls() == ["held-when-it-crashed"]
    assert audit.close_interrupted() == ["held-when-it-crashed"]  # its own calls count as a dead process's
    assert types(audit, "waited") == [ev.REQUESTED, ev.HELD, ev.PENDING]


def test_votes_are_append_only(approvals: ApprovalStore, audit: AuditStore) -> None:
    held = hold(approvals)
    approvals.decide(held.hold_id, BOB, True)
    for sql in ("UPDATE votes SET approve = 0", "DELETE FROM votes"):
        with pytest.raises(audit.Error, match="append-only"):
            audit.conn.execute(sql)


def test_the_database_allows_one_live_hold_per_binding(approvals: ApprovalStore, audit: AuditStore) -> None:
    held = hold(approvals)
    with pytest.raises(audit.IntegrityError):
        audit.conn.execute("INSERT INTO holds (hold_id, binding, call_id, created, expires_at, status, requester, "
                           "requester_subject, connection, tool, text, text_hash, facts, reason, rule, approver_groups, "
                           "min_approvals, preview, decided_at, consumed_by_call) SELECT 'hold-copy', binding, call_id, created, expires_at, status, requester, "
                         "requester_subject, connection, tool, text, text_hash, facts, reason, rule, approver_groups, "
                         "min_approvals, preview, decided_at, consumed_by_call FROM holds WHERE hold_id = ?",
                         [held.hold_id])


# -- reading and listening -----------------------------------------------------------------------


def test_list_filters_by_status_newest_first(approvals: ApprovalStore, clock: Clock) -> None:
    a = hold(approvals, "c1", text="DELETE FROM orders WHERE id = 1")
    clock.advance(1)
    b = hold(approvals, "c2", text="DELETE FROM orders WHERE id = 2")
    approvals.decide(a.hold_id, BOB, True)
    assert [h.hold_id for h in approvals.list()] == [b.hold_id, a.hold_id]
    assert [h.hold_id for h in approvals.list("pending")] == [b.hold_id]
    assert [h.hold_id for h in approvals.list(["approved", "denied"])] == [a.hold_id]
    assert approvals.list(limit=1)[0].hold_id == b.hold_id
    assert approvals.get(a.hold_id).as_record()["votes"][0]["approver"] == "bob"  # type: ignore[union-attr]


def test_listeners_hear_each_committed_change_and_cannot_break_one(audit: AuditStore, clock: Clock) -> None:
    heard: list[tuple[str, str, bool]] = []

    def broken(kind: str, held: Held) -> None:
        raise RuntimeError("a listener bug")

    approvals = ApprovalStore(audit, clock=clock, listeners=[broken])
    approvals.subscribe(lambda kind, held: heard.append((kind, str(held.status), held.joined)))
    held = hold(approvals, "c1")
    hold(approvals, "c2")
    with pytest.raises(SelfApproval):
        approvals.decide(held.hold_id, ALICE, True)
    approvals.decide(held.hold_id, BOB, True)
    approvals.consume(held.hold_id, "c2", held.binding)
    assert heard == [(ev.HELD, "pending", False), (ev.HELD, "pending", True), (ev.APPROVAL_GRANTED, "approved", False),
                     (ev.APPROVAL_CONSUMED, "consumed", False)]


def test_set_preview_on_an_unknown_hold_says_so(approvals: ApprovalStore) -> None:
    with pytest.raises(HoldNotFound):
        approvals.set_preview("hold-nope", {})


def test_an_unwritable_database_is_a_store_error(tmp_path: Path) -> None:
    audit = SqliteAuditStore(tmp_path / "audit.db")
    approvals = ApprovalStore(audit)
    blocker = sqlite3.connect(audit.path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    approvals._conn.execute("PRAGMA busy_timeout = 50")
    try:
        with pytest.raises(StoreError, match="cannot write the approvals"):
            hold(approvals)
    finally:
        blocker.rollback()
        blocker.close()
