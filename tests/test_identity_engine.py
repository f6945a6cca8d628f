"""Identity the engine enforces. The statements here are sent straight to the executor, as if they
had got past the guard: PostgreSQL itself must refuse a role escape (a mapped role that logs in as
itself is not a member of any other), a setting the SQL can change is not an identity, and a pooled
connection forgets everything of its previous caller (DISCARD ALL)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from bastion.policy import Identity, Limits, analyse
from bastion.policy.errors import QueryRejected
from bastion.server.build import build_executor
from bastion.server.config import load
from bastion.tools.executors.base import RunRequest
from bastion.tools.executors.postgres import PostgresExecutor
from tests.conftest import requirement
from tests.postgres_server import PgServer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
ALICE = Identity("alice@example.com", frozenset({"support"}))
BOB = Identity("bob@example.com", frozenset({"sales"}))


@dataclasses.dataclass
class Roles:
    pg: PgServer
    alice: str  # LOGIN, reads own notes
    bob: str  # LOGIN, reads own notes
    writer: str  # NOLOGIN, may read and change every note
    gateway: str  # LOGIN NOINHERIT, member of all three (the SET LOCAL ROLE model)


@pytest.fixture(scope="module")
def roles(pg_server: PgServer) -> Iterator[Roles]:
    tag = uuid.uuid4().hex[:6]
    r = Roles(pg_server, f"idn_alice_{tag}", f"idn_bob_{tag}", f"idn_writer_{tag}", f"idn_gw_{tag}")
    pg_server.execute(f"""
        CREATE ROLE "{r.alice}" LOGIN; CREATE ROLE "{r.bob}" LOGIN; CREATE ROLE "{r.writer}" NOLOGIN;
        CREATE ROLE "{r.gateway}" LOGIN NOINHERIT;
        GRANT "{r.alice}", "{r.bob}", "{r.writer}" TO "{r.gateway}";
        DROP SCHEMA IF EXISTS idn CASCADE;
        CREATE SCHEMA idn;
        CREATE TABLE idn.notes (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
        INSERT INTO idn.notes VALUES (1, '{r.alice}', 'alice-note'), (2, '{r.bob}', 'bob-secret-note');
        ALTER TABLE idn.notes ENABLE ROW LEVEL SECURITY;
        -- The recommended policy: on the role, which a login holds and SQL cannot change.
        CREATE POLICY own_notes ON idn.notes TO "{r.alice}", "{r.bob}" USING (owner = current_user);
        CREATE POLICY every_note ON idn.notes TO "{r.writer}" USING (true);
        -- The old way: a setting Bastion sets per call, which SQL can set too.
        CREATE TABLE idn.legacy (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
        INSERT INTO idn.legacy VALUES (1, 'alice@example.com', 'alice-note'), (2, 'bob@example.com', 'bob-secret-note');
        ALTER TABLE idn.legacy ENABLE ROW LEVEL SECURITY;
        CREATE POLICY by_setting ON idn.legacy USING (owner = current_setting('bastion.user', true));
        GRANT USAGE ON SCHEMA idn TO "{r.alice}", "{r.bob}", "{r.writer}";
        GRANT SELECT ON idn.notes, idn.legacy TO "{r.alice}", "{r.bob}";
        GRANT SELECT, UPDATE ON idn.notes TO "{r.writer}";
    """)
    try:
        yield r
    finally:
        pg_server.execute("DROP SCHEMA IF EXISTS idn CASCADE")
        for role in (r.gateway, r.alice, r.bob, r.writer):
            pg_server.execute(f'DROP OWNED BY "{role}"; DROP ROLE IF EXISTS "{role}"')


def executor(r: Roles, *, logins: bool = True, max_connections: int = 4) -> PostgresExecutor:
    return PostgresExecutor("idn", r.pg.dsn(user=r.gateway), search_path="idn", max_connections=max_connections,
                            role_logins={r.alice: None, r.bob: None} if logins else None)


def forged(*texts: str) -> list:  # type: ignore[type-arg]
    """Statements as the executor gets them if the guard were fooled: any text, marked as a write
    (so it is not wrapped in a cursor) or as a plain read when it starts with SELECT."""
    out = []
    for text in texts:
        like = "SELECT 1" if text.lstrip().upper().startswith("SELECT") else "SET search_path = x"
        out.append(dataclasses.replace(analyse(like, "postgres").statements[0], text=text))
    return out


def request(role: str | None, *texts: str, who: Identity = ALICE) -> RunRequest:
    return RunRequest(forged(*texts), False, Limits(), who, role)


def bodies(r: Roles) -> list[tuple[object, ...]]:
    return r.pg.execute("SELECT id, body FROM idn.notes ORDER BY id")


@requirement("scope:engine-identity")
async def test_a_role_escape_sent_straight_to_the_executor_fails_in_postgresql(roles: Roles) -> None:
    ex = executor(roles)
    try:
        for escape in (f'SET ROLE "{roles.writer}"', f"SELECT set_config('role', '{roles.writer}', true)",
                       f'SET SESSION AUTHORIZATION "{roles.writer}"', f'SET ROLE "{roles.bob}"'):
            with pytest.raises(QueryRejected, match="42501|permission denied"):
                await ex.run(request(roles.alice, escape, "UPDATE notes SET body = 'overwritten'"))
        # RESET ROLE goes back to the login, which is alice herself.
        reset = await ex.run(request(roles.alice, "RESET ROLE", "SELECT current_user, session_user, count(*) FROM notes"))
        assert reset.rows == [[roles.alice, roles.alice, 1]]
        assert bodies(roles) == [(1, "alice-note"), (2, "bob-secret-note")]
    finally:
        await ex.close()


async def test_with_set_local_role_from_a_shared_login_the_same_escape_works(roles: Roles) -> None:
    """Why `login = true` exists: from the gateway's login, the escape reaches every role it holds.
    (Rolled back here: the statement after it fails on purpose.)"""
    ex = executor(roles, logins=False)
    try:
        escaped = await ex.run(request(roles.alice, f"SELECT set_config('role', '{roles.writer}', true)",
                                       "SELECT current_user, count(*) FROM notes"))
        assert escaped.rows == [[roles.writer, 2]]  # bob's note too: the database cannot tell
    finally:
        await ex.close()


@requirement("scope:engine-identity")
async def test_a_setting_the_sql_can_change_is_not_an_identity(roles: Roles) -> None:
    ex = executor(roles)
    try:
        spoof = "SELECT set_config('bastion.user', 'bob@example.com', true)"
        # A policy on the role: alice still reads only her note.
        own = await ex.run(request(roles.alice, spoof, "SELECT body FROM notes ORDER BY id"))
        assert own.rows == [["alice-note"]]
        # A policy on the setting: the same spoof reads bob's (docs/identity.md says not to rely on it).
        legacy = await ex.run(request(roles.alice, spoof, "SELECT body FROM legacy ORDER BY id"))
        assert legacy.rows == [["bob-secret-note"]]
        honest = await ex.run(request(roles.alice, "SELECT body FROM legacy ORDER BY id"))
        assert honest.rows == [["alice-note"]]
    finally:
        await ex.close()


@requirement("scope:clean-session")
async def test_every_pooled_session_starts_clean_across_two_identities(roles: Roles) -> None:
    """One connection in the pool, so bob gets the very backend alice just used and tried to leave
    things on: session settings (the role too), an advisory lock, a temporary table, a prepared
    statement and a LISTEN."""
    ex = executor(roles, logins=False, max_connections=1)
    try:
        first = await ex.run(request(roles.alice,
                                     "SELECT set_config('x.leftover', 'alice', false)",
                                     f"SELECT set_config('role', '{roles.writer}', false)",
                                     "SELECT pg_advisory_lock(4242)",
                                     "CREATE TEMP TABLE leftover (v text)",
                                     "PREPARE leftover_plan AS SELECT 1",
                                     "LISTEN leftover_channel",
                                     "SELECT pg_backend_pid()"))
        second = await ex.run(request(None,
                                      "SELECT pg_backend_pid(), current_user, current_setting('x.leftover', true),"
                                      " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),"
                                      " to_regclass('pg_temp.leftover'), (SELECT count(*) FROM pg_prepared_statements),"
                                      " (SELECT count(*) FROM pg_listening_channels()), current_setting('bastion.user')",
                                      who=BOB))
        pid = first.rows[0][0]
        # A custom setting once defined stays known to the backend, reset to empty: its value is gone.
        assert second.rows in ([[pid, roles.gateway, None, 0, None, 0, 0, BOB.subject]],
                               [[pid, roles.gateway, "", 0, None, 0, 0, BOB.subject]])
        assert roles.pg.advisory_locks(4242) == 0
    finally:
        await ex.close()


async def test_login_true_in_the_config_builds_a_pool_per_role(roles: Roles, tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[connections.notes]
kind = "postgres"
target = "{roles.pg.dsn(user=roles.gateway)}"
search_path = "idn"
preset = "read-only"

[[connections.notes.roles]]
groups = ["support"]
role = "{roles.alice}"
login = true

[[connections.notes.roles]]
groups = ["sales"]
role = "{roles.bob}"
""")
    loaded = load(config)
    ex = build_executor(loaded, "notes", loaded.connections["notes"])  # type: ignore[arg-type]
    assert isinstance(ex, PostgresExecutor) and ex.role_logins == {roles.alice: None}
    try:
        mine = await ex.run(RunRequest(analyse("SELECT current_user, session_user FROM notes", "postgres").statements,
                                       True, Limits(), ALICE, roles.alice))
        assert mine.rows == [[roles.alice, roles.alice]]
    finally:
        await ex.close()


async def test_a_connection_reset_between_many_calls_stays_usable_and_a_preview_runs_one_statement(roles: Roles) -> None:
    """DISCARD ALL deallocates prepared statements, so the driver prepares none: a statement repeated
    past psycopg's preparing threshold must not name one the server dropped. The preview, outside a
    pipeline, still goes through the extended protocol, which refuses a second statement."""
    ex = executor(roles, logins=False, max_connections=1)
    try:
        for _ in range(12):
            with anyio.fail_after(10):
                assert (await ex.run(request(roles.alice, "SELECT count(*) FROM notes"))).rows == [[1]]
        with pytest.raises(QueryRejected, match="multiple commands"):
            await ex.preview(RunRequest(forged("SELECT 1; SELECT 2"), False, Limits(), ALICE, roles.alice))
    finally:
        await ex.close()
