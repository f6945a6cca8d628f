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


def test_the_examples_validate(demo_config: Path) -> None:
    assert load(demo_config).connections["demo"].kind == "sqlite"
    assert load(ROOT / "examples" / "postgres.toml").connections["analytics"].password_env


def test_an_error_names_file_key_path_found_and_expected(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "sqlite"\ntarget = "x.db"\n[[connections.db.rules]]\nmax_rows = -5\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = caught.value.message
    assert str(path) in message and "connections.db.rules[0].max_rows" in message
    assert "greater than 0" in message and "found -5" in message


def test_an_unknown_key_is_refused_with_its_line_and_a_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "sqlite"\ntarget = "x.db"\npasword_env = "X"\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.message == f"{path}:4: connections.db.pasword_env: unknown key; did you mean `password_env`?"
    path = write(tmp_path, '[identiy]\nsubject = "x"\n[connections.db]\nkind = "sqlite"\ntarget = "x.db"\n'
                           '[[connections.db.rules]]\nid = "a"\n[[connections.db.rules]]\ngroup = ["dev"]\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.message.splitlines() == [
        f"{path}:1: identiy: unknown key; did you mean `identity`?",
        f"{path}:9: connections.db.rules[1].group: unknown key; did you mean `groups`?"]


def test_wrong_types_are_refused_not_coerced(tmp_path: Path) -> None:
    for line, found, expected in [('max_rows = "100"', 'found "100"', "expected a whole number"),
                                  ("self_confirm = 1", "found 1", "expected true or false"),
                                  ('groups = "dev"', 'found "dev"', "expected a list"),
                                  ("timeout = true", "found true", "expected a number")]:
        path = write(tmp_path, f'[connections.db]\nkind = "sqlite"\ntarget = "x.db"\n[[connections.db.rules]]\n{line}\n')
        with pytest.raises(ConfigError) as caught:
            load(path)
        key = line.split()[0]
        assert caught.value.message.startswith(f"{path}:5: connections.db.rules[0].{key}: {found}; {expected}"), caught.value.message


def test_an_unknown_value_names_what_is_expected(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.x]\nkind = "oracle"\ntarget = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.message == f"{path}:2: connections.x.kind: found \"oracle\"; expected one of 'postgres', 'sqlite', 'local', 'ssh', 'container'"
    path = write(tmp_path, '[connections.x]\nkind = "sqlite"\ntarget = "x"\n\n[[connections.x.rules]]\npreset = "readonly"\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.message == f'{path}:6: connections.x.rules[0].preset: found "readonly"; did you mean "read-only"?'


@pytest.mark.parametrize("text, line, says", [
    ('[connections.db]\nkind = "sqlite"\ngroups = [\n  "a",\n\ntarget = "x.db"\n', 3, "this array is never closed"),
    ('[a]\ngroups = ["x", "y"\n\n', 2, "this array is never closed"),
    ('[connections.db]\nkind = "sqlite\ntarget = "x"\n', 2, "this string is never closed"),
    ('[connections.db]\nkind = sqlite\n', 2, "text needs quotes"),
    ('[connections\nkind = 1\n', 1, "Expected ']'"),
])
def test_a_toml_error_points_at_the_line_to_fix(tmp_path: Path, text: str, line: int, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.message.startswith(f"{path}:{line}: not valid TOML: ") and says in caught.value.message


def test_an_unknown_statement_kind_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "sqlite"\ntarget = "x.db"\n[[connections.db.rules]]\nallow = ["selekt"]\n')
    with pytest.raises(ConfigError, match=r":5: connections.db.rules\[0\].allow\[0\]: found \"selekt\"; did you mean \"select\"\?"):
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
    assert "bastion demo" in (caught.value.hint or "")


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
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.message == f"{path}:7: rule id `a` is used twice"  # the second one


def test_a_connection_without_rules_denies_everything(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\nkind = "sqlite"\ntarget = "x.db"\n')
    assert load(path).policies()["db"].rules == ()
