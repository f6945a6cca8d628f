"""Every call runs as the caller's mapped identity, and the target enforces it: two people with
different tokens use one `bastion serve --http` process; PostgreSQL's own grants and a row-level
security policy reading current_setting('bastion.user') decide what each sees and changes."""

from __future__ import annotations

import os
import pwd
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bastion.policy import Identity
from bastion.server.build import build_gateway
from bastion.server.config import load
from bastion.store import SqliteAuditStore
from tests.conftest import requirement
from tests.oidc_server import OidcProvider
from tests.postgres_server import PgServer
from tests.test_http import free_port, serving
from bastion.tools.calls import Caller

pytestmark = pytest.mark.anyio

# The documented set-up (docs/identity.md): the gateway logs in as a NOINHERIT role that is a member
# of the mapped roles, so it holds no privileges of its own until SET LOCAL ROLE.
RLS_SETUP = """
DROP SCHEMA IF EXISTS notes CASCADE;
CREATE SCHEMA notes;
CREATE ROLE "{r.gateway}" LOGIN NOINHERIT;
CREATE ROLE "{r.reader}" NOLOGIN;
CREATE ROLE "{r.writer}" NOLOGIN;
GRANT "{r.reader}", "{r.writer}" TO "{r.gateway}";
CREATE TABLE notes.notes (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
INSERT INTO notes.notes VALUES (1, 'alice', 'a1'), (2, 'alice', 'a2'), (3, 'bob', 'b1'), (4, 'bob', 'b2'), (5, 'bob', 'b3');
ALTER TABLE notes.notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON notes.notes USING (owner = current_setting('bastion.user', true));
GRANT USAGE ON SCHEMA notes TO "{r.reader}", "{r.writer}";
GRANT SELECT ON notes.notes TO "{r.reader}";
GRANT SELECT, UPDATE ON notes.notes TO "{r.writer}";
"""


@dataclass(frozen=True)
class Roles:
    gateway: str
    reader: str
    writer: str


@pytest.fixture
def roles(pg_server: PgServer) -> Iterator[Roles]:
    """The gateway's login and the two mapped roles: cluster-wide, so named for this run and dropped."""
    prefix = f"se_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    r = Roles(f"{prefix}_gateway", f"{prefix}_reader", f"{prefix}_writer")
    pg_server.execute(RLS_SETUP.format(r=r))
    try:
        yield r
    finally:
        pg_server.execute("DROP SCHEMA IF EXISTS notes CASCADE")
        for role in (r.gateway, r.reader, r.writer):
            pg_server.execute(f'DROP OWNED BY "{role}"; DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def people(oidc_provider: OidcProvider) -> dict[str, str]:
    """Three users with fresh subjects; the RLS policy matches on the subject."""
    tag = uuid.uuid4().hex[:6]
    subjects = {"alice": f"alice-{tag}", "bob": f"bob-{tag}", "carol": f"carol-{tag}"}
    for person, group in (("alice", "support"), ("bob", "sales"), ("carol", "interns")):
        oidc_provider.add_user(subjects[person], email=f"{person}@example.com", groups=[group])
    return subjects


@pytest.fixture
def scoped_config(tmp_path: Path, pg_server: PgServer, oidc_provider: OidcProvider, people: dict[str, str],
                  roles: Roles) -> Iterator[Path]:
    pg_server.execute("UPDATE notes.notes SET owner = %s WHERE owner = 'alice'", (people["alice"],))
    pg_server.execute("UPDATE notes.notes SET owner = %s WHERE owner = 'bob'", (people["bob"],))
    port = free_port()
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[auth]
issuer = "{oidc_provider.issuer}"
resource = "http://127.0.0.1:{port}/mcp"

[connections.notes]
kind = "postgres"
target = "{pg_server.dsn(user=roles.gateway)}"
search_path = "notes"
preset = "read-write"

[[connections.notes.roles]]
groups = ["support"]
role = "{roles.reader}"

[[connections.notes.roles]]
groups = ["sales"]
role = "{roles.writer}"
""")
    yield config


async def _session(url: str, token: str):  # type: ignore[no-untyped-def]
    http = httpx2.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"})
    return http, Client(streamable_http_client(url, http_client=http))


@requirement("scope:role", "scope:unmapped-invisible")
async def test_two_people_see_and_change_only_what_their_role_and_rls_allow(
        scoped_config: Path, oidc_provider: OidcProvider, people: dict[str, str], roles: Roles) -> None:
    port = int(load(scoped_config).auth.resource.rsplit(":", 1)[1].split("/")[0])  # type: ignore[union-attr]
    results = {}
    with serving(scoped_config, port) as (_, url):
        for person in ("alice", "bob", "carol"):
            token = oidc_provider.token(people[person], url)
            async with httpx2.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http, \
                    Client(streamable_http_client(url, http_client=http)) as client:
                listed = await client.call_tool("list_connections", {})
                read = await client.call_tool("sql_query", {"connection": "notes", "sql": "SELECT id FROM notes ORDER BY id"})
                # Bastion's rule allows the write; PostgreSQL decides (grants, then RLS).
                write = await client.call_tool("sql_query", {"connection": "notes",
                                                             "sql": "UPDATE notes SET body = 'x' WHERE id IN (1, 3)"})
                results[person] = (listed, read, write)

    alice, bob, carol = results["alice"], results["bob"], results["carol"]
    assert [c["name"] for c in alice[0].structured_content["connections"]] == ["notes"]
    assert alice[1].structured_content["rows"] == [[1], [2]]
    assert bob[1].structured_content["rows"] == [[3], [4], [5]]
    # alice's role may not UPDATE at all: the database refuses it.
    assert alice[2].is_error and "42501" in alice[2].content[0].text
    # bob's role may, but RLS limits it to his own row 3.
    assert bob[2].structured_content["row_count"] == 1
    # carol has no mapping: she neither sees nor may call the connection.
    assert carol[0].structured_content["connections"] == []
    assert carol[1].is_error and "no connection `notes` you may use" in carol[1].content[0].text

    events = list(SqliteAuditStore(scoped_config.parent / "bastion-audit.db").iter_all())
    ran_as = {(e["identity"]["subject"], e["decision"]["run_as"]["as"]) for e in events
              if e["type"] == "call.requested" and e["tool"] == "sql_query" and e["decision"] and "run_as" in e["decision"]}
    assert ran_as == {(people["alice"], roles.reader), (people["bob"], roles.writer)}


@requirement("scope:role")
async def test_the_call_runs_as_the_role_with_the_identity_settings(scoped_config: Path, people: dict[str, str],
                                                                    roles: Roles) -> None:
    gateway = build_gateway(load(scoped_config))
    bob = Identity(people["bob"], frozenset({"sales"}))
    try:
        done = await gateway.sql_query(Caller(bob), "notes", "SELECT current_user, session_user, "
                                       "current_setting('bastion.user'), current_setting('application_name')", None)
    finally:
        await gateway.close()
    assert done.result.rows == [[roles.writer, roles.gateway, people["bob"], f"bastion:{people['bob']}"]]


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("running a local shell as a mapped OS user needs Bastion (and so this test) to run as root, "
                    "which CI does; run the suite as root to cover it")


@requirement("scope:shell-user")
async def test_a_local_shell_runs_as_the_mapped_os_user(tmp_path: Path) -> None:
    _need_root()
    pwd.getpwnam("nobody")
    workdir = tmp_path / "work"
    workdir.mkdir()
    tmp_path.chmod(0o755)
    workdir.chmod(0o755)
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[connections.box]
kind = "local"
cwd = "{workdir}"

[[connections.box.rules]]
programs = ["whoami"]

[[connections.box.users]]
groups = ["ops"]
user = "nobody"
""")
    gateway = build_gateway(load(config))
    try:
        done = await gateway.shell_run(Caller(Identity("olga", frozenset({"ops"}))), "box", "whoami", None)
        assert done.result.stdout.strip() == "nobody"
        with pytest.raises(Exception, match="no connection `box` you may use"):
            await gateway.shell_run(Caller(Identity("ivan", frozenset({"interns"}))), "box", "whoami", None)
    finally:
        await gateway.close()


@requirement("scope:shell-user")
async def test_ssh_runs_as_the_mapped_remote_user_with_that_users_key(tmp_path: Path, sshd) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    for name in ("ops_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    authorized = sshd.key_file.parent / "authorized_keys"
    authorized.write_text(authorized.read_text() + (tmp_path / "ops_key.pub").read_text())
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[connections.remote]
kind = "ssh"
host = "127.0.0.1"
port = {sshd.port}
user = "nobody-by-default"
key_file = "{tmp_path / 'stranger_key'}"
known_hosts = "{sshd.known_hosts}"
cwd = "/"

[[connections.remote.rules]]
programs = ["whoami"]

[[connections.remote.users]]
groups = ["ops"]
user = "{sshd.user}"
key_file = "{tmp_path / 'ops_key'}"

[[connections.remote.users]]
groups = ["dev"]
user = "{sshd.user}"
""")
    gateway = build_gateway(load(config))
    try:
        done = await gateway.shell_run(Caller(Identity("olga", frozenset({"ops"}))), "remote", "whoami", None)
        assert done.result.stdout.strip() == sshd.user
        # dev's entry names no key: it falls back to the connection's, which sshd does not accept.
        with pytest.raises(Exception, match="unavailable"):
            await gateway.shell_run(Caller(Identity("dan", frozenset({"dev"}))), "remote", "whoami", None)
        with pytest.raises(Exception, match="no connection `remote` you may use"):
            await gateway.shell_run(Caller(Identity("ivan", frozenset({"interns"}))), "remote", "whoami", None)
    finally:
        await gateway.close()


async def test_the_impact_preview_on_postgresql_counts_rows_as_the_role_and_changes_nothing(
        scoped_config: Path, people: dict[str, str], pg_server: PgServer) -> None:
    from bastion.policy.errors import PendingApproval

    gateway = build_gateway(load(scoped_config))
    gateway.guard.holds.wait_s = 0.2  # type: ignore[union-attr]
    bob = Caller(Identity(people["bob"], frozenset({"sales"})))
    before = pg_server.execute("SELECT id, body FROM notes.notes ORDER BY id")
    try:
        with pytest.raises(PendingApproval):  # no WHERE: read-write holds it
            await gateway.sql_query(bob, "notes", "UPDATE notes SET body = 'x'", None)
        (hold,) = gateway.approvals.list()
    finally:
        await gateway.close()
    (statement,) = hold.preview["statements"]  # type: ignore[index]
    # Run as the writer role under RLS: bob's three rows, not all five; and nothing changed.
    assert statement["rows"] == 3 and "Update on notes" in statement["plan"]
    assert hold.preview["rolled_back"] is True  # type: ignore[index]
    assert pg_server.execute("SELECT id, body FROM notes.notes ORDER BY id") == before
