"""`max_rows_affected`: a rule bounds the rows one call may change, and the engine counts them.
The write runs, its row count is checked inside the transaction, and past the bound the whole call
is rolled back: no row changes, and the agent is told how many rows it would have changed."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mcp import Client

from bastion.server.app import create_server
from bastion.server.config import load
from tests.conftest import requirement
from tests.postgres_server import PgServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ledger(pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    login = f"ra_gw_{uuid.uuid4().hex[:6]}"
    pg_server.execute(f"""
        DROP SCHEMA IF EXISTS ra CASCADE;
        CREATE SCHEMA ra;
        CREATE TABLE ra.items (id int PRIMARY KEY, state text NOT NULL);
        INSERT INTO ra.items SELECT g, 'new' FROM generate_series(1, 50) g;
        CREATE ROLE "{login}" LOGIN;
        GRANT USAGE ON SCHEMA ra TO "{login}"; GRANT SELECT, INSERT, UPDATE, DELETE ON ra.items TO "{login}";
    """)
    try:
        yield pg_server, login
    finally:
        pg_server.execute("DROP SCHEMA IF EXISTS ra CASCADE")
        pg_server.execute(f'DROP OWNED BY "{login}"; DROP ROLE IF EXISTS "{login}"')


def bounded_lite(db: Path, over: str = "") -> str:
    """Connection `lite`: a new SQLite database with 50 rows in `items`, all 'new', whose rule
    `bounded` lets a write change at most 10 rows (``over``: what past that, `deny` by default)."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
        conn.executemany("INSERT INTO items VALUES (?, 'new')", [(i,) for i in range(1, 51)])
    return f"""
[connections.lite]
kind = "sqlite"
target = "{db}"

  [[connections.lite.rules]]
  id = "bounded"
  preset = "read-write"
  max_rows_affected = 10
""" + (f'  over_max_rows_affected = "{over}"\n' if over else "")


@pytest.fixture
async def client(ledger: tuple[PgServer, str], tmp_path: Path) -> AsyncIterator[Client]:
    pg, login = ledger
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[identity]
subject = "alice@example.com"

[connections.pg]
kind = "postgres"
target = "{pg.dsn(user=login)}"
search_path = "ra"

  [[connections.pg.rules]]
  id = "bounded"
  preset = "read-write"
  unfiltered_writes = "allow"
  max_rows_affected = 10
{bounded_lite(tmp_path / "app.db")}""")
    async with Client(create_server(load(config))) as c:
        yield c


async def sql(client: Client, connection: str, text: str) -> tuple[bool, str, object]:
    result = await client.call_tool("sql_query", {"connection": connection, "sql": text})
    return result.is_error, result.content[0].text, result.structured_content


def states(connection: str, ledger: tuple[PgServer, str], tmp_path: Path) -> list[tuple[object, ...]]:
    """(state, rows) of `items` as the database itself has them, not as the gateway says."""
    query = "SELECT state, count(*) FROM {}items GROUP BY state ORDER BY state"
    if connection == "pg":
        return ledger[0].execute(query.format("ra."))
    with sqlite3.connect(tmp_path / "app.db") as conn:
        return conn.execute(query.format("")).fetchall()


@requirement("sql:rows-affected")
@pytest.mark.parametrize("connection", ["pg", "lite"])
async def test_a_write_past_the_bound_is_rolled_back_and_says_how_many_rows(
        client: Client, ledger: tuple[PgServer, str], tmp_path: Path, connection: str) -> None:
    assert states(connection, ledger, tmp_path) == [("new", 50)]
    # The row filter is no defence: WHERE id IS NOT NULL filters nothing. The count is.
    for text, rows in (("UPDATE items SET state = 'gone' WHERE id IS NOT NULL", 50), ("DELETE FROM items WHERE id > 5", 45),
                       ("UPDATE items SET state = 'gone' WHERE id <= 30 RETURNING id", 30)):
        failed, message, _ = await sql(client, connection, text)
        assert failed and f"would change {rows} rows" in message and "at most 10" in message and "rolled back" in message, message
    assert states(connection, ledger, tmp_path) == [("new", 50)]
    failed, message, _ = await sql(client, connection, "UPDATE items SET state = 'seen' WHERE id <= 10")
    assert not failed, message
    assert states(connection, ledger, tmp_path) == [("new", 40), ("seen", 10)]
    if connection == "pg":  # a data-modifying CTE (PostgreSQL only): its rows are not the statement's count
        failed, message, _ = await sql(client, "pg", "WITH d AS (DELETE FROM items WHERE id > 40 RETURNING id) SELECT count(*) FROM d")
        assert failed and "cannot be counted" in message, message
        assert states(connection, ledger, tmp_path) == [("new", 40), ("seen", 10)]


@requirement("sql:rows-affected")
async def test_a_rule_may_hold_a_write_past_the_bound_for_approvers_who_see_the_count(tmp_path: Path) -> None:
    import anyio

    from bastion.policy import Identity
    from bastion.policy.errors import BastionError
    from bastion.server.build import build_gateway
    from bastion.tools.calls import Caller

    db = tmp_path / "app.db"
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[approvals]
wait = "10s"
approvers = ["leads"]
{bounded_lite(db, over="review")}""")
    gw = build_gateway(load(config))
    dev, lead = Caller(Identity("dev", frozenset({"developers"}))), Caller(Identity("lea", frozenset({"leads"})))

    async def decide(approve: bool) -> None:
        with anyio.fail_after(10):  # a hold is listed first, its impact preview attached a moment later
            while not (pending := gw.approvals.list("pending")) or pending[0].preview is None:
                await anyio.sleep(0.05)
        (held,) = pending
        assert held.preview and held.preview["statements"][0]["rows"] == 45  # the approver sees the count
        with sqlite3.connect(db) as conn:  # rolled back while it waits
            assert conn.execute("SELECT count(*) FROM items WHERE state != 'new'").fetchone() == (0,)
        await gw.approval_decide(lead, held.hold_id, approve, "cleanup agreed" if approve else "not today")

    try:
        async with anyio.create_task_group() as tg:  # denied: nothing changes
            tg.start_soon(decide, False)
            with pytest.raises(BastionError, match="not today"):
                await gw.sql_query(dev, "lite", "UPDATE items SET state = 'kept' WHERE id > 5", "cleanup")
        async with anyio.create_task_group() as tg:  # approved: it runs once, bounded by the count seen
            tg.start_soon(decide, True)
            done = await gw.sql_query(dev, "lite", "UPDATE items SET state = 'gone' WHERE id > 5", "cleanup")
        assert done.result.row_count == 45 and done.decision.limits.max_rows_affected == 10
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT state, count(*) FROM items GROUP BY state ORDER BY state").fetchall() == [
                ("gone", 45), ("new", 5)]
        types = [e["type"] for e in gw.store.call(done.call_id)]
        assert types[0] == "call.requested" and "call.held" in types and types[-1] == "call.finished"
    finally:
        await gw.shutdown()
