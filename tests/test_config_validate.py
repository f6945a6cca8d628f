"""`bastion config validate`: secrets by reference and the files a config names are checked, each
problem on its own line with the file's line and the key; with --connect every target must answer
(the real PostgreSQL here) and a PostgreSQL login must be what the rules assume."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from psycopg import sql

from bastion.server.cli import main
from tests.postgres_server import PgServer


def validate(config: Path, *extra: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["config", "validate", "--config", str(config), *extra])
    return result.exit_code, result.stdout, result.stderr


def test_a_valid_demo_config_says_ok_and_with_connect_that_each_target_answers(demo_config: Path) -> None:
    code, out, err = validate(demo_config)
    assert code == 0 and "demo (sqlite): developers-read" in out and "ok (the targets were not contacted" in out
    code, out, err = validate(demo_config, "--connect")
    assert code == 0 and "demo: answers; 5 tables and views readable" in out and out.endswith("ok\n"), out + err


def test_unset_secrets_and_missing_files_are_each_named_with_their_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_TEST_NO_PASSWORD", raising=False)
    monkeypatch.delenv("BASTION_TEST_NO_KEY", raising=False)
    config = tmp_path / "bastion.toml"
    config.write_text('[audit]\ncheckpoint_key_env = "BASTION_TEST_NO_KEY"\n\n'
                      '[connections.pg]\nkind = "postgres"\ntarget = "host=127.0.0.1 user=u"\npassword_env = "BASTION_TEST_NO_PASSWORD"\n'
                      'preset = "read-only"\n\n'
                      '[connections.lite]\nkind = "sqlite"\ntarget = "missing.db"\npreset = "read-only"\n\n'
                      '[connections.sh]\nkind = "local"\ncwd = "no-such-folder"\npreset = "inspect"\n\n'
                      '[connections.pw]\nkind = "postgres"\ntarget = "host=127.0.0.1 user=u"\npassword_file = "pw.txt"\n'
                      'preset = "read-only"\n[[connections.pw.roles]]\ngroups = ["a"]\nrole = "r"\nlogin = true\n'
                      'password_file = "role.pw"\n')
    code, out, err = validate(config, "--connect")
    assert code == 1 and "Traceback" not in out + err
    assert err.splitlines() == [
        f"{config}:7: connections.pg.password_env: the environment variable `BASTION_TEST_NO_PASSWORD` is not set",
        f"{config}:12: connections.lite.target: no SQLite database at {tmp_path / 'missing.db'}",
        f"{config}:17: connections.sh.cwd: no folder at {tmp_path / 'no-such-folder'}",
        f"{config}:23: connections.pw.password_file: no password file at {tmp_path / 'pw.txt'}",
        f"{config}:29: connections.pw.roles[0].password_file: no password file at {tmp_path / 'role.pw'}",
        f"{config}:2: audit.checkpoint_key_env: the environment variable `BASTION_TEST_NO_KEY` is not set",
        "Error: 6 problems (above)"]


@pytest.mark.postgres
def test_connect_reports_a_target_that_does_not_answer(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text('[connections.pg]\nkind = "postgres"\ntarget = "host=127.0.0.1 port=1 user=u dbname=x"\npreset = "read-only"\n')
    code, out, err = validate(config, "--connect")
    assert code == 1 and f"{config}:1: connections.pg: does not answer" in err and "Traceback" not in out + err


@pytest.mark.postgres
def test_connect_checks_that_a_postgres_login_is_what_the_rules_assume(tmp_path: Path, pg_server: PgServer) -> None:
    role = f"bastion_probe_{uuid.uuid4().hex[:8]}"
    pg_server.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)).as_string(None))  # type: ignore[arg-type]
    pg_server.execute("CREATE TABLE IF NOT EXISTS probe_orders (id int)")
    try:
        config = tmp_path / "bastion.toml"

        def write(dsn: str) -> None:
            config.write_text(f'[connections.pg]\nkind = "postgres"\ntarget = "{dsn}"\npreset = "read-only"\n')

        write(pg_server.dsn(user=role))
        code, out, err = validate(config, "--connect")
        assert code == 0 and f"pg: answers as `{role}`" in out, out + err
        pg_server.execute(sql.SQL("GRANT UPDATE ON probe_orders TO {}").format(sql.Identifier(role)).as_string(None))  # type: ignore[arg-type]
        code, out, err = validate(config, "--connect")
        assert code == 1 and f"no rule allows writes, but the login `{role}` may change public.probe_orders" in err
        write(pg_server.dsn())  # the admin login of the test server: a superuser
        code, out, err = validate(config, "--connect")
        assert code == 1 and "is a superuser" in err
    finally:
        pg_server.execute("DROP TABLE IF EXISTS probe_orders")
        pg_server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)).as_string(None))  # type: ignore[arg-type]
