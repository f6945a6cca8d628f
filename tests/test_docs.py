"""The docs keep up with the code: every command, config key, preset value and error code is documented."""

from __future__ import annotations

import re

import click

from bastion.policy import errors
from bastion.policy.presets import PRESETS
from bastion.server import config
from bastion.server.cli import main
from tests.conftest import ROOT

DOCS = ROOT / "docs"


def _commands(group: click.Group, prefix: str = "bastion") -> list[str]:
    out = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        out.extend(_commands(command, path) if isinstance(command, click.Group) else [path])
    return out


def test_every_command_is_in_the_cli_reference() -> None:
    text = (DOCS / "cli.md").read_text()
    missing = [c for c in _commands(main) if f"## `{c}`" not in text]
    assert not missing, f"undocumented commands: {missing}"


def test_every_option_is_in_the_cli_reference() -> None:
    text = (DOCS / "cli.md").read_text()
    for command_path in _commands(main):
        command = main
        for part in command_path.split()[1:]:
            command = command.commands[part]  # type: ignore[attr-defined]
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in text, f"{command_path} {opt} is not in docs/cli.md"


def test_every_config_key_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    models = [config.IdentityConfig, config.AuditConfig, config.ConnectionConfig, config.RuleConfig,
              config.ShellConnectionConfig, config.ShellRuleConfig, config.AlertConfig, config.AuthConfig,
              config.RoleConfig, config.UserConfig, config.ApprovalsConfig, config.WebhookConfig]
    missing = [f"{m.__name__}.{key}" for m in models for key in m.model_fields if f"`{key}`" not in text]
    assert not missing, f"undocumented config keys: {missing}"


def test_the_presets_are_documented_exactly() -> None:
    text = (DOCS / "policy.md").read_text()
    for name, rule in PRESETS.items():
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        rows = {m[0]: m[1] for m in re.findall(r"^\| (\w+) \| (.*) \|$", section, re.M)}
        for key in ("allow", "review"):
            documented = set(re.findall(r"`(\w+)`", rows[key].split("(")[0]))
            assert documented == {k.value for k in getattr(rule, key)}, (name, key)
        assert set(re.findall(r"`(\w+)`", rows["allow_functions"])) == set(rule.allow_functions), name
        assert f"max_rows {rule.limits.max_rows}" in rows["limits"] and f"timeout {rule.limits.timeout_s:g} s" in rows["limits"]
        assert ("true" if rule.allow_locking else "false") in rows["allow_locking"]
        for pattern in rule.read_tables:
            if pattern.startswith("!"):
                assert f"`{pattern[1:]}`" in text, pattern


def test_every_error_code_is_documented() -> None:
    text = (DOCS / "errors.md").read_text()
    codes = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.BastionError)}
    missing = [code for code in codes if code not in text]
    assert not missing, f"undocumented error codes: {missing}"


def test_every_check_id_is_documented() -> None:
    from bastion.policy.sql.evaluate import CHECKS

    text = (DOCS / "policy.md").read_text()
    for check in CHECKS:
        doc = check.__doc__ or ""
        assert doc, f"{check.__name__} needs a docstring example"
    for check_id in ("deny-kind", "deny-function", "function", "kind", "locking", "table", "unfiltered", "review-kind"):
        assert f"`<rule>:{check_id}`" in text, check_id


def test_every_dangerous_function_is_in_the_reference() -> None:
    from bastion.policy.sql import dangerous_functions

    text = (DOCS / "dangerous-functions.md").read_text()
    names = set(dangerous_functions.POSTGRES) | set(dangerous_functions.SQLITE)
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert not missing, f"dangerous functions missing from docs/dangerous-functions.md: {missing}"


def test_the_shell_presets_are_documented_exactly() -> None:
    from bastion.policy.shell.presets import INSPECT

    text = (DOCS / "policy.md").read_text()
    section = text.split("### `inspect`", 1)[1].split("\n### ", 1)[0]
    rows = {m[0]: m[1] for m in re.findall(r"^\| (\w+) \| (.*) \|$", section, re.M)}
    assert set(re.findall(r"`([^`]+)`", rows["programs"])) == set(INSPECT.programs)
    assert set(re.findall(r"`([\w-]+)`", rows["git_subcommands"])) == set(INSPECT.git_subcommands)
    assert set(re.findall(r"`([\w-]+)`", rows["constructs"])) == set(INSPECT.constructs)
    assert set(re.findall(r"`([^`]+)`", rows["deny_paths"])) == set(INSPECT.deny_paths)
    assert set(re.findall(r"`(\w+)`", rows["variables"])) == set(INSPECT.variables)
    assert f"timeout {INSPECT.limits.timeout_s:g} s" in rows["limits"]


def test_ci_runs_the_readmes_test_command() -> None:
    """README's "Tests" command is the one `.ci/run` ends with, and CONTRIBUTING's "everything" line
    repeats it: a reader runs what CI runs (today in parallel, pytest-xdist from the dev extra)."""
    readme = (ROOT / "README.md").read_text().split("## Tests", 1)[1]
    command = re.search(r"```sh\n(.+)\n```", readme)
    assert command, "README.md's Tests section has no ```sh block"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == command[1]
    assert f"{command[1]}  " in (DOCS / "CONTRIBUTING.md").read_text()
    assert "pytest-xdist" in (ROOT / "pyproject.toml").read_text()
