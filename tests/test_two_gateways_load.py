"""The load test of tests/bench/bench_two_gateways.py, small: two real gateways on one PostgreSQL
store, 8 SDK clients x 25 mixed calls spread across both. Every call is recorded exactly once with
the outcome its client saw, the one chain verifies, nothing deadlocks."""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.bench.bench_two_gateways import Call, check_record, gateway_config, load
from tests.postgres_server import PgServer
from tests.store_backends import postgres_url
from tests.test_http import serving


@pytest.mark.anyio
async def test_two_gateways_under_mixed_load_record_every_call_once_in_one_chain(
        tmp_path: Path, demo_db: Path, pg_server: PgServer, pg_schema: str) -> None:
    demo = tmp_path / "demo.db"
    shutil.copy(demo_db, demo)
    url = postgres_url(pg_server, pg_schema)
    with ExitStack() as stack:
        urls = [stack.enter_context(serving(gateway_config(tmp_path / name, demo, f'url = "{url}"')))[1]
                for name in ("a", "b")]
        outcome = await load(urls, clients=8, calls=25, timeout=300)
    assert len(outcome.calls) == 200
    assert {c.error for c in outcome.calls} == {True, False}  # answers and refusals both
    assert check_record([url], outcome) == []
    # The check is not vacuous: a call the record lacks is named.
    outcome.calls.append(Call("load never-sent", "SELECT 1"))
    assert check_record([url], outcome) == ["load never-sent: recorded 0 times"]
