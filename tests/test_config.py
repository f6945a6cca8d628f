"""Config errors name the file, the key path, what was found and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.policy import Kind, Verdict
from bastion.policy.errors import ConfigError
from bastion.server.build import build_gateway
from bastion.server.config import load
from tests.conftest import ROOT, requirement


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text(text)
    return path


def test_the_examples_validate() -> None:
    assert load(ROOT / "examples" / "bastion.toml").connections["demo"].kind == "sqlite"
    assert load(ROOT / "examples" / "postgres.toml").connections["analytics"].password_env


def test_an_error_names_file_key_path_found_and_expected(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "sqlite"\ntarget = "x.db"\n[[connections.db.rules]]\nmax_rows = -5\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = caught.value.message
    assert str(path) in message and "connections.db.rules[0].max_rows" in message
    assert "greater than 0" in message and "found -5" in message


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "sqlite"\ntarget = "x.db"\npasword_env = "X"\n')
    with pytest.raises(ConfigError, match="connections.db.pasword_env: Extra inputs are not permitted"):
        load(path)


def test_an_unknown_statement_kind_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "sqlite"\ntarget = "x.db"\n[[connections.db.rules]]\nallow = ["selekt"]\n')
    with pytest.raises(ConfigError, match=r"connections.db.rules\[0\].allow\[0\]: Input should be 'select'"):
        load(path)


@requirement("inv:no-credential-leak")
def test_an_inline_password_in_a_dsn_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "postgres"\ntarget = "host=h user=u password=hunter2"\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "password_env" in caught.value.message


def test_a_missing_secret_env_var_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_PASSWORD", raising=False)
    path = write(tmp_path, '[connections.db]\nkind = "postgres"\ntarget = "host=127.0.0.1 user=u"\npassword_env = "NO_SUCH_PASSWORD"\n')
    with pytest.raises(ConfigError, match="connections.db.password_env: the environment variable `NO_SUCH_PASSWORD` is not set"):
        build_gateway(load(path))


def test_a_secret_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    path = write(tmp_path, '[connections.db]\nkind = "postgres"\ntarget = "host=127.0.0.1 user=u"\npassword_file = "pw"\n'
                 '[audit]\npath = "audit.db"\n')
    gateway = build_gateway(load(path))
    assert gateway.connections["db"].executor.pool.kwargs["password"] == "s3cret"  # type: ignore[attr-defined]


def test_bad_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[connections\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


def test_a_missing_file_says_how_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "nope.toml")
    assert "examples/bastion.toml" in (caught.value.hint or "")


def test_rules_start_from_a_preset_and_override_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "postgres"\ntarget = "host=h"\n[[connections.db.rules]]\n'
                 'preset = "read-write"\ngroups = ["dba"]\ndeny = ["drop"]\nunfiltered_writes = "deny"\ntimeout = 5\n')
    rule = load(path).policies()["db"].rules[0]
    assert rule.id == "read-write" and rule.groups == {"dba"} and rule.deny == {Kind.DROP}
    assert rule.unfiltered_writes is Verdict.DENY and rule.limits.timeout_s == 5
    assert Kind.UPDATE in rule.allow  # kept from the preset


def test_duplicate_rule_ids_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "sqlite"\ntarget = "x.db"\n'
                 '[[connections.db.rules]]\nid = "a"\n[[connections.db.rules]]\nid = "a"\n')
    with pytest.raises(ConfigError, match="rule id `a` is used twice"):
        load(path)


def test_a_connection_without_rules_denies_everything(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "sqlite"\ntarget = "x.db"\n')
    assert load(path).policies()["db"].rules == ()
