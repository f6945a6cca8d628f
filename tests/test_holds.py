"""Held calls end to end on the demo database: the agent waits, an approver decides through a
channel, and the held call runs exactly once. Channels here: the gateway's own API (what the MCP
tools and HTTP API call), the MCP approver tools, and the CLI in another process."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from mcp import Client

from bastion.policy import Identity
from bastion.policy.errors import ApprovalDenied, BastionError, HoldExpired, PendingApproval, SelfApproval
from bastion.server.app import create_server
from bastion.server.build import build_gateway
from bastion.server.config import load
from bastion.store import events as ev
from bastion.tools.executors import postgres as postgres_executor
from tests.cancelling import cancel_once
from tests.conftest import requirement
from tests.postgres_server import PgServer, wait_until
from tests.held_config import held_writes_config, sqlite_target
from bastion.tools.calls import Caller
from bastion.tools.gateway import Gateway

pytestmark = pytest.mark.anyio
DEV = Caller(Identity("dev", frozenset({"developers"})), session="s1")
DBA = Identity("dora", frozenset({"dba"}))
WRITE = "UPDATE products SET price = price * 2"  # no WHERE: read-write holds it for review


def write_config(tmp_path: Path, demo_db: Path, wait: str = "3s", subject: str = "dev", groups: str = '["developers"]') -> Path:
    shutil.copy(demo_db, tmp_path / "demo.db")
    return held_writes_config(tmp_path, sqlite_target("demo.db"), wait=wait, subject=subject, groups=groups)


@pytest.fixture
def config(tmp_path: Path, demo_db: Path) -> Path:
    return write_config(tmp_path, demo_db)


def prices(config: Path) -> list[float]:
    with sqlite3.connect(config.parent / "demo.db") as db:
        return [row[0] for row in db.execute("SELECT price FROM products ORDER BY id")]


def events(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    return [e for e in gw.store.iter_all() if e["type"] == kind]


async def raised(call: Any) -> BaseException | None:
    """The exception a call raised (outside the task group, so it is not wrapped in a group)."""
    try:
        await call
    except Exception as error:
        return error
    return None


async def approve_soon(gw: Gateway, approver: Identity = DBA, approve: bool = True, reason: str | None = None) -> None:
    """An approver answers the first pending hold as soon as it appears."""
    with anyio.fail_after(10):
        while not (pending := gw.approvals.list("pending")):
            await anyio.sleep(0.05)
    await gw.approval_decide(Caller(approver), pending[0].hold_id, approve, reason)


@requirement("approval:runs-once")
async def test_a_held_call_approved_while_it_waits_runs_exactly_once(config: Path) -> None:
    before = prices(config)
    gw = build_gateway(load(config))
    async with anyio.create_task_group() as tg:
        tg.start_soon(approve_soon, gw)
        done = await gw.sql_query(DEV, "demo", WRITE, "double the prices")
    assert done.result.row_count == 10 and prices(config) == [p * 2 for p in before]
    (hold,) = gw.approvals.list()
    assert hold.status == "consumed" and hold.consumed_by_call == done.call_id
    assert [e["type"] for e in gw.store.call(done.call_id)] == [ev.REQUESTED, ev.HELD, ev.FINISHED]
    # The approval was single-use: the same text again is held anew, and does not run.
    gw.guard.holds.wait_s = 0.3  # type: ignore[union-attr]
    with pytest.raises(PendingApproval):
        await gw.sql_query(DEV, "demo", WRITE, None)
    assert prices(config) == [p * 2 for p in before]


@requirement("approval:pending-joins")
async def test_pending_then_reissued_joins_the_same_hold_and_runs_once_approved(config: Path) -> None:
    gw = build_gateway(load(config))
    gw.guard.holds.wait_s = 0.3  # type: ignore[union-attr]
    with pytest.raises(PendingApproval) as first:
        await gw.sql_query(DEV, "demo", WRITE, None)
    assert "call sql_query again with exactly the same text" in first.value.for_agent().lower()
    with pytest.raises(PendingApproval):
        await gw.sql_query(DEV, "demo", WRITE, None)
    (hold,) = gw.approvals.list()  # one hold for both calls, never a duplicate
    assert hold.hold_id in first.value.message
    joined = [e["result"]["joined"] for e in events(gw, ev.HELD)]
    assert joined == [False, True] and len(events(gw, ev.PENDING)) == 2

    await gw.approval_decide(Caller(DBA), hold.hold_id, True, "fine")
    done = await gw.sql_query(DEV, "demo", WRITE, None)  # the identical call now runs at once
    assert done.result.row_count == 10


@requirement("approval:exact-text")
async def test_an_approval_does_not_cover_a_text_changed_by_one_character(config: Path) -> None:
    gw = build_gateway(load(config))
    gw.guard.holds.wait_s = 0.3  # type: ignore[union-attr]
    with pytest.raises(PendingApproval):
        await gw.sql_query(DEV, "demo", WRITE, None)
    (hold,) = gw.approvals.list()
    await gw.approval_decide(Caller(DBA), hold.hold_id, True, None)
    with pytest.raises(PendingApproval):
        await gw.sql_query(DEV, "demo", WRITE.replace("* 2", "* 3"), None)
    assert len(gw.approvals.list()) == 2 and gw.approvals.get(hold.hold_id).status == "approved"  # type: ignore[union-attr]


@requirement("approval:no-self-approval")
async def test_the_requester_cannot_approve_their_own_call_even_as_an_approver(tmp_path: Path, demo_db: Path) -> None:
    config = write_config(tmp_path, demo_db, wait="0.3s", groups='["developers", "dba"]')
    gw = build_gateway(load(config))
    me = Caller(Identity("dev", frozenset({"developers", "dba"})))
    with pytest.raises(PendingApproval):
        await gw.sql_query(me, "demo", WRITE, None)
    (hold,) = gw.approvals.list()
    with pytest.raises(SelfApproval):
        await gw.approval_decide(me, hold.hold_id, True, None)
    assert gw.approvals.get(hold.hold_id).status == "pending"  # type: ignore[union-attr]


async def test_a_denial_reaches_the_waiting_agent_with_the_reason(config: Path) -> None:
    before = prices(config)
    gw = build_gateway(load(config))
    async with anyio.create_task_group() as tg:
        tg.start_soon(approve_soon, gw, DBA, False, "add a WHERE on id")
        denied = await raised(gw.sql_query(DEV, "demo", WRITE, None))
    assert isinstance(denied, ApprovalDenied) and '`dora` denied this held call: "add a WHERE on id"' in denied.message
    assert prices(config) == before and events(gw, ev.DENIED)


async def test_an_expired_hold_tells_the_waiting_agent(tmp_path: Path, demo_db: Path) -> None:
    gw = build_gateway(load(write_config(tmp_path, demo_db, wait="1s")))
    later = datetime.now(timezone.utc) + timedelta(hours=2)

    async def jump_the_clock() -> None:
        with anyio.fail_after(10):
            while not gw.approvals.list("pending"):
                await anyio.sleep(0.05)
        gw.approvals.clock = lambda: later  # a clock is the one thing tests may fake

    async with anyio.create_task_group() as tg:
        tg.start_soon(jump_the_clock)
        expired = await raised(gw.sql_query(DEV, "demo", WRITE, None))
    assert isinstance(expired, HoldExpired)
    assert events(gw, ev.EXPIRED) and events(gw, ev.APPROVAL_EXPIRED)


@requirement("approval:cancel-keeps-pending")
async def test_a_waiting_call_cancelled_by_the_client_leaves_the_hold_pending(tmp_path: Path, demo_db: Path) -> None:
    gw = build_gateway(load(write_config(tmp_path, demo_db, wait="60s")))

    async def cancel_once_waiting(scope: anyio.CancelScope) -> None:
        # Once the call waits for approvers (its hold made and previewed), not after a fixed time:
        # on a loaded host 0.5 s did not always get the call that far.
        while not (holds := gw.approvals.list()) or holds[0].preview is None:
            await anyio.sleep(0.05)
        await anyio.sleep(0.2)
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_once_waiting, tg.cancel_scope)
        await gw.sql_query(DEV, "demo", WRITE, None)
    (hold,) = gw.approvals.list()
    assert hold.status == "pending"
    last = events(gw, ev.PENDING)[-1]
    assert last["result"] == {"hold_id": hold.hold_id, "status": "pending", "cancelled": True}


@requirement("approval:cancel-keeps-pending", "inv:record-before-run", "inv:cancel-cancels-query")
async def test_a_call_cancelled_by_the_mcp_client_while_its_impact_preview_runs_ends_once_as_pending(
        tmp_path: Path, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A held write on PostgreSQL whose dry run waits on a lock the test holds: the agent's own MCP
    client cancels it there (after the hold, before the wait). The call still ends in exactly one
    terminal event, the hold stays pending for approvers, and the dry run stops on the server."""
    # The lock, not the preview's own timeout (10 s), is what keeps the dry run waiting.
    monkeypatch.setattr(postgres_executor, "PREVIEW_TIMEOUT_S", 300.0)
    with pg_server.scratch_schema("hp", f"""
            CREATE TABLE {{schema}}.items (id int PRIMARY KEY, state text NOT NULL);
            INSERT INTO {{schema}}.items SELECT g, 'new' FROM generate_series(1, 5) g;
            GRANT UPDATE ON {{schema}}.items TO "{pg_server.gateway_role}";""") as schema:
        config = load(held_writes_config(tmp_path, f'kind = "postgres"\ntarget = "{pg_server.dsn(user=pg_server.gateway_role)}"\n'
                                                    f'search_path = "{schema}"', name="pg", wait="120s"))
        gw = build_gateway(config)

        def dry_runs_waiting() -> int:
            return int(pg_server.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'",
                                         (pg_server.gateway_role,))[0][0])  # type: ignore[call-overload]

        try:
            with psycopg.connect(pg_server.dsn()) as locker:
                locker.execute(f"LOCK TABLE {schema}.items IN ACCESS EXCLUSIVE MODE")  # held until rollback
                async with Client(create_server(config, gateway=gw)) as agent:
                    await cancel_once(dry_runs_waiting, lambda: agent.call_tool(
                        "sql_query", {"connection": "pg", "sql": "UPDATE items SET state = 'gone'"}))
                    # The server side ends the call after the client has gone: wait for its end (or hang).
                    with anyio.fail_after(60):
                        while not [e for e in gw.store.iter_all() if e["type"] in ev.TERMINAL]:
                            await anyio.sleep(0.05)
                    # The dry run was cancelled on the server, not left waiting for the lock until its
                    # statement_timeout (the rule's 30 s) ended it: a guard of 20 s tells them apart.
                    assert await anyio.to_thread.run_sync(lambda: wait_until(lambda: not dry_runs_waiting(), timeout=20))
                    locker.rollback()
                    (hold,) = gw.approvals.list()
                    assert hold.status == "pending"  # approvers may still decide; the same text again joins it
                    assert hold.preview == {"error": "the requester cancelled the call before its preview ended"}
                    (requested,) = events(gw, ev.REQUESTED)
                    ends = [e for e in gw.store.call(requested["call_id"]) if e["type"] in ev.TERMINAL]
                    assert [e["type"] for e in ends] == [ev.PENDING]
                    assert ends[0]["result"] == {"hold_id": hold.hold_id, "status": "pending", "cancelled": True}
        finally:
            await gw.shutdown()
        assert pg_server.execute(f"SELECT count(*) FROM {schema}.items WHERE state = 'new'") == [(5,)]


async def test_a_call_cancelled_before_its_hold_is_made_ends_once_as_failed(config: Path) -> None:
    """The client gave up before the hold existed: no hold is made, and the call still ends, once."""
    from bastion.policy import Decision, Verdict

    gw = build_gateway(load(config))
    assert gw.guard.holds is not None
    review = Decision(Verdict.REVIEW, ("dev-write:unfiltered",), "a write without WHERE", read_only=False)
    with anyio.CancelScope() as scope:
        scope.cancel()  # already cancelled when it is held
        await gw.guard.holds.settle("call-early", DEV, "sql_query", "demo", WRITE, None, review, {})
    assert scope.cancelled_caught and gw.approvals.list() == []
    ends = [e for e in gw.store.iter_all() if e["type"] in ev.TERMINAL]
    assert [(e["type"], e["call_id"], e["error"]["code"]) for e in ends] == [(ev.FAILED, "call-early", "cancelled")]


async def test_the_impact_preview_counts_the_rows_and_changes_nothing(config: Path) -> None:
    before = prices(config)
    gw = build_gateway(load(config))
    gw.guard.holds.wait_s = 0.3  # type: ignore[union-attr]
    with pytest.raises(PendingApproval):
        await gw.sql_query(DEV, "demo", WRITE, None)
    (hold,) = gw.approvals.list()
    (statement,) = hold.preview["statements"]  # type: ignore[index]
    assert statement["kind"] == "update" and statement["rows"] == 10 and "SCAN products" in statement["plan"]
    assert prices(config) == before


@requirement("approval:runs-once")
async def test_the_mcp_client_gets_progress_and_an_approver_answers_from_their_own_mcp_client(config: Path) -> None:
    agent_server = create_server(load(config))
    progress: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with Client(agent_server) as agent:
        tools = {t.name for t in (await agent.list_tools()).tools}
        assert "approval_decide" not in tools  # approvers' tools are for approvers only

        async def approver() -> None:
            dba_server = create_server(load(config), stdio_identity=DBA)  # another gateway on the same store
            async with Client(dba_server) as dba:
                assert "approval_decide" in {t.name for t in (await dba.list_tools()).tools}
                with anyio.fail_after(15):
                    while not (held := (await dba.call_tool("approvals_list", {})).structured_content["holds"]):
                        await anyio.sleep(0.2)
                await anyio.sleep(1.5)  # long enough for the waiting agent to hear progress
                decided = await dba.call_tool("approval_decide", {"hold_id": held[0]["hold_id"], "approve": True})
                assert decided.structured_content["status"] == "approved", decided

        async with anyio.create_task_group() as tg:
            tg.start_soon(approver)
            result = await agent.call_tool("sql_query", {"connection": "demo", "sql": WRITE}, progress_callback=on_progress)
    assert not result.is_error and result.structured_content["row_count"] == 10
    assert any("held for approval by `dba`" in m for m in progress)


@requirement("approval:runs-once")
async def test_an_approval_from_the_cli_in_another_process_releases_the_waiting_call(tmp_path: Path, demo_db: Path) -> None:
    # The wait is a hang guard: two CLI processes start within it, which on a loaded host took over 30 s.
    config = write_config(tmp_path, demo_db, wait="120s")
    approver_config = tmp_path / "approver.toml"
    approver_config.write_text(config.read_text().replace('subject = "dev"', 'subject = "dora"')
                               .replace('groups = ["developers"]\n\n[approvals]', 'groups = ["dba"]\n\n[approvals]', 1))
    gw = build_gateway(load(config))

    async def approve_from_cli() -> None:
        with anyio.fail_after(10):
            while not gw.approvals.list("pending"):
                await anyio.sleep(0.05)
        listed = await anyio.run_process([sys.executable, "-m", "bastion.server", "approvals", "list", "--json",
                                          "--config", str(approver_config)])
        hold = json.loads(listed.stdout.decode().splitlines()[0])
        assert hold["text"] == WRITE and hold["requester"]["subject"] == "dev"
        done = await anyio.run_process([sys.executable, "-m", "bastion.server", "approvals", "approve", hold["hold_id"],
                                        "--config", str(approver_config)])
        assert b"approved" in done.stdout

    async with anyio.create_task_group() as tg:
        tg.start_soon(approve_from_cli)
        done = await gw.sql_query(DEV, "demo", WRITE, None)
    assert done.result.row_count == 10


def test_the_cli_refuses_a_denial_without_a_reason_and_an_unknown_hold(config: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bastion.server", "approvals", "deny", "hold-0000", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--reason" in result.stderr
    result = subprocess.run([sys.executable, "-m", "bastion.server", "approvals", "approve", "hold-0000", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "hold_not_found" in result.stderr


async def test_approver_errors_are_bastion_errors_with_codes(config: Path) -> None:
    gw = build_gateway(load(config))
    with pytest.raises(BastionError) as caught:
        await gw.approval_decide(Caller(DBA), "hold-missing", True, None)
    assert caught.value.code == "hold_not_found"


def self_confirm_config(tmp_path: Path, demo_db: Path) -> Path:
    config = write_config(tmp_path, demo_db, wait="0.5s")
    config.write_text(config.read_text().replace('approvers = ["dba"]', 'approvers = ["dba"]\nself_confirm = true'))
    return config


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_self_confirm_rule_asks_the_requester_through_elicitation(tmp_path: Path, demo_db: Path, mode: str) -> None:
    from mcp import types

    config = self_confirm_config(tmp_path, demo_db)
    asked: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"confirm": True})

    async with Client(create_server(load(config)), mode=mode, elicitation_callback=answer) as client:
        ran = await client.call_tool("sql_query", {"connection": "demo", "sql": WRITE})
        read = await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT 1"})
    assert not ran.is_error and ran.structured_content["row_count"] == 10
    assert not read.is_error and len(asked) == 1 and WRITE in asked[0]  # only the held call is asked about
    gw_events = [e for e in load_events(config) if e["type"] == ev.REQUESTED and e["text"] == WRITE]
    assert gw_events[0]["decision"]["confirmed_by"] == "dev"


async def test_declined_or_unaskable_confirmation_goes_to_approvers(tmp_path: Path, demo_db: Path) -> None:
    from mcp import types

    config = self_confirm_config(tmp_path, demo_db)

    async def decline(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    async with Client(create_server(load(config)), elicitation_callback=decline) as client:
        declined = await client.call_tool("sql_query", {"connection": "demo", "sql": WRITE})
    async with Client(create_server(load(config))) as client:  # declares no elicitation capability
        unaskable = await client.call_tool("sql_query", {"connection": "demo", "sql": WRITE})
    for result in (declined, unaskable):
        assert result.is_error and "[pending_approval]" in result.content[0].text


def load_events(config: Path) -> list[dict[str, Any]]:
    from bastion.store import SqliteAuditStore

    return list(SqliteAuditStore(config.parent / "bastion-audit.db").iter_all())


async def test_approvers_are_told_by_webhook_with_a_link_to_the_page(tmp_path: Path, demo_db: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    config = write_config(tmp_path, demo_db, wait="0.3s")
    config.write_text(config.read_text().replace('[approvals]\nwait = "0.3s"', f'''[approvals]
wait = "0.3s"
base_url = "https://bastion.example.com"
webhooks = [{{url = "http://127.0.0.1:{hook.server_port}/slack", format = "slack"}}]'''))
    gw = build_gateway(load(config))
    try:
        with pytest.raises(PendingApproval):
            await gw.sql_query(DEV, "demo", WRITE, "double the prices")
        (hold,) = gw.approvals.list()
        await gw.approval_decide(Caller(DBA), hold.hold_id, True, None)
        await gw.close()  # flushes deliveries
    finally:
        hook.shutdown()
        hook.server_close()
    texts = [r["text"] for r in received]
    assert len(texts) == 2 and f"https://bastion.example.com/approvals/{hold.hold_id}" in texts[0]
    assert "approved" in texts[1].lower()
    delivered = [e for e in gw.store.iter_all() if e["type"] == "approval.webhook.delivered"]
    assert len(delivered) == 2 and "127.0.0.1" not in json.dumps(delivered)  # the URL (a secret for Slack) is never logged
