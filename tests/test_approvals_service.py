"""One approvals service (tools/approvals.py) for every channel: the MCP tools and the CLI (through the
gateway), the JSON API and the page. Before, the MCP tools and the CLI had a service of their own that
took reasons of any length and expired overdue holds as it listed them, while the HTTP channels capped
reasons at 2000 characters and showed overdue holds as expired without writing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from mcp import Client

from bastion.policy.errors import InvalidInput, PendingApproval
from bastion.server import approvals_api, cli
from bastion.server.app import create_server
from bastion.server.build import build_gateway
from bastion.server.config import load
from bastion.store import events as ev
from bastion.store.approvals import HoldStatus
from bastion.tools import approvals
from bastion.tools.calls import Caller
from bastion.tools.gateway import Gateway
from tests.test_holds import DBA, DEV, WRITE, write_config

pytestmark = pytest.mark.anyio


async def held(tmp_path: Path, demo_db: Path) -> tuple[Gateway, str]:
    gw = build_gateway(load(write_config(tmp_path, demo_db, wait="0.2s")))
    with pytest.raises(PendingApproval):
        await gw.sql_query(DEV, "demo", WRITE, None)
    (hold,) = gw.approvals.list()
    return gw, hold.hold_id


async def test_every_channel_lists_the_statuses_of_the_one_enum(tmp_path: Path, demo_db: Path) -> None:
    every = [str(s) for s in HoldStatus]
    assert list(approvals.STATUSES) == every
    status_option = next(p for p in cli.approvals_list.params if p.name == "status")
    assert list(status_option.type.choices) == [*every, "all"]  # type: ignore[attr-defined]
    assert approvals_api._statuses("all") is None and approvals.statuses(None) == set(HoldStatus)
    server = create_server(load(write_config(tmp_path, demo_db)), identity_for=lambda ctx: DBA)
    async with Client(server) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "approvals_list")
    status = tool.input_schema["properties"]["status"]
    assert next(s["enum"] for s in status["anyOf"] if "enum" in s) == every


async def test_a_reason_over_the_cap_is_refused_on_the_mcp_and_cli_channel_too(tmp_path: Path, demo_db: Path) -> None:
    gw, hold_id = await held(tmp_path, demo_db)
    with pytest.raises(InvalidInput, match="2001 characters"):
        await gw.approval_decide(Caller(DBA), hold_id, True, "x" * (approvals.MAX_REASON + 1))
    hold = gw.approvals.get(hold_id)
    assert hold is not None and hold.status == HoldStatus.PENDING and hold.votes == ()  # nothing recorded
    decided = await gw.approval_decide(Caller(DBA), hold_id, True, "x" * approvals.MAX_REASON)
    assert decided["status"] == "approved"


async def test_an_overdue_hold_is_shown_expired_alike_and_listing_writes_nothing(tmp_path: Path, demo_db: Path) -> None:
    gw, hold_id = await held(tmp_path, demo_db)
    later = gw.approvals.clock() + timedelta(hours=2)
    gw.approvals.clock = lambda: later  # a clock is the one thing tests may fake
    assert await gw.approvals_list(Caller(DBA), "pending") == []
    (listed,) = await gw.approvals_list(Caller(DBA), "expired")  # the MCP tool's and the CLI's listing
    (seen,) = await approvals.list_visible(gw.approvals, DBA, ["expired"])  # the API's and the page's
    assert listed["hold_id"] == seen.hold_id == hold_id and listed["status"] == "expired"
    assert approvals.effective_status(seen, later) == HoldStatus.EXPIRED
    stored = gw.approvals.get(hold_id)
    assert stored is not None and stored.status == HoldStatus.PENDING  # reading never writes...
    assert not [e for e in gw.store.iter_all() if e["type"] == ev.APPROVAL_EXPIRED]
    gw.approvals.expire_due()  # ...the gateway's expire_holds does, every few seconds
    assert gw.approvals.get(hold_id).status == HoldStatus.EXPIRED  # type: ignore[union-attr]


async def test_an_unknown_status_is_refused_with_the_statuses_there_are(tmp_path: Path, demo_db: Path) -> None:
    gw, _ = await held(tmp_path, demo_db)
    with pytest.raises(InvalidInput, match="unknown status `waiting`") as caught:
        await gw.approvals_list(Caller(DBA), "waiting")
    assert caught.value.hint is not None and "pending, approved, denied, expired, consumed" in caught.value.hint
