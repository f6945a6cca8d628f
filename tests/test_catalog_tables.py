"""Tables as PostgreSQL knows them: a parent's scan or write reaches its inheritance children and
partitions; an unqualified name is found along the search path (pg_catalog first, then each schema
in order), not guessed from its spelling; nextval and setval write a sequence. Each canary is first
shown to be reachable straight from the server as the same login."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from mcp import Client

from bastion.server.app import create_server
from bastion.server.config import load
from tests.conftest import requirement
from tests.postgres_server import PgServer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
CANARY = f"canary-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tb(pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    login = f"tb_gw_{uuid.uuid4().hex[:6]}"
    pg_server.execute(f"""
        DROP SCHEMA IF EXISTS tb CASCADE; DROP SCHEMA IF EXISTS tb2 CASCADE;
        CREATE SCHEMA tb; CREATE SCHEMA tb2;
        CREATE TABLE tb.events (id int, v text) PARTITION BY RANGE (id);
        CREATE TABLE tb.events_open PARTITION OF tb.events FOR VALUES FROM (0) TO (100);
        CREATE TABLE tb.events_secret PARTITION OF tb.events FOR VALUES FROM (100) TO (200);
        INSERT INTO tb.events VALUES (1, 'open'), (150, '{CANARY}');
        CREATE TABLE tb.base (id int, v text);
        CREATE TABLE tb.base_secret (extra int) INHERITS (tb.base);
        INSERT INTO tb.base VALUES (1, 'open'); INSERT INTO tb.base_secret VALUES (2, '{CANARY}', 0);
        CREATE TABLE tb.pg_tokens (token text); INSERT INTO tb.pg_tokens VALUES ('{CANARY}');
        CREATE TABLE tb2.only_here (v text); INSERT INTO tb2.only_here VALUES ('{CANARY}');
        CREATE TABLE tb.orders (id serial PRIMARY KEY, item text);
        INSERT INTO tb.orders (item) VALUES ('apple');
        CREATE SEQUENCE tb.locked_seq START 10;
        CREATE ROLE "{login}" LOGIN;
        GRANT USAGE ON SCHEMA tb, tb2 TO "{login}";
        GRANT SELECT, UPDATE, INSERT ON ALL TABLES IN SCHEMA tb, tb2 TO "{login}";
        GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA tb TO "{login}";
    """)
    try:
        yield pg_server, login
    finally:
        pg_server.execute("DROP SCHEMA IF EXISTS tb CASCADE; DROP SCHEMA IF EXISTS tb2 CASCADE")
        pg_server.execute(f'DROP OWNED BY "{login}"; DROP ROLE IF EXISTS "{login}"')


@pytest.fixture
def config(tb: tuple[PgServer, str], tmp_path: Path) -> Path:
    pg, login = tb
    path = tmp_path / "bastion.toml"
    path.write_text(f"""
[identity]
subject = "alice@example.com"

[connections.tb]
kind = "postgres"
target = "{pg.dsn(user=login)}"
search_path = "tb"

  [[connections.tb.rules]]
  id = "app"
  preset = "read-write"
  read_tables = ["tb.events", "tb.events_open", "tb.base", "tb.orders", "tb.*_seq", "pg_catalog.*"]
  write_tables = ["tb.events", "tb.events_open", "tb.base", "tb.orders", "tb.orders_id_seq"]

[connections.ro]
kind = "postgres"
target = "{pg.dsn(user=login)}"
search_path = "tb"
accept_rights = ["write-grants"]  # the same login as `tb`, whose rules write

  [[connections.ro.rules]]
  id = "reader"
  preset = "read-only"
  read_tables = ["tb.orders", "tb.*_seq"]
""")
    return path


@pytest.fixture
async def client(config: Path) -> AsyncIterator[Client]:
    async with Client(create_server(load(config))) as c:
        yield c


def direct(pg: PgServer, login: str, text: str) -> list[tuple[object, ...]]:
    with psycopg.connect(pg.dsn(user=login)) as conn:
        try:
            conn.execute("SET search_path = pg_catalog, tb, tb2")
            return conn.execute(text).fetchall()
        finally:
            conn.rollback()


async def sql(client: Client, text: str, connection: str = "tb") -> tuple[bool, str]:
    result = await client.call_tool("sql_query", {"connection": connection, "sql": text})
    return result.is_error, result.content[0].text


@requirement("sql:catalog-tables")
async def test_a_parent_reaches_its_partitions_and_inheritance_children(client: Client, tb: tuple[PgServer, str]) -> None:
    pg, login = tb
    for text in ("SELECT v FROM events", "SELECT v FROM base"):
        assert any(CANARY in str(r) for r in direct(pg, login, text))  # the parent shows the child's rows
        failed, message = await sql(client, text)
        assert failed and CANARY not in message, message
        assert "does not allow reading `tb." in message and "_secret`" in message
    failed, message = await sql(client, "UPDATE events SET v = 'overwritten' WHERE id > 0")
    assert failed and "does not allow writing `tb.events_secret`" in message, message
    assert pg.execute("SELECT v FROM tb.events WHERE id = 150") == [(CANARY,)]
    failed, message = await sql(client, "SELECT v FROM events_open")  # the allowed partition itself is fine
    assert not failed, message


@requirement("sql:catalog-tables")
async def test_an_unqualified_name_is_found_along_the_search_path(client: Client, tb: tuple[PgServer, str]) -> None:
    pg, login = tb
    assert direct(pg, login, "SELECT * FROM pg_tokens") == [(CANARY,)]
    failed, message = await sql(client, "SELECT * FROM pg_tokens")
    assert failed and "does not allow reading `tb.pg_tokens`" in message and CANARY not in message, message
    # A real catalog relation stays the catalog's: pg_catalog is searched first.
    failed, message = await sql(client, "SELECT count(*) > 0 FROM pg_class")
    assert not failed, message


def test_the_search_path_is_walked_in_order() -> None:
    from bastion.policy import analyse
    from bastion.policy.sql.catalog import FunctionCatalog

    catalog = FunctionCatalog.build([], [], [], ["a", "b"], [("b", "only_here"), ("a", "twice"), ("b", "twice"),
                                                               ("pg_catalog", "pg_class")])
    stmt = analyse("SELECT * FROM only_here, twice, pg_class, b.twice, nowhere", "postgres", "a").statements[0]
    assert catalog.tables(stmt)[0] == {"b.only_here", "a.twice", "pg_catalog.pg_class", "b.twice", "a.nowhere"}


@requirement("sql:catalog-tables")
async def test_nextval_and_setval_write_a_sequence_the_rule_must_let_you_write(client: Client, tb: tuple[PgServer, str]) -> None:
    pg, _ = tb
    failed, message = await sql(client, "SELECT setval('locked_seq', 999)")
    assert failed and "does not allow writing `tb.locked_seq`" in message, message
    assert pg.execute("SELECT last_value FROM tb.locked_seq") == [(10,)]
    failed, message = await sql(client, "SELECT nextval('orders_id_seq') > 0")
    assert not failed, message
    failed, message = await sql(client, "SELECT nextval(pg_get_serial_sequence('tb.orders', 'id'))")
    assert failed and "string literal" in message
    before = pg.execute("SELECT last_value FROM tb.orders_id_seq")
    failed, message = await sql(client, "SELECT nextval('orders_id_seq')", "ro")
    assert failed and ("does not allow writing `tb.orders_id_seq`" in message or "nextval()" in message), message
    assert pg.execute("SELECT last_value FROM tb.orders_id_seq") == before
