"""The four tools end to end through the SDK's in-memory Client, in both protocol eras."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client

from bastion.server.app import create_server
from bastion.server.config import load
from bastion.store import SqliteAuditStore
from bastion.store import events as ev
from tests.conftest import requirement

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, demo_config: Path) -> AsyncIterator[Client]:
    server = create_server(load(demo_config))
    async with Client(server, mode=request.param) as c:
        yield c


def audit(demo_config: Path) -> SqliteAuditStore:
    return SqliteAuditStore(demo_config.parent / "bastion-audit.db")


def text_of(result: object) -> str:
    return result.content[0].text  # type: ignore[attr-defined]


async def test_the_tool_listing_is_small_and_honest(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"list_connections", "describe", "check", "sql_query", "shell_run"}
    listing = json.dumps([t.model_dump(mode="json", exclude_none=True) for t in tools.values()])
    assert len(listing) / 4 < 1500, f"tool listing is ~{len(listing) // 4} tokens"
    assert tools["describe"].annotations.read_only_hint and tools["check"].annotations.read_only_hint
    for name in ("sql_query", "shell_run"):
        assert tools[name].annotations.read_only_hint is False and tools[name].annotations.destructive_hint


async def test_list_connections_shows_what_the_rules_allow(client: Client) -> None:
    result = await client.call_tool("list_connections", {})
    demo, workspace = result.structured_content["connections"]
    assert demo["name"] == "demo" and demo["kind"] == "sqlite" and "SELECT" in demo["rules"]
    assert workspace["name"] == "workspace" and workspace["kind"] == "local" and "git" in workspace["rules"]


async def test_describe_lists_tables_and_one_table_in_detail(client: Client) -> None:
    everything = (await client.call_tool("describe", {"connection": "demo"})).structured_content["tables"]
    assert {t["name"] for t in everything} >= {"customers", "orders", "products", "order_items", "order_totals"}
    (orders,) = (await client.call_tool("describe", {"connection": "demo", "table": "orders"})).structured_content["tables"]
    assert [c["name"] for c in orders["columns"]][:3] == ["id", "customer_id", "status"]


async def test_describe_an_unknown_table_lists_what_exists(client: Client) -> None:
    result = await client.call_tool("describe", {"connection": "demo", "table": "ordrs"})
    assert result.is_error and "no table `ordrs`" in text_of(result) and "main.orders" in text_of(result)


async def test_sql_query_returns_rows_and_a_text_table(client: Client, demo_config: Path) -> None:
    result = await client.call_tool("sql_query", {"connection": "demo", "reason": "check data",
                                                  "sql": "SELECT id, city FROM customers ORDER BY id LIMIT 2"})
    assert not result.is_error
    data = result.structured_content
    assert data["columns"] == ["id", "city"] and data["row_count"] == 2 and not data["truncated"]
    assert text_of(result).splitlines()[0] == "id | city" and data["call_id"] in text_of(result)
    events = audit(demo_config).call(data["call_id"])
    assert [e["type"] for e in events] == [ev.REQUESTED, ev.FINISHED]
    assert events[0]["reason"] == "check data" and events[0]["identity"]["subject"] == "demo-agent"
    assert events[1]["result"]["rows"] == data["rows"]


async def test_a_drop_is_refused_with_the_rule_and_what_would_pass(client: Client, demo_config: Path) -> None:
    result = await client.call_tool("sql_query", {"connection": "demo", "sql": "DROP TABLE customers"})
    message = text_of(result)
    assert result.is_error and "[denied]" in message and "developers-read:kind" in message
    assert "Only EXPLAIN, SELECT statements would pass" in message
    last = audit(demo_config).tail(2)
    assert [e["type"] for e in last] == [ev.REQUESTED, ev.DENIED] and last[0]["text"] == "DROP TABLE customers"


async def test_results_are_capped_and_marked_truncated(client: Client) -> None:
    result = await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT * FROM orders"})
    data = result.structured_content
    assert data["row_count"] == 200 and data["truncated"] and "truncated" in text_of(result)


async def test_check_explains_without_running(client: Client, demo_config: Path) -> None:
    result = await client.call_tool("check", {"connection": "demo", "text": "DELETE FROM orders"})
    assert result.structured_content["verdict"] == "deny"
    assert result.structured_content["facts"]["statements"][0]["kind"] == "delete"
    assert load(demo_config) and audit(demo_config).tail(1)[0]["type"] == ev.FINISHED


@requirement("inv:bad-input-recorded")
@pytest.mark.parametrize(("sql", "expected"), [
    ("", "[invalid_input] the SQL text is empty"),
    ("   \n ", "[invalid_input] the SQL text is empty"),
    ("SELECT '" + "x" * (1024 * 1024) + "'", "the limit is 262,144"),
    ("SELECT '\ud800'", "not valid UTF-8"),
    ("SELECT 'a\x00b'", "NUL"),
    ("SELEC * FROM orders", "[denied] cannot parse this SQL"),
    ("SELECT * FROM", "[denied] cannot parse this SQL"),
])
async def test_bad_input_gets_a_clear_error_and_is_recorded(client: Client, demo_config: Path, sql: str, expected: str) -> None:
    before = len(list(audit(demo_config).iter_all()))
    result = await client.call_tool("sql_query", {"connection": "demo", "sql": sql})
    assert result.is_error and expected in text_of(result)
    events = list(audit(demo_config).iter_all())[before:]
    assert [e["type"] for e in events] == [ev.REQUESTED, ev.DENIED]


@requirement("inv:bad-input-recorded")
async def test_an_unknown_connection_is_named_and_recorded(client: Client, demo_config: Path) -> None:
    result = await client.call_tool("sql_query", {"connection": "prod", "sql": "SELECT 1"})
    assert result.is_error and "no connection `prod`" in text_of(result) and "`demo`" in text_of(result)
    requested, denied = audit(demo_config).tail(2)
    assert requested["connection"] == "prod" and denied["error"]["code"] == "unknown_connection"


@requirement("inv:terminal-event")
async def test_every_call_ends_in_exactly_one_terminal_event(client: Client, demo_config: Path) -> None:
    for sql in ("SELECT 1", "DROP TABLE orders", "", "SELECT * FROM nope_table"):
        await client.call_tool("sql_query", {"connection": "demo", "sql": sql})
    store = audit(demo_config)
    calls: dict[str, list[str]] = {}
    for event in store.iter_all():
        calls.setdefault(event["call_id"], []).append(event["type"])
    for types in calls.values():
        assert types[0] == ev.REQUESTED and len(types) == 2 and types[1] in ev.TERMINAL
    assert store.open_calls() == []


async def test_a_database_error_is_clear_and_recorded_as_failed(client: Client, demo_config: Path) -> None:
    result = await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT nope FROM customers"})
    assert result.is_error and "[rejected_by_database] SQLite error: no such column: nope" in text_of(result)
    assert audit(demo_config).tail(1)[0]["type"] == ev.FAILED


async def test_calls_are_grouped_by_a_session_the_client_chose_or_by_the_gateway_process(client: Client,
                                                                                            demo_config: Path) -> None:
    await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT 1"}, meta={"io.bastion/session": "ticket-42"})
    await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT 2"})
    first, second = [e for e in audit(demo_config).iter_all() if e["type"] == ev.REQUESTED][-2:]
    assert first["session"] == "ticket-42"
    # the MCP session (or this gateway process), with the person in it
    assert second["session"].endswith(f"/{second['identity']['subject']}") and second["session"] != "ticket-42"


async def test_the_server_names_the_installed_version(demo_config: Path) -> None:
    from importlib.metadata import version

    async with Client(create_server(load(demo_config)), mode="legacy") as c:
        assert c.server_info is not None and c.server_info.version == version("agent-bastion")


async def test_every_tool_translates_bastion_errors_at_the_edge(client: Client) -> None:
    # One decorator (server/app.py's agent_errors) for every tool: a Bastion error from any of them
    # reaches the agent as its curated text with its stable code, never as raw exception text.
    calls = {"describe": {"connection": "nowhere"}, "check": {"connection": "nowhere", "text": "SELECT 1"},
             "sql_query": {"connection": "nowhere", "sql": "SELECT 1"},
             "shell_run": {"connection": "nowhere", "command": "ls"}}
    for name, arguments in calls.items():
        result = await client.call_tool(name, arguments)
        text = text_of(result)
        assert result.is_error and "[unknown_connection] there is no connection `nowhere`" in text, (name, text)
        assert "UnknownConnection" not in text and "Traceback" not in text


async def test_people_on_one_gateway_process_are_each_their_own_session(demo_config: Path) -> None:
    from bastion.policy import Identity

    def who(ctx: object) -> Identity:  # stands in for the bearer token each person's client sends
        meta = ctx.request_context.meta or {}  # type: ignore[attr-defined]
        return Identity(str(meta.get("who")), frozenset({"developers"}))

    async with Client(create_server(load(demo_config), identity_for=who)) as client:
        for person in ("ana", "bo", "ana", "cy"):
            await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT 1"}, meta={"who": person})
    sessions = {e["identity"]["subject"]: e["session"] for e in audit(demo_config).iter_all() if e["type"] == ev.REQUESTED}
    assert set(sessions) == {"ana", "bo", "cy"} and len(set(sessions.values())) == 3
