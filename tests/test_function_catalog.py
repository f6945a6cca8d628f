"""Functions are judged from PostgreSQL's own catalog (pg_proc, pg_operator, pg_type, pg_cast): every
reference — call, attribute notation, FROM / LATERAL, operator, cast — is resolved as the server
would, and only built-in immutable or stable functions pass a read-only rule. Each attack is shown to
work when sent straight to the server as the same login, then to be refused through Bastion with
no effect left behind (no canary row, no large object, no lock, no secret)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from mcp import Client

from bastion.policy import ConnectionPolicy, Identity, analyse, decide
from bastion.policy.presets import READ_ONLY, READ_WRITE, preset
from bastion.policy.sql.catalog import FunctionCatalog, Proc, changes_state
from bastion.policy.sql.facts import FunctionRef
from bastion.server.app import create_server
from bastion.server.config import load
from tests.conftest import requirement
from tests.postgres_server import PgServer

pytestmark = pytest.mark.anyio
SECRET = "tiger-lily-42-" + uuid.uuid4().hex[:6]

# -- the judgement, on plain data ----------------------------------------------------------------

PROCS = [
    (1, "pg_catalog", "lower", 1, 0, False, "i", True),
    (2, "pg_catalog", "now", 0, 0, False, "s", True),
    (3, "pg_catalog", "pg_read_file", 1, 0, False, "v", True),
    (4, "pg_catalog", "int4pl", 2, 0, False, "i", True),
    (5, "app", "audit_me", 1, 0, False, "v", False),
    (6, "pg_catalog", "int4in", 1, 0, False, "i", True),
    (7, "pg_catalog", "concat", 1, 0, True, "s", True),
    (8, "pg_catalog", "txid_status", 1, 0, False, "v", True),
    (9, "pg_catalog", "random", 0, 0, False, "v", True),
    (10, "app", "lower", 1, 0, False, "v", False),
    (11, "pg_catalog", "inet_server_addr", 0, 0, False, "s", True),
]
CATALOG = FunctionCatalog.build(PROCS, [("pg_catalog", "+", 2, 4), ("app", "###", 2, 5)],
                                [("pg_catalog", "int4", [6])], ["public"])
ME = Identity("me")


def verdict(text: str, rule: object = READ_ONLY, catalog: FunctionCatalog = CATALOG) -> tuple[str, str]:
    decision = decide(ME, ConnectionPolicy("c", "postgres", (rule,), "public"), analyse(text, "postgres"), catalog)  # type: ignore[arg-type]
    return decision.verdict.value, decision.reason


def test_a_reference_resolves_by_name_argument_count_and_search_path() -> None:
    assert [p.oid for p in CATALOG.resolve(FunctionRef("call", None, "lower", 1)) or ()] == [1]
    assert CATALOG.resolve(FunctionRef("call", None, "lower", 2)) is None  # no lower() takes two
    assert CATALOG.resolve(FunctionRef("call", None, "audit_me", 1)) is None  # app is not on the path
    assert [p.oid for p in CATALOG.resolve(FunctionRef("call", "app", "audit_me", 1)) or ()] == [5]
    assert [p.oid for p in CATALOG.resolve(FunctionRef("call", None, "concat", 3)) or ()] == [7]  # VARIADIC
    assert CATALOG.resolve(FunctionRef("attribute", None, "total", 1)) == ()  # a column, no function
    assert [p.oid for p in CATALOG.resolve(FunctionRef("call", None, "int4", 1)) or ()] == [6]  # int4(x) is a cast
    assert [p.oid for p in CATALOG.resolve(FunctionRef("operator", None, "+", 2)) or ()] == [4]
    assert CATALOG.resolve(FunctionRef("operator", None, "###", 2)) is None  # app is not on the path
    # On the path, every candidate counts: a shadowing app.lower is judged beside pg_catalog.lower.
    on_path = FunctionCatalog.build(PROCS, [], [], ["app"])
    assert sorted(p.oid for p in on_path.resolve(FunctionRef("call", None, "lower", 1)) or ()) == [1, 10]


@requirement("sql:function-catalog")
def test_every_syntax_reaches_the_same_judgement() -> None:
    for text in ("SELECT pg_read_file('/etc/hostname')", "SELECT ('/etc/hostname'::text).pg_read_file",
                 "SELECT * FROM pg_read_file('/etc/hostname')", "SELECT * FROM ROWS FROM (pg_read_file('/x')) f",
                 "SELECT * FROM (SELECT 1) s, LATERAL pg_read_file('/x') f", "SELECT t.pg_read_file FROM (SELECT '/x'::text) t"):
        got, reason = verdict(text)
        assert got == "deny" and "pg_read_file" in reason, text
    assert verdict("SELECT app.audit_me(1)")[0] == "deny"
    assert verdict("SELECT 1 OPERATOR(app.###) 2")[0] == "deny"
    assert verdict("SELECT lower('A'), now(), 1 + 2, '7'::int4, concat('a', 'b', 'c'), random()")[0] == "allow"


def test_what_cannot_be_resolved_is_denied_and_says_so() -> None:
    got, reason = verdict("SELECT no_such_function(1)")
    assert got == "deny" and "cannot resolve" in reason and "search path" in reason
    assert verdict("SELECT 1 ### 2")[0] == "deny"
    assert verdict("SELECT 'x'::no_such_type")[0] == "deny"


@requirement("sql:function-catalog")
def test_volatile_counts_as_a_write_and_revealing_functions_are_denied() -> None:
    got, reason = verdict("SELECT txid_status(1)")
    assert got == "deny" and "volatile" in reason and "only reads" in reason
    rw = preset("read-write")
    assert verdict("SELECT txid_status(1)", rw)[0] == "allow"
    assert not decide(ME, ConnectionPolicy("c", "postgres", (rw,), "public"), analyse("SELECT txid_status(1)", "postgres"),
                      CATALOG).read_only
    assert changes_state(analyse("SELECT txid_status(1)", "postgres").statements[0], CATALOG)
    assert not changes_state(analyse("SELECT random(), now()", "postgres").statements[0], CATALOG)
    got, reason = verdict("SELECT inet_server_addr()", rw)
    assert got == "deny" and "server's address" in reason


def test_a_function_defined_in_the_database_passes_only_when_a_rule_names_it() -> None:
    got, reason = verdict("SELECT app.audit_me(1)", READ_WRITE)
    assert got == "deny" and "not built into PostgreSQL" in reason and 'allow_functions = ["app.audit_me"]' in reason + str(
        decide(ME, ConnectionPolicy("c", "postgres", (READ_WRITE,), "public"), analyse("SELECT app.audit_me(1)", "postgres"), CATALOG).hint)
    named = preset("read-write", allow_functions=frozenset({"app.audit_me"}))
    assert verdict("SELECT app.audit_me(1)", named)[0] == "allow"


@requirement("sql:sql-text-function")
def test_functions_that_run_sql_text_are_denied_whatever_the_rule_names() -> None:
    cat = FunctionCatalog.build(PROCS + [(20, "pg_catalog", "ts_stat", 1, 0, False, "v", True),
                                         (21, "public", "crosstab2", 1, 0, False, "v", False)], [], [], ["public"])
    everything = preset("read-write", allow_functions=frozenset({"ts_stat", "crosstab2", "public.crosstab2"}))
    for text in ("SELECT * FROM ts_stat('SELECT 1')", "SELECT ('SELECT 1'::text).ts_stat", "SELECT * FROM crosstab2('SELECT 1')",
                 "SELECT * FROM query_to_xml('SELECT 1', true, true, '')"):
        got, reason = verdict(text, everything, cat)
        assert got == "deny" and "runs SQL given as text" in reason, text


def test_without_a_catalog_attribute_notation_is_still_judged_by_name() -> None:
    decision = decide(ME, ConnectionPolicy("c", "postgres", (READ_ONLY,), "public"),
                      analyse("SELECT ('/etc/hostname'::text).pg_read_file", "postgres"))
    assert decision.verdict.value == "deny" and "pg_read_file" in decision.reason


# -- on the real server ----------------------------------------------------------------------------

SETUP = """
DROP SCHEMA IF EXISTS fc CASCADE;
CREATE SCHEMA fc;
CREATE TABLE fc.orders (id int PRIMARY KEY, item text NOT NULL);
INSERT INTO fc.orders VALUES (1, 'apple'), (2, 'pear');
CREATE TABLE fc.tokens (id int PRIMARY KEY, token tsvector);
INSERT INTO fc.tokens VALUES (1, to_tsvector('simple', '{secret}'));
CREATE TABLE fc.canary (what text);
CREATE FUNCTION fc.log_canary() RETURNS int LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN INSERT INTO fc.canary VALUES ('call'); RETURN 1; END $$;
CREATE FUNCTION fc.log_canary(x int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN INSERT INTO fc.canary VALUES ('attribute'); RETURN x; END $$;
CREATE FUNCTION fc.log_op(a int, b int) RETURNS bool LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN INSERT INTO fc.canary VALUES ('operator'); RETURN true; END $$;
CREATE OPERATOR fc.@@ (LEFTARG = int, RIGHTARG = int, FUNCTION = fc.log_op);
CREATE TYPE fc.wrapped AS (v int);
CREATE FUNCTION fc.to_wrapped(x int) RETURNS fc.wrapped LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN INSERT INTO fc.canary VALUES ('cast'); RETURN ROW(x)::fc.wrapped; END $$;
CREATE CAST (int AS fc.wrapped) WITH FUNCTION fc.to_wrapped(int);
-- Named like a built-in, and it writes. upper(int)
-- reaches it, as pg_catalog has no upper() that takes an integer.
CREATE FUNCTION fc.upper(x int) RETURNS text LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN INSERT INTO fc.canary VALUES ('shadow'); RETURN x::text; END $$;
CREATE FUNCTION fc.double_it(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
-- Reading a view runs what it calls: a function of the database's own, or a volatile built-in.
CREATE VIEW fc.sneaky AS SELECT fc.log_canary() AS x;
CREATE VIEW fc.sneakier AS SELECT * FROM fc.sneaky;
CREATE VIEW fc.locking AS SELECT pg_try_advisory_lock(4243) AS locked;
CREATE VIEW fc.plain AS SELECT id, upper(item) AS item FROM fc.orders;
"""


@pytest.fixture(scope="module")
def fc_server(pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    """The schema above, and a login of its own that can do what the attacks need when run directly."""
    login = f"fc_gw_{uuid.uuid4().hex[:6]}"
    pg_server.execute(SETUP.format(secret=SECRET))
    pg_server.execute(f'CREATE ROLE "{login}" LOGIN')
    pg_server.execute(f'GRANT USAGE ON SCHEMA fc TO "{login}"; GRANT SELECT ON ALL TABLES IN SCHEMA fc TO "{login}";'
                      f'GRANT pg_read_server_files TO "{login}"; GRANT EXECUTE ON FUNCTION pg_read_file(text) TO "{login}"')
    try:
        yield pg_server, login
    finally:
        pg_server.execute("DROP SCHEMA IF EXISTS fc CASCADE")
        pg_server.execute(f'REVOKE pg_read_server_files FROM "{login}"; DROP OWNED BY "{login}"; DROP ROLE "{login}"')


@pytest.fixture
def fc_config(fc_server: tuple[PgServer, str], tmp_path: Path) -> Path:
    pg, login = fc_server
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[identity]
subject = "alice@example.com"
groups = ["analysts"]

[connections.ro]
kind = "postgres"
target = "{pg.dsn(user=login)}"
search_path = "fc"
accept_rights = ["pg_read_server_files"]  # so that the attacks would work if they ran

  [[connections.ro.rules]]
  id = "analysts"
  preset = "read-only"
  read_tables = ["fc.orders", "fc.canary", "fc.plain"]
  allow_functions = ["fc.double_it"]

[connections.rw]
kind = "postgres"
target = "{pg.dsn(user=login)}"
search_path = "fc"
accept_rights = ["pg_read_server_files"]

  [[connections.rw.rules]]
  id = "writers"
  preset = "read-write"
  read_tables = ["fc.orders", "fc.canary", "fc.sneaky", "fc.sneakier", "fc.locking", "fc.plain"]
  write_tables = ["fc.orders"]
""")
    return config


@pytest.fixture
async def client(fc_config: Path) -> AsyncIterator[Client]:
    async with Client(create_server(load(fc_config))) as c:
        yield c


def direct(pg: PgServer, login: str, text: str, *, canary: bool = False) -> list[tuple[object, ...]]:
    """What the same login gets when it sends ``text`` straight to PostgreSQL with Bastion's search
    path (then rolled back); with ``canary``, the canary rows it wrote instead."""
    with psycopg.connect(pg.dsn(user=login)) as conn:
        try:
            conn.execute("SET search_path = pg_catalog, fc")
            rows = conn.execute(text).fetchall()
            return conn.execute("SELECT what FROM fc.canary").fetchall() if canary else rows
        finally:
            conn.rollback()


def canaries(pg: PgServer) -> list[tuple[object, ...]]:
    return pg.execute("SELECT what FROM fc.canary")


@requirement("sql:function-catalog")
async def test_attribute_notation_cannot_read_a_file_create_a_large_object_or_take_a_lock(
        client: Client, fc_server: tuple[PgServer, str], fc_config: Path) -> None:
    pg, login = fc_server
    hostname = direct(pg, login, "SELECT ('/etc/hostname'::text).pg_read_file")[0][0]
    assert hostname  # the attack works when sent straight to the server
    objects = pg.execute("SELECT count(*) FROM pg_largeobject_metadata")[0][0]
    for text, name in (("SELECT ('/etc/hostname'::text).pg_read_file", "pg_read_file"),
                       ("SELECT (0::oid).lo_create", "lo_create"),
                       ("SELECT (424242::bigint).pg_advisory_lock", "pg_advisory_lock")):
        refused = await client.call_tool("sql_query", {"connection": "rw", "sql": text})
        assert refused.is_error and name in refused.content[0].text and "attribute notation" in refused.content[0].text
    assert pg.execute("SELECT count(*) FROM pg_largeobject_metadata")[0][0] == objects
    # The key the attack named: other suites on the same server take advisory locks of their own.
    assert pg.advisory_locks(424242) == 0


@requirement("sql:sql-text-function")
async def test_sql_text_functions_cannot_read_an_excluded_table(client: Client, fc_server: tuple[PgServer, str]) -> None:
    pg, login = fc_server
    attack = "SELECT * FROM ts_stat('SELECT token FROM fc.tokens')"
    assert any(SECRET.split("-")[0] in str(row) for row in direct(pg, login, attack))  # it works directly
    for text in (attack, "SELECT ('SELECT token FROM fc.tokens'::text).ts_stat",
                 "SELECT query_to_xml('SELECT token FROM fc.tokens', true, false, '')"):
        refused = await client.call_tool("sql_query", {"connection": "rw", "sql": text})
        assert refused.is_error and "runs SQL given as text" in refused.content[0].text
        assert SECRET.split("-")[0] not in refused.content[0].text


@requirement("sql:function-catalog")
async def test_a_function_defined_in_the_database_does_not_run_in_any_syntax(
        client: Client, fc_server: tuple[PgServer, str]) -> None:
    pg, login = fc_server
    texts = ["SELECT fc.log_canary()", "SELECT * FROM fc.log_canary()", "SELECT (7).log_canary",
             "SELECT 1 @@ 2", "SELECT 1::fc.wrapped", "SELECT upper(id) FROM orders"]
    # Each one writes its canary when sent straight to the server (rolled back there).
    for text in texts:
        assert direct(pg, login, text, canary=True), text
    before = canaries(pg)
    for connection in ("ro", "rw"):
        for text in texts:
            refused = await client.call_tool("sql_query", {"connection": connection, "sql": text})
            assert refused.is_error, (connection, text)
            message = refused.content[0].text
            assert "not built into PostgreSQL" in message and "allow_functions" in message, message
    assert canaries(pg) == before == []


@requirement("sql:function-catalog")
async def test_reading_a_view_judges_what_its_definition_calls(client: Client, fc_server: tuple[PgServer, str]) -> None:
    pg, login = fc_server
    assert direct(pg, login, "SELECT * FROM sneakier", canary=True)  # reading it writes the canary
    for text, said in (("SELECT * FROM sneaky", "called by the view `fc.sneaky`"),
                       ("SELECT * FROM sneakier", "called by the view `fc.sneaky`"),
                       ("SELECT * FROM locking", "pg_try_advisory_lock")):
        refused = await client.call_tool("sql_query", {"connection": "rw", "sql": text})
        assert refused.is_error and said in refused.content[0].text, refused.content[0].text
    assert canaries(pg) == []
    assert pg.advisory_locks(4243) == 0
    ok = await client.call_tool("sql_query", {"connection": "ro", "sql": "SELECT item FROM plain ORDER BY id"})
    assert not ok.is_error and ok.structured_content["rows"] == [["APPLE"], ["PEAR"]], ok.content[0].text


async def test_built_in_reads_run_and_a_named_function_passes(client: Client) -> None:
    ok = await client.call_tool("sql_query", {"connection": "ro", "sql":
                                "SELECT lower(item), length(item) + 1, now() IS NOT NULL, '2'::int, double_it(id) "
                                "FROM orders WHERE item LIKE 'a%' AND id BETWEEN 1 AND 2 ORDER BY id"})
    assert not ok.is_error, ok.content[0].text
    assert ok.structured_content["rows"] == [["apple", 6, True, 2, 2]]


async def test_a_function_created_after_the_catalog_was_read_is_judged_not_unknown(
        client: Client, fc_server: tuple[PgServer, str]) -> None:
    pg, _ = fc_server
    first = await client.call_tool("sql_query", {"connection": "ro", "sql": "SELECT count(*) FROM orders"})
    assert not first.is_error
    pg.execute("CREATE OR REPLACE FUNCTION fc.made_later(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x'")
    try:
        import anyio
        await anyio.sleep(1.1)  # a miss re-reads the catalog once the copy is a second old
        refused = await client.call_tool("sql_query", {"connection": "ro", "sql": "SELECT made_later(1)"})
        assert refused.is_error and "fc.made_later()` is defined in this database" in refused.content[0].text
    finally:
        pg.execute("DROP FUNCTION fc.made_later(int)")


async def test_a_volatile_builtin_is_a_write_under_read_only_and_runs_read_write_where_writes_are_allowed(
        client: Client) -> None:
    refused = await client.call_tool("sql_query", {"connection": "ro", "sql": "SELECT pg_current_wal_lsn()"})
    assert refused.is_error and "volatile" in refused.content[0].text
    ok = await client.call_tool("sql_query", {"connection": "rw", "sql": "SELECT pg_current_wal_lsn() IS NOT NULL"})
    assert not ok.is_error, ok.content[0].text


# -- SQLite: the authorizer's function callback --------------------------------------------------


@requirement("sql:function-catalog")
async def test_sqlite_runs_only_its_own_functions(tmp_path: Path) -> None:
    """A function an application or extension defined (here one that writes a canary file, defined
    on the executor's connection as an extension would be) is refused inside SQLite; built-ins run."""
    import sqlite3

    from bastion.policy import Limits
    from bastion.policy.errors import QueryRejected
    from bastion.tools.executors.base import RunRequest
    from bastion.tools.executors.sqlite import SqliteExecutor

    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("INSERT INTO t VALUES ('a')")
    canary = tmp_path / "canary"

    class WithExtension(SqliteExecutor):
        def _connect(self, read_only: bool) -> sqlite3.Connection:
            conn = super()._connect(read_only)
            conn.create_function("side_effect", 1, lambda v: canary.write_text(str(v)) and v)
            return conn

    executor = WithExtension("app", db)
    ok = await executor.run(RunRequest(analyse("SELECT upper(x), length(x), random() IS NOT NULL FROM t", "sqlite").statements,
                                       True, Limits(), ME))
    assert ok.rows == [["A", 1, 1]]
    with pytest.raises(QueryRejected, match="not authorized"):
        await executor.run(RunRequest(analyse("SELECT side_effect(x) FROM t", "sqlite").statements, True, Limits(), ME))
    assert not canary.exists()


def test_a_fresh_catalog_replaces_the_decisions_made_with_the_old_one() -> None:
    import gc
    import weakref

    policy = ConnectionPolicy("c", "postgres", (READ_ONLY,), "public")
    old = FunctionCatalog.build(PROCS, [], [], ["public"])
    analysis = analyse("SELECT lower('A')", "postgres")
    assert decide(ME, policy, analysis, old).allowed
    gone = weakref.ref(old)
    del old
    fresh = FunctionCatalog.build(PROCS[:1], [], [], ["public"])
    assert decide(ME, policy, analysis, fresh).allowed
    gc.collect()
    assert gone() is None  # the memo no longer keeps the old catalog alive
