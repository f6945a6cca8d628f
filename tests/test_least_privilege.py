"""Least privilege, verified: before the first call runs, the gateway reads what its PostgreSQL login
and each mapped role can do, and refuses to serve a connection whose logins can do more than its
rules need, unless the config names each extra right in `accept_rights`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client

from bastion.policy.errors import ConfigError
from bastion.policy.sql.privileges import LoginRights, excess
from bastion.server.app import create_server
from bastion.server.config import load
from tests.conftest import requirement
from tests.postgres_server import PgServer

pytestmark = pytest.mark.anyio


def test_each_right_beyond_the_rules_is_named_and_can_be_accepted() -> None:
    rights = LoginRights("gw", frozenset({"bypassrls"}), frozenset({"pg_signal_backend", "pg_monitor"}),
                         owns=("app.orders",), writable=("app.orders",))
    assert [e.right for e in excess(rights, writes_allowed=False)] == [
        "bypassrls", "pg_signal_backend", "pg_monitor", "ownership", "write-grants"]
    assert [e.right for e in excess(rights, writes_allowed=True)] == ["bypassrls", "pg_signal_backend", "pg_monitor", "ownership"]
    accepted = frozenset({"bypassrls", "pg_signal_backend", "pg_monitor", "ownership"})
    assert excess(rights, writes_allowed=True, accepted=accepted) == ()


@pytest.fixture(scope="module")
def logins(pg_server: PgServer) -> Iterator[tuple[PgServer, str, str, str]]:
    tag = uuid.uuid4().hex[:6]
    wide, narrow, mapped = f"lp_wide_{tag}", f"lp_narrow_{tag}", f"lp_mapped_{tag}"
    pg_server.execute(f"""
        DROP SCHEMA IF EXISTS lp CASCADE;
        CREATE SCHEMA lp;
        CREATE TABLE lp.items (id int PRIMARY KEY, state text NOT NULL);
        INSERT INTO lp.items VALUES (1, 'new');
        CREATE ROLE "{wide}" LOGIN; CREATE ROLE "{narrow}" LOGIN NOINHERIT; CREATE ROLE "{mapped}" NOLOGIN BYPASSRLS;
        GRANT pg_read_server_files, pg_signal_backend TO "{wide}";
        GRANT "{mapped}" TO "{narrow}";
        GRANT USAGE ON SCHEMA lp TO "{wide}", "{narrow}", "{mapped}";
        GRANT SELECT, UPDATE ON lp.items TO "{wide}";
        GRANT SELECT ON lp.items TO "{narrow}", "{mapped}";
    """)
    try:
        yield pg_server, wide, narrow, mapped
    finally:
        pg_server.execute("DROP SCHEMA IF EXISTS lp CASCADE")
        for role in (wide, narrow, mapped):
            pg_server.execute(f'DROP OWNED BY "{role}"; DROP ROLE IF EXISTS "{role}"')


def config(tmp_path: Path, pg: PgServer, login: str, body: str) -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text(f"""
[identity]
subject = "alice@example.com"
groups = ["support"]

[connections.lp]
kind = "postgres"
target = "{pg.dsn(user=login)}"
search_path = "lp"
{body}
""")
    return path


async def call(path: Path, text: str) -> tuple[bool, str]:
    async with Client(create_server(load(path))) as client:
        result = await client.call_tool("sql_query", {"connection": "lp", "sql": text})
    return result.is_error, result.content[0].text


@requirement("sql:least-privilege")
async def test_a_login_with_more_rights_than_the_rules_need_is_not_served(
        logins: tuple[PgServer, str, str, str], tmp_path: Path) -> None:
    pg, wide, _, _ = logins
    path = config(tmp_path, pg, wide, 'preset = "read-write"')
    failed, message = await call(path, "UPDATE items SET state = 'changed' WHERE id = 1")
    assert failed and "is not served" in message, message
    assert "pg_read_server_files" in message and "pg_signal_backend" in message and "accept_rights" in message
    assert pg.execute("SELECT state FROM lp.items") == [("new",)]  # nothing ran
    read_only = config(tmp_path, pg, wide, 'preset = "read-only"\naccept_rights = ["pg_read_server_files", "pg_signal_backend"]')
    failed, message = await call(read_only, "SELECT state FROM items")
    assert failed and "`write-grants`" in message and "no rule allows a write" in message, message


@requirement("sql:least-privilege")
async def test_accepted_rights_are_served(logins: tuple[PgServer, str, str, str], tmp_path: Path) -> None:
    pg, wide, _, _ = logins
    path = config(tmp_path, pg, wide, 'preset = "read-write"\naccept_rights = ["pg_read_server_files", "pg_signal_backend"]')
    failed, message = await call(path, "UPDATE items SET state = 'seen' WHERE id = 1")
    assert not failed, message
    assert pg.execute("SELECT state FROM lp.items") == [("seen",)]
    pg.execute("UPDATE lp.items SET state = 'new'")


@requirement("sql:least-privilege")
async def test_a_mapped_role_is_checked_too(logins: tuple[PgServer, str, str, str], tmp_path: Path) -> None:
    pg, _, narrow, mapped = logins
    path = config(tmp_path, pg, narrow, f'preset = "read-only"\n[[connections.lp.roles]]\ngroups = ["support"]\nrole = "{mapped}"')
    failed, message = await call(path, "SELECT state FROM items")
    assert failed and f"`{mapped}`" in message and "bypasses row-level security" in message, message


def test_an_unknown_right_in_accept_rights_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bastion.toml"
    path.write_text('[connections.x]\nkind = "postgres"\ntarget = "host=127.0.0.1 dbname=x"\npreset = "read-only"\n'
                    'accept_rights = ["pg_read_everything"]\n')
    with pytest.raises(ConfigError, match="accept_rights"):
        load(path)


@requirement("sql:least-privilege")
def test_config_validate_connect_names_the_rights_the_gateway_would_refuse(
        logins: tuple[PgServer, str, str, str], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bastion.server.cli import main

    pg, wide, _, _ = logins
    path = config(tmp_path, pg, wide, 'preset = "read-write"')
    run = CliRunner().invoke(main, ["config", "validate", "--connect", "--config", str(path)])
    output = run.output + (run.stderr if run.stderr_bytes else "")
    assert run.exit_code == 1 and "pg_read_server_files" in output and "accept_rights" in output, output
    accepted = config(tmp_path, pg, wide, 'preset = "read-write"\naccept_rights = ["pg_read_server_files", "pg_signal_backend"]')
    run = CliRunner().invoke(main, ["config", "validate", "--connect", "--config", str(accepted)])
    assert run.exit_code == 0, run.output


async def test_the_logins_are_read_when_the_gateway_starts(logins: tuple[PgServer, str, str, str], tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from bastion.server.build import build_gateway

    pg, wide, _, _ = logins
    path = config(tmp_path, pg, wide, 'preset = "read-write"\naccept_rights = ["pg_read_server_files", "pg_signal_backend"]')
    gateway = build_gateway(load(path))
    try:
        with caplog.at_level("WARNING"):
            await gateway.start()
        accepted = [r.getMessage() for r in caplog.records if "accepted by accept_rights" in r.getMessage()]
        assert any("pg_read_server_files" in m for m in accepted) and any("pg_signal_backend" in m for m in accepted)
        (checked,) = [e for e in gateway.store.iter_all() if e["type"] == "connection.checked"]
        assert checked["result"]["served"] and {a["right"] for a in checked["result"]["accepted_rights"]} == {
            "pg_read_server_files", "pg_signal_backend"}
    finally:
        await gateway.close()
