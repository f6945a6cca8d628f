"""Per-identity limits ([limits]): concurrent calls and calls per minute, counted in the store so they
hold across gateways; a refusal says when to retry and is recorded."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from bastion.policy.errors import RateLimited
from bastion.store import events as ev
from bastion.store.limits import CallLimits
from bastion.store.postgres_store import PostgresAuditStore
from tests.store_backends import StoreAt
from tests.test_http import serving
from tests.test_shared_store import WRITE, call, gateway_config, shared  # noqa: F401 (a fixture)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def test_concurrent_calls_are_counted_across_stores_sharing_the_database(store_at: StoreAt) -> None:
    first = CallLimits(store_at.open(), concurrent=2)
    second = CallLimits(store_at.open(), concurrent=2)  # another gateway
    first.admit("dev", "c1")
    second.admit("dev", "c2")
    with pytest.raises(RateLimited, match="`dev` has 2 calls running") as refused:
        first.admit("dev", "c3")
    assert refused.value.retry_after_s == 1.0 and "Retry in about 1 s" in (refused.value.hint or "")
    second.admit("ops", "c4")  # per identity
    second.release(["c1"])  # one ended, on whichever gateway
    first.admit("dev", "c3")


def test_calls_per_minute_say_when_one_more_fits(store_at: StoreAt) -> None:
    clock = Clock()
    limits = CallLimits(store_at.open(), per_minute=3, clock=clock)
    for n in range(3):
        limits.admit("dev", f"c{n}")
        limits.release([f"c{n}"])
        clock.now += timedelta(seconds=10)
    # Now 30 s after the first: it leaves the window 30 s from now.
    with pytest.raises(RateLimited, match="made 3 calls in the last minute") as refused:
        limits.admit("dev", "c3")
    assert refused.value.retry_after_s == 30.0 and "Retry in 30.0 s" in (refused.value.hint or "")
    clock.now += timedelta(seconds=30)
    limits.admit("dev", "c3")


@pytest.mark.anyio
async def test_limits_hold_across_two_real_gateways_and_refusals_are_recorded(
        tmp_path: Path, shared: tuple[Path, str]) -> None:
    demo, url = shared
    limits = "\n[limits]\nconcurrent_calls = 1\ncalls_per_minute = 3\n"
    first = gateway_config(tmp_path / "a", demo, url, "dev", '["developers"]', limits)
    second = gateway_config(tmp_path / "b", demo, url, "dev", '["developers"]', limits)
    read = {"connection": "demo", "sql": "SELECT count(*) FROM customers"}
    with ExitStack() as stack:
        (_, on_a), (_, on_b) = stack.enter_context(serving(first)), stack.enter_context(serving(second))
        store = PostgresAuditStore(url)
        try:
            async with anyio.create_task_group() as tg:
                # A held write is a running call: while it waits on A, B refuses the same identity.
                tg.start_soon(call, on_a, "sql_query", {"connection": "demo", "sql": WRITE})
                with anyio.fail_after(30):
                    while not [e for e in store.tail(5) if e["type"] == ev.HELD]:
                        await anyio.sleep(0.1)
                busy = await call(on_b, "sql_query", read)
                await call(on_a, "approvals_list", {})  # no limit on the approvals tools
                tg.cancel_scope.cancel()  # the agent gives up waiting: the hold stays, the slot ends
            assert busy.is_error and "[rate_limited]" in busy.content[0].text, busy.content[0].text
            assert "1 calls running" in busy.content[0].text and "Retry in about 1 s" in busy.content[0].text
            with anyio.fail_after(30):  # A records the abandoned call's end and frees its slot
                while not (ok := await call(on_b, "sql_query", read)).structured_content:
                    await anyio.sleep(0.2)
            assert ok.structured_content["rows"] == [[200]]
            # Per minute, across both: the write, the refused read (not counted), this read, one more.
            assert not (await call(on_a, "sql_query", read)).is_error
            late = await call(on_b, "sql_query", read)
            assert late.is_error and "made 3 calls in the last minute" in late.content[0].text, late.content[0].text
            assert "Retry in" in late.content[0].text
            refusals = [e for e in store.iter_all() if e["type"] == ev.DENIED and e["error"]["code"] == "rate_limited"]
            assert len(refusals) >= 2
            assert all(store.call(e["call_id"])[0]["type"] == ev.REQUESTED for e in refusals)
        finally:
            store.close()
