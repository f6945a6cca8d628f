"""Two real gateways (`bastion serve --http`) on one PostgreSQL store: a call held on one is approved
through the other and runs where it waits; an egress budget counts reads made through both; the
record is one chain."""

from __future__ import annotations

import shutil
import sqlite3
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bastion.store import events as ev
from bastion.store.postgres_store import PostgresAuditStore
from bastion.store.verify import verify
from tests.held_config import held_writes_config, sqlite_target
from tests.postgres_server import PgServer
from tests.store_backends import postgres_url
from tests.test_http import serving

pytestmark = pytest.mark.anyio
WRITE = "UPDATE products SET price = price * 2"  # no WHERE: read-write holds it for review


def gateway_config(folder: Path, demo: Path, url: str, subject: str, groups: str, extra: str = "") -> Path:
    """One gateway's config: the shared demo database, the shared PostgreSQL store, its own identity."""
    return held_writes_config(folder, sqlite_target(demo), wait="30s", subject=subject, groups=groups,
                              audit=f'url = "{url}"', extra=extra)


@pytest.fixture
def shared(tmp_path: Path, demo_db: Path, pg_server: PgServer, pg_schema: str) -> tuple[Path, str]:
    demo = tmp_path / "demo.db"
    shutil.copy(demo_db, demo)
    return demo, postgres_url(pg_server, pg_schema)


def prices(demo: Path) -> list[float]:
    with sqlite3.connect(demo) as db:
        return [row[0] for row in db.execute("SELECT price FROM products ORDER BY id")]


async def call(url: str, tool: str, arguments: dict[str, Any]) -> Any:
    async with httpx2.AsyncClient(timeout=60) as http, Client(streamable_http_client(url, http_client=http)) as client:
        return await client.call_tool(tool, arguments)


async def test_a_call_held_on_one_gateway_is_approved_through_another_and_runs_where_it_waits(
        tmp_path: Path, shared: tuple[Path, str]) -> None:
    demo, url = shared
    requester = gateway_config(tmp_path / "a", demo, url, "dev", '["developers"]')
    approver = gateway_config(tmp_path / "b", demo, url, "dora", '["dba"]')
    before = prices(demo)
    with ExitStack() as stack:
        (_, on_a), (_, on_b) = stack.enter_context(serving(requester)), stack.enter_context(serving(approver))
        outcome: dict[str, Any] = {}

        async def request() -> None:
            outcome["result"] = await call(on_a, "sql_query", {"connection": "demo", "sql": WRITE,
                                                               "reason": "double the prices"})
            outcome["returned"] = time.monotonic()

        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            with anyio.fail_after(30):
                while not (pending := (await call(on_b, "approvals_list", {})).structured_content["holds"]):
                    await anyio.sleep(0.1)
            decided = await call(on_b, "approval_decide", {"hold_id": pending[0]["hold_id"], "approve": True})
            approved = time.monotonic()
            assert not decided.is_error, decided.content[0].text
    assert not outcome["result"].is_error, outcome["result"].content[0].text
    assert prices(demo) == [p * 2 for p in before]  # it ran, once
    print(f"approved on B -> returned on A: {outcome['returned'] - approved:.3f} s")
    store = PostgresAuditStore(url)
    try:
        events = list(store.iter_all())
        (held,) = [e for e in events if e["type"] == ev.HELD]
        timeline = store.call(held["call_id"])
        assert [e["type"] for e in timeline] == [ev.REQUESTED, ev.HELD, ev.FINISHED]
        (granted,) = [e for e in events if e["type"] == ev.APPROVAL_GRANTED]
        assert granted["identity"]["subject"] == "dora" and granted["instance"] != timeline[0]["instance"]
        assert timeline[-1]["instance"] == timeline[0]["instance"]  # it ran on the gateway it was held on
        assert verify(store.conn).ok
    finally:
        store.close()


async def test_an_egress_budget_counts_reads_made_through_both_gateways(tmp_path: Path,
                                                                        shared: tuple[Path, str]) -> None:
    demo, url = shared
    budget = """
[[alerts]]
id = "egress"
kind = "egress"
max_rows = 300
window = "10m"
action = "deny"
"""
    first = gateway_config(tmp_path / "a", demo, url, "dev", '["developers"]', budget)
    second = gateway_config(tmp_path / "b", demo, url, "dev", '["developers"]', budget)
    with ExitStack() as stack:
        (_, on_a), (_, on_b) = stack.enter_context(serving(first)), stack.enter_context(serving(second))
        read = {"connection": "demo", "sql": "SELECT id, name FROM customers"}  # 200 rows
        assert not (await call(on_a, "sql_query", read)).is_error
        assert not (await call(on_b, "sql_query", read)).is_error  # 400 rows read, through two gateways
        refused = await call(on_a, "sql_query", read)
    assert refused.is_error and "alert:egress" in refused.content[0].text, refused.content[0].text
    assert "400 rows" in refused.content[0].text
