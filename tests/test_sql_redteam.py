"""The SQL guard as an attacker meets it: a gateway set up the way docs/identity.md recommends
(a login per group, a read-only rule excluding a table, a masked column, row-level security on the
role), driven through the real MCP SDK client, with canaries that must not come out: in the excluded
table, in the masked column, in another role's rows, in another session's advisory lock, in the
random() of the next caller on the same pooled connection. Each attack is judged by its effect."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from mcp import Client

from bastion.policy import Identity, Limits
from bastion.policy.errors import QueryTimeout
from bastion.server.app import create_server
from bastion.server.config import load
from bastion.store import SqliteAuditStore
from bastion.tools.executors.base import RunRequest
from bastion.tools.executors.postgres import PostgresExecutor
from tests.conftest import requirement
from tests.postgres_server import PgServer, wait_until
from tests.test_identity_engine import forged

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
TAG = f"rt{os.getpid()}_{uuid.uuid4().hex[:4]}"
EXCLUDED, MASKED, OTHERS = f"CANARY-EXCL-{TAG}", f"CANARY-MASK-{TAG}", f"CANARY-RLS-{TAG}"
LOCK_KEY = 700_000_000 + os.getpid()  # another session's advisory lock: its key is the canary


@dataclasses.dataclass
class Shop:
    pg: PgServer
    gateway: str
    alice: str  # LOGIN, group support: read-only, payment_tokens excluded, accounts.secret masked
    bob: str  # LOGIN, group sales: read-write on notes


@pytest.fixture(scope="module")
def shop(pg_server: PgServer) -> Iterator[Shop]:
    s = Shop(pg_server, f"{TAG}_gw", f"{TAG}_alice", f"{TAG}_bob")
    pg_server.execute(f"""
        CREATE ROLE "{s.gateway}" LOGIN; CREATE ROLE "{s.alice}" LOGIN; CREATE ROLE "{s.bob}" LOGIN;
        DROP SCHEMA IF EXISTS redteam CASCADE;
        CREATE SCHEMA redteam;
        CREATE TABLE redteam.accounts (id int PRIMARY KEY, name text NOT NULL, secret text NOT NULL);
        INSERT INTO redteam.accounts SELECT g, 'user' || g, '{MASKED}' FROM generate_series(1, 20) g;
        CREATE TABLE redteam.payment_tokens (id int PRIMARY KEY, token text NOT NULL);
        INSERT INTO redteam.payment_tokens VALUES (1, '{EXCLUDED}');
        CREATE TABLE redteam.notes (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
        INSERT INTO redteam.notes VALUES (1, '{s.alice}', 'alice-note'), (2, '{s.bob}', '{OTHERS}');
        ALTER TABLE redteam.notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own ON redteam.notes USING (owner = current_user);
        GRANT USAGE ON SCHEMA redteam TO "{s.alice}", "{s.bob}";
        -- The usual grant: every table of the schema. Only Bastion's rule keeps payment_tokens out.
        GRANT SELECT ON ALL TABLES IN SCHEMA redteam TO "{s.alice}";
        GRANT SELECT, UPDATE ON redteam.notes TO "{s.bob}";
    """)
    try:
        yield s
    finally:
        pg_server.execute("DROP SCHEMA IF EXISTS redteam CASCADE")
        for role in (s.gateway, s.alice, s.bob):
            pg_server.execute(f'DROP OWNED BY "{role}"; DROP ROLE IF EXISTS "{role}"')


def write_config(shop: Shop, tmp_path: Path, subject: str, group: str) -> Path:
    path = tmp_path / f"{group}.toml"
    path.write_text(f"""
[identity]
subject = "{subject}"
groups = ["{group}"]

[audit]
path = "{tmp_path / f'{group}-audit.db'}"

[connections.shop]
kind = "postgres"
target = "{shop.pg.dsn(user=shop.gateway)}"
search_path = "redteam"
mask = {{ "redteam.accounts.secret" = "redact" }}

  [[connections.shop.roles]]
  groups = ["support"]
  role = "{shop.alice}"
  login = true

  [[connections.shop.roles]]
  groups = ["sales"]
  role = "{shop.bob}"
  login = true

  [[connections.shop.rules]]
  id = "support-read"
  preset = "read-only"
  groups = ["support"]
  read_tables = ["redteam.*", "!redteam.payment_tokens", "pg_catalog.*", "information_schema.*"]

  [[connections.shop.rules]]
  id = "sales-write"
  preset = "read-write"
  groups = ["sales"]
  read_tables = ["redteam.notes"]
  write_tables = ["redteam.notes"]
""")
    return path


@pytest.fixture
async def alice(shop: Shop, tmp_path: Path) -> AsyncIterator[Client]:
    async with Client(create_server(load(write_config(shop, tmp_path, "alice@example.com", "support")))) as c:
        yield c


@pytest.fixture
async def bob(shop: Shop, tmp_path: Path) -> AsyncIterator[Client]:
    async with Client(create_server(load(write_config(shop, tmp_path, "bob@example.com", "sales")))) as c:
        yield c


async def call(client: Client, text: str) -> tuple[bool, str]:
    result = await client.call_tool("sql_query", {"connection": "shop", "sql": text})
    return result.is_error, " ".join(getattr(c, "text", "") for c in result.content)


def log_text(tmp_path: Path, group: str) -> str:
    return " ".join(str(e) for e in SqliteAuditStore(tmp_path / f"{group}-audit.db").iter_all())


# One text per class an attacker tries first; each must be refused or come back without a canary.
ATTACKS = (
    # function reach in every syntax
    "SELECT ('/etc/hostname'::text).pg_read_file", "SELECT * FROM ROWS FROM (pg_read_file('/etc/hostname'))",
    "SELECT x FROM pg_catalog.pg_ls_dir('.') x", "SELECT * FROM redteam.accounts, LATERAL pg_read_file('/etc/hostname') f",
    f"SELECT ({LOCK_KEY}::bigint).pg_advisory_lock", f"SELECT pg_try_advisory_xact_lock({LOCK_KEY})",
    "SELECT (0::oid).lo_create", "SELECT pg_sleep(30)", "SELECT setseed(0.5)", "SELECT pg_notify('c', 'x')",
    "SELECT set_config('bastion.user', 'bob@example.com', false)", "SELECT U&\"pg_read_fil\\0065\"('/etc/hostname')",
    # functions that run SQL text
    "SELECT ts_stat('SELECT to_tsvector(token) FROM redteam.payment_tokens')",
    "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, token::tsquery FROM redteam.payment_tokens')",
    "SELECT query_to_xml('SELECT * FROM redteam.payment_tokens', true, false, '')",
    "SELECT table_to_xml('redteam.payment_tokens', true, false, '')",
    # the excluded table another way
    "TABLE payment_tokens", "SELECT * FROM payment_tokens *", "SELECT (SELECT token FROM payment_tokens)",
    "SELECT 1 FROM accounts ORDER BY (SELECT token FROM payment_tokens)", "EXPLAIN ANALYZE SELECT * FROM payment_tokens",
    "SELECT 1; SELECT token FROM payment_tokens", "SELECT 'a\\'; SELECT token FROM payment_tokens; --'",
    "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'payment_tokens'",
    # statements that act beyond one read
    "COPY (SELECT token FROM payment_tokens) TO STDOUT", "DO $$ BEGIN PERFORM 1; END $$", "CALL p()",
    "PREPARE q AS SELECT token FROM payment_tokens", "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM accounts",
    "WITH x AS (UPDATE notes SET body = 'x' RETURNING 1) SELECT * FROM x", "SELECT * FROM notes FOR UPDATE",
    "LOCK TABLE notes", "LISTEN c", "SET statement_timeout = 0", "SET search_path = public", "RESET ALL",
    "SET SESSION AUTHORIZATION DEFAULT", "SET ROLE NONE", "DISCARD ALL", "PREPARE TRANSACTION 'x'", "COMMIT",
    "SELECT secret::int FROM accounts", "SELECT secret::regclass FROM accounts",
)
# These run, and must come back without a canary: masked, filtered by row-level security, or (the
# comment nests, as PostgreSQL's do) not reading the excluded table at all.
ANSWERED = (
    "SELECT secret FROM accounts", "SELECT a FROM accounts a", "SELECT row_to_json(a) FROM accounts a",
    "SELECT * FROM notes", "SELECT 1 /* /* */ ; SELECT token FROM payment_tokens; /* */ */ UNION ALL SELECT 2",
)


@requirement("sql:function-catalog", "sql:sql-text-function", "sql:session-change", "sql:comment-hiding")
async def test_the_attack_classes_reveal_no_canary_and_leave_nothing_behind(
        alice: Client, shop: Shop, tmp_path: Path) -> None:
    # The canaries are there to be found: straight from the server, as alice's own login.
    with psycopg.connect(shop.pg.dsn(user=shop.alice)) as direct:
        assert direct.execute("SELECT token FROM redteam.payment_tokens").fetchone() == (EXCLUDED,)
    for text in ATTACKS + ANSWERED:
        refused, shown = await call(alice, text)
        assert not any(c in shown for c in (EXCLUDED, MASKED, MASKED.lower(), OTHERS)), (text, shown)
        assert refused == (text in ATTACKS), (text, shown)
    assert not any(c in log_text(tmp_path, "support") for c in (EXCLUDED, MASKED, OTHERS))
    # Nothing is left behind: no lock, no changed row, no large object, no prepared transaction.
    assert shop.pg.advisory_locks(LOCK_KEY) == 0
    assert shop.pg.execute("SELECT id, body FROM redteam.notes ORDER BY id") == [(1, "alice-note"), (2, OTHERS)]
    assert shop.pg.execute(f"SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner = '{shop.alice}'::regrole") == [(0,)]
    assert shop.pg.execute("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()") == [(0,)]


@requirement("scope:clean-session")
async def test_a_callers_random_seed_does_not_decide_the_next_callers_random(bob: Client, shop: Shop) -> None:
    """setseed() is volatile, so a rule that writes may run it, and DISCARD ALL does not reset the
    seed: without a fresh seed per call, the next caller on the pooled connection draws numbers the
    previous one chose."""
    with psycopg.connect(shop.pg.dsn(), autocommit=True) as direct:
        direct.execute("SELECT setseed(0.42)")
        chosen = direct.execute("SELECT random()").fetchone()[0]  # type: ignore[index]
    refused, seeded = await call(bob, "SELECT setseed(0.42), pg_backend_pid()")
    assert not refused, seeded
    refused, drawn = await call(bob, "SELECT random(), pg_backend_pid()")
    assert not refused, drawn
    assert seeded.split("|")[-1].split()[0] == drawn.split("|")[-1].split()[0], "both calls must share one pooled backend"
    assert str(chosen) not in drawn, drawn


@requirement("sql:function-catalog", "sql:sensitive-catalog")
async def test_a_system_view_is_judged_by_the_functions_it_runs(alice: Client, shop: Shop) -> None:
    """pg_locks runs the volatile pg_lock_status(), pg_stat_ssl runs pg_stat_get_activity() over
    every session: read through the view, they are judged as if called; plain catalog views pass."""
    with psycopg.connect(shop.pg.dsn(user=shop.bob), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        assert str(LOCK_KEY) in str(shop.pg.execute("SELECT objid FROM pg_locks WHERE locktype = 'advisory'"))
        for text in ("SELECT objid FROM pg_locks WHERE locktype = 'advisory'", "SELECT * FROM pg_catalog.pg_locks",
                     "SELECT pid FROM pg_stat_ssl", "SELECT * FROM pg_prepared_xacts", "SELECT * FROM pg_stat_progress_vacuum"):
            refused, shown = await call(alice, text)
            assert refused and str(LOCK_KEY) not in shown, (text, shown)
        refused, shown = await call(alice, "SELECT objid FROM pg_locks WHERE locktype = 'advisory'")
        assert "pg_lock_status()" in shown and "pg_catalog.pg_locks" in shown, shown
    for text in ("SELECT column_name FROM information_schema.columns WHERE table_schema = 'redteam' AND table_name = 'notes'",
                 "SELECT relname FROM pg_stat_user_tables", "SELECT tablename FROM pg_tables WHERE schemaname = 'redteam'",
                 "SELECT rolname FROM pg_roles WHERE rolname = current_user"):
        refused, shown = await call(alice, text)
        assert not refused, (text, shown)


async def test_a_parameter_placeholder_is_the_statements_fault_not_a_lost_connection(alice: Client) -> None:
    refused, shown = await call(alice, "SELECT id FROM accounts WHERE id = $1")
    assert refused and "08P01" in shown and "unavailable" not in shown and "write each value" in shown, shown
    refused, shown = await call(alice, "SELECT count(*) FROM accounts")
    assert not refused and "20" in shown, shown


async def test_a_statement_timeout_turned_off_by_sql_still_meets_the_gateways_clock(shop: Shop) -> None:
    """statement_timeout is only a setting: a statement that got past the guard can turn it off.
    Sent straight to the executor, the stall is cut by the gateway's own clock and cancelled on the
    server (nothing of it keeps running)."""
    ex = PostgresExecutor("rt", shop.pg.dsn(user=shop.gateway), search_path="redteam", role_logins={shop.alice: None})
    stall = f"SELECT pg_sleep(120) /* {TAG} */"  # far longer than the guard below: gone means cancelled
    try:
        with pytest.raises(QueryTimeout):
            await ex.run(RunRequest(forged("SET LOCAL statement_timeout = 0", stall), False, Limits(timeout_s=0.5),
                                    Identity("alice@example.com", frozenset({"support"})), shop.alice))
        assert wait_until(lambda: not shop.pg.execute(
            "SELECT pid FROM pg_stat_activity WHERE query = %s AND state = 'active'", (stall,)), timeout=30)
    finally:
        await ex.close()


async def test_a_text_over_the_size_limit_is_refused_unparsed_and_parsing_stays_off_the_event_loop(
        alice: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1.3 MB text was parsed twice on the event loop (68 s here, every other caller waiting)
    before being refused for its size. Now it is refused unread, and the SQL tool parses a big text
    within the limit in a worker thread."""
    import threading

    import bastion.policy
    from bastion.tools import sql as sql_tool
    from bastion.tools.guard import MAX_TEXT_BYTES

    parsed: list[tuple[str, int, bool]] = []  # (who, bytes, on the event loop's thread)
    loop_thread = threading.current_thread()

    def spy(who: str, real):  # type: ignore[no-untyped-def]
        def analyse(text: str, *args: object) -> object:
            parsed.append((who, len(text.encode()), threading.current_thread() is loop_thread))
            return real(text, *args)
        return analyse

    monkeypatch.setattr(sql_tool, "analyse", spy("sql", sql_tool.analyse))
    monkeypatch.setattr(bastion.policy, "analyse", spy("masking", bastion.policy.analyse))
    assert not (await call(alice, "SELECT count(*) FROM accounts"))[0]  # the catalogs are read and fresh
    oversize = "SELECT 1 WHERE 1 IN (" + ",".join(map(str, range(60_000))) + ")"
    assert len(oversize) > MAX_TEXT_BYTES
    refused, shown = await call(alice, oversize)
    assert refused and "invalid_input" in shown and "the limit is" in shown, shown[:300]
    assert not any(size > MAX_TEXT_BYTES for _, size, _ in parsed), parsed
    parsed.clear()
    big = "SELECT 1 WHERE 1 IN (" + ",".join(map(str, range(10_000))) + ")"  # within the limit
    refused, shown = await call(alice, big)
    assert not refused, shown[:300]
    ours = [on_loop for who, size, on_loop in parsed if who == "sql" and size == len(big)]
    assert ours and not any(ours), parsed
