"""The PostgreSQL executor and the whole path on the real server: the database enforces the decision."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import psycopg
import pytest
from mcp import Client

from bastion.policy import Identity, Limits, analyse
from bastion.policy.errors import QueryRejected, QueryTimeout, TargetUnavailable
from bastion.server.app import create_server
from bastion.server.config import load
from bastion.store import SqliteAuditStore
from tests.cancelling import cancel_once
from tests.conftest import requirement
from tests.postgres_server import PgServer, wait_until
from bastion.tools.executors.base import RunRequest
from bastion.tools.executors.postgres import PostgresExecutor

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
ALICE = Identity("alice@example.com", frozenset({"analysts"}))
BOB = Identity("bob@example.com", frozenset({"analysts"}))


@pytest.fixture(scope="module")
def shop(pg_server: PgServer) -> Iterator[PgServer]:
    pg_server.execute("""
        DROP SCHEMA IF EXISTS shop CASCADE;
        CREATE SCHEMA shop;
        CREATE TABLE shop.orders (id int PRIMARY KEY, owner text NOT NULL, total numeric(10,2), note text);
        INSERT INTO shop.orders SELECT g, CASE WHEN g % 2 = 0 THEN 'alice@example.com' ELSE 'bob@example.com' END,
               g * 1.5, repeat('x', 50) FROM generate_series(1, 5000) g;
        ALTER TABLE shop.orders ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own_rows ON shop.orders USING (owner = current_setting('bastion.user', true));
    """)
    role = pg_server.gateway_role
    pg_server.execute(f'GRANT USAGE ON SCHEMA shop TO "{role}"; GRANT SELECT, UPDATE, DELETE ON shop.orders TO "{role}"')
    yield pg_server


def executor(pg: PgServer, **kw: object) -> PostgresExecutor:
    return PostgresExecutor("pg", pg.dsn(user=pg.gateway_role), search_path="shop", **kw)  # type: ignore[arg-type]


def forged(text: str, like: str = "SELECT 1") -> list:  # type: ignore[type-arg]
    """Facts of ``like`` carrying ``text``: what an executor gets if the parser were fooled."""
    statement = analyse(like, "postgres").statements[0]
    return [dataclasses.replace(statement, text=text)]


def run(text: str, *, read_only: bool = True, limits: Limits = Limits(), who: Identity = ALICE) -> RunRequest:
    return RunRequest(analyse(text, "postgres").statements, read_only, limits, who)


async def test_a_select_streams_rows_as_the_scoped_user(shop: PgServer) -> None:
    ex = executor(shop)
    try:
        result = await ex.run(run("SELECT id, owner, total FROM orders ORDER BY id LIMIT 3"))
        assert result.columns == ["id", "owner", "total"]
        assert result.rows == [[2, "alice@example.com", "3.00"], [4, "alice@example.com", "6.00"], [6, "alice@example.com", "9.00"]]
    finally:
        await ex.close()


async def test_percent_signs_and_quotes_reach_the_server_as_written(shop: PgServer) -> None:
    """Statements go to the server as plain text with no parameters: nothing reads `%s` as a placeholder."""
    ex = executor(shop)
    try:
        result = await ex.run(run("SELECT '5%' AS a, '%s' AS b, 'a%%b' AS c, 'it''s' AS d, $$%(x)s$$ AS e"))
        assert result.rows == [["5%", "%s", "a%%b", "it's", "%(x)s"]]
    finally:
        await ex.close()


@requirement("inv:read-only-transaction")
async def test_the_database_refuses_a_write_in_a_read_only_call(shop: PgServer) -> None:
    ex = executor(shop)
    try:
        with pytest.raises(QueryRejected, match="25006.*read-only transaction"):
            await ex.run(RunRequest(forged("UPDATE orders SET note = 'x' WHERE id = 2", like="EXPLAIN SELECT 1"), True, Limits(), ALICE))
        assert shop.execute("SELECT count(*) FROM shop.orders WHERE note = 'x'") == [(0,)]
    finally:
        await ex.close()


@requirement("sql:explain-analyze", "inv:read-only-transaction")
async def test_a_plain_explain_of_a_write_plans_it_in_a_read_only_transaction(shop: PgServer) -> None:
    from bastion.policy.presets import READ_ONLY
    from bastion.policy import ConnectionPolicy, decide

    text = "EXPLAIN DELETE FROM orders WHERE id = 2"
    analysis = analyse(text, "postgres", "shop")
    decision = decide(ALICE, ConnectionPolicy("shop", "postgres", (READ_ONLY,), "shop"), analysis)
    assert decision.allowed and decision.read_only
    ex = executor(shop)
    try:
        result = await ex.run(RunRequest(analysis.statements, decision.read_only, Limits(), ALICE))
        assert "Delete on orders" in result.rows[0][0]
        assert shop.execute("SELECT count(*) FROM shop.orders WHERE id = 2") == [(1,)]
        with pytest.raises(QueryRejected, match="read-only transaction"):  # had the parser missed ANALYZE
            await ex.run(RunRequest(forged("EXPLAIN ANALYZE DELETE FROM orders WHERE id = 2", like=text), True, Limits(), ALICE))
    finally:
        await ex.close()


@requirement("inv:one-statement-per-execute")
async def test_the_driver_refuses_a_second_statement_in_one_execute(shop: PgServer) -> None:
    ex = executor(shop)
    try:
        for like in ("SELECT 1", "EXPLAIN SELECT 1"):  # the server-side cursor path and the plain path
            with pytest.raises(QueryRejected):
                await ex.run(RunRequest(forged("SELECT 1; UPDATE orders SET note = 'y'", like=like), False, Limits(), ALICE))
        assert shop.execute("SELECT count(*) FROM shop.orders WHERE note = 'y'") == [(0,)]
    finally:
        await ex.close()


@requirement("inv:bounded-fetch")
async def test_rows_and_bytes_are_capped_through_a_server_side_cursor(shop: PgServer) -> None:
    ex = executor(shop)
    try:
        result = await ex.run(run("SELECT * FROM orders", limits=Limits(max_rows=25)))
        assert result.row_count == 25 and result.truncated
        result = await ex.run(run("SELECT * FROM orders", limits=Limits(max_bytes=2_000)))
        assert 0 < result.row_count < 25 and result.truncated
        result = await ex.run(run("SELECT * FROM orders", limits=Limits(max_rows=5000)))
        assert result.row_count == 2500 and not result.truncated  # RLS: alice's half, in two FETCHes
        result = await ex.run(run("SELECT id FROM orders ORDER BY id", limits=Limits(max_rows=2200)))
        assert result.row_count == 2200 and result.truncated and result.rows[-1] == [4400]
        # Each call's transaction ended with it: no cursor or transaction left open in this database (other
        # suites share the server).
        assert shop.execute("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
                            " AND datname = current_database()") == [(0,)]
    finally:
        await ex.close()


@requirement("inv:statement-timeout")
async def test_statement_timeout_stops_a_long_query(shop: PgServer) -> None:
    ex = executor(shop)
    try:
        with pytest.raises(QueryTimeout, match="0.3 s limit"):
            await ex.run(run("SELECT count(*) FROM generate_series(1, 2000000000)", limits=Limits(timeout_s=0.3)))
    finally:
        await ex.close()


@requirement("inv:cancel-cancels-query")
async def test_cancelling_the_call_cancels_the_query_on_the_server(shop: PgServer) -> None:
    ex = executor(shop)
    marker = "SELECT count(*) AS cancel_me FROM generate_series(1, 3000000000)"

    def running() -> bool:
        # A plain SELECT runs as DECLARE then FETCH: while it works, the server shows the FETCH (a
        # check for the marker alone saw only the DECLARE's moment, and missed a FETCH left running).
        rows = shop.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND (query LIKE %s OR "
                            "query LIKE 'FETCH FORWARD %% FROM \"bastion_rows_%%') AND datname = current_database() "
                            "AND usename = %s", ("%cancel_me%generate_series%", shop.gateway_role))
        return bool(rows[0][0])

    try:
        await cancel_once(running, lambda: ex.run(run(marker, limits=Limits(timeout_s=60))))
        assert wait_until(lambda: not running(), timeout=30), "the query kept running after the call was cancelled"
    finally:
        await ex.close()


async def test_session_settings_scope_the_call_for_row_level_security(shop: PgServer) -> None:
    ex = executor(shop)
    try:
        alice = await ex.run(run("SELECT count(*), min(owner), max(owner) FROM orders"))
        bob = await ex.run(run("SELECT count(*), min(owner) FROM orders", who=BOB))
        settings = await ex.run(run("SELECT current_setting('application_name'), current_setting('bastion.groups')"))
        assert alice.rows == [[2500, "alice@example.com", "alice@example.com"]] and bob.rows == [[2500, "bob@example.com"]]
        assert settings.rows == [["bastion:alice@example.com", "analysts"]]
    finally:
        await ex.close()


@requirement("inv:no-credential-leak")
async def test_a_database_that_is_down_is_a_clear_error_without_the_dsn(pg_server: PgServer) -> None:
    ex = PostgresExecutor("down", "host=127.0.0.1 port=1 user=bastion dbname=nowhere", password="hunter2", connect_timeout=1)
    try:
        with pytest.raises(TargetUnavailable) as caught:
            await ex.run(run("SELECT 1"))
        assert caught.value.for_agent().startswith("[target_unavailable] connection `down` is unavailable")
        assert "hunter2" not in caught.value.for_agent() and "hunter2" not in (caught.value.detail or "")
    finally:
        await ex.close()


async def test_a_database_error_names_sqlstate_and_message(shop: PgServer) -> None:
    ex = executor(shop)
    try:
        with pytest.raises(QueryRejected, match=r"PostgreSQL error 42703: column \"nope\" does not exist"):
            await ex.run(run("SELECT nope FROM orders"))
    finally:
        await ex.close()


# -- the whole path through MCP --------------------------------------------------------------------


@pytest.fixture
def pg_config(shop: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BASTION_TEST_PG_PASSWORD", "not-used-with-trust-auth")
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[identity]
subject = "alice@example.com"
groups = ["analysts"]

[connections.shop]
kind = "postgres"
target = "{shop.dsn(user=shop.gateway_role)}"
password_env = "BASTION_TEST_PG_PASSWORD"
search_path = "shop"
# The executor tests above grant this login UPDATE and DELETE; the rules only read.
accept_rights = ["write-grants"]

  [[connections.shop.rules]]
  id = "analysts"
  preset = "read-only"
  groups = ["analysts"]
  read_tables = ["shop.*"]
  max_rows = 100
""")
    return config


@pytest.fixture(params=["auto", "legacy"])
async def pg_client(request: pytest.FixtureRequest, pg_config: Path) -> AsyncIterator[Client]:
    async with Client(create_server(load(pg_config)), mode=request.param) as c:
        yield c


async def test_query_describe_and_refusal_through_mcp(pg_client: Client, pg_config: Path) -> None:
    rows = await pg_client.call_tool("sql_query", {"connection": "shop", "sql": "SELECT count(*) AS n FROM orders"})
    assert not rows.is_error, rows.content[0].text
    assert rows.structured_content["rows"] == [[2500]]
    tables = (await pg_client.call_tool("describe", {"connection": "shop"})).structured_content["tables"]
    assert [(t["schema"], t["name"]) for t in tables] == [("shop", "orders")]
    refused = await pg_client.call_tool("sql_query", {"connection": "shop", "sql": "SELECT * FROM pg_read_file('/etc/passwd')"})
    assert refused.is_error and "analysts:function" in refused.content[0].text
    log = " ".join(str(e) for e in SqliteAuditStore(pg_config.parent / "bastion-audit.db").iter_all())
    assert "not-used-with-trust-auth" not in log


async def test_tables_outside_the_rule_are_refused_before_the_database_sees_them(pg_client: Client) -> None:
    refused = await pg_client.call_tool("sql_query", {"connection": "shop", "sql": "SELECT * FROM public.anything"})
    assert refused.is_error and "does not allow reading `public.anything`" in refused.content[0].text


def test_the_gateway_role_is_not_a_superuser(shop: PgServer) -> None:
    assert shop.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (shop.gateway_role,)) == [(False,)]
    with psycopg.connect(shop.dsn(user=shop.gateway_role)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (shop.gateway_role,)


@requirement("inv:read-only-transaction")
async def test_strings_are_parsed_by_the_server_as_the_guard_parsed_them(shop: PgServer) -> None:
    """With standard_conforming_strings off, 'a\\'' would end elsewhere and hide a read of `secret`."""
    from bastion.policy import ConnectionPolicy, decide
    from bastion.policy.presets import READ_ONLY

    shop.execute("CREATE TABLE IF NOT EXISTS shop.secret (token text); INSERT INTO shop.secret VALUES ('TOP-SECRET')")
    shop.execute(f'GRANT SELECT ON shop.secret TO "{shop.gateway_role}"')
    shop.execute(f'ALTER ROLE "{shop.gateway_role}" IN DATABASE "{shop.database}" SET standard_conforming_strings = off')
    try:
        text = "SELECT 'a\\'' AS x, * FROM secret --' FROM orders"
        analysis = analyse(text, "postgres", "shop")
        rule = dataclasses.replace(READ_ONLY, read_tables=("shop.*", "!shop.secret"))
        decision = decide(ALICE, ConnectionPolicy("shop", "postgres", (rule,), "shop"), analysis)
        assert decision.allowed and analysis.statements[0].reads == {"shop.orders"}
        ex = executor(shop)
        try:
            result = await ex.run(RunRequest(analysis.statements, True, Limits(max_rows=3), ALICE))
        finally:
            await ex.close()
        assert "TOP-SECRET" not in str(result.rows)
    finally:
        shop.execute(f'ALTER ROLE "{shop.gateway_role}" IN DATABASE "{shop.database}" RESET standard_conforming_strings')


def test_replay_against_a_sandbox_copy_on_postgres_diffs_the_results(shop: PgServer, tmp_path: Path) -> None:
    """Record reads on `shop`, replay them on a sandbox copy, change the copy, replay again."""
    from click.testing import CliRunner

    from bastion.server.build import build_gateway
    from bastion.server.cli import main
    from bastion.tools.calls import Caller

    role = shop.gateway_role
    shop.execute("DROP SCHEMA IF EXISTS sandbox CASCADE; CREATE SCHEMA sandbox;"
                 "CREATE TABLE sandbox.orders AS SELECT * FROM shop.orders;"
                 "ALTER TABLE sandbox.orders ENABLE ROW LEVEL SECURITY;"
                 "CREATE POLICY own_rows ON sandbox.orders USING (owner = current_setting('bastion.user', true))")
    shop.execute(f'GRANT USAGE ON SCHEMA sandbox TO "{role}"; GRANT SELECT ON sandbox.orders TO "{role}"')
    config = tmp_path / "bastion.toml"
    dsn = shop.dsn(user=role)
    config.write_text(f"""
[identity]
subject = "alice@example.com"
[connections.shop]
kind = "postgres"
target = "{dsn}"
search_path = "shop"
preset = "read-only"
accept_rights = ["write-grants"]  # granted by the executor tests above
[connections.shop_sandbox]
kind = "postgres"
target = "{dsn}"
search_path = "sandbox"
sandbox = true
preset = "read-only"
accept_rights = ["write-grants"]
""")

    async def record() -> None:
        gateway = build_gateway(load(config))
        caller = Caller(load(config).identity.to_identity(), session="pg-session")
        await gateway.sql_query(caller, "shop", "SELECT count(*) FROM orders WHERE total > 100", None)
        await gateway.sql_query(caller, "shop", "SELECT id, total FROM orders WHERE id < 5 ORDER BY id", None)
        await gateway.close()

    anyio.run(record)
    run = CliRunner().invoke(main, ["replay", "pg-session", "--config", str(config), "--against", "shop_sandbox"])
    assert run.exit_code == 0 and run.output.count(" same ") == 2, run.output
    shop.execute("UPDATE sandbox.orders SET total = 0 WHERE id = 2")
    run = CliRunner().invoke(main, ["replay", "pg-session", "--config", str(config), "--against", "shop_sandbox"])
    assert run.exit_code == 1 and "DIFFERS" in run.output, run.output
