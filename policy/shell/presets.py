"""Built-in shell presets, documented exactly in docs/policy.md."""

from __future__ import annotations

from dataclasses import replace

from bastion.policy.shell.rules import ShellRule

INSPECT = ShellRule(
    id="inspect",
    preset="inspect",
    programs=frozenset({"ls", "cat", "head", "tail", "grep", "find", "wc", "ps", "df", "du", "git", "echo"}),
    git_subcommands=frozenset({"status", "log", "diff", "show"}),
    redirects="read",
    write_paths=("/dev/null",),
)

SHELL_PRESETS: dict[str, ShellRule] = {"inspect": INSPECT, "developer": replace(INSPECT, id="developer", preset="developer")}


def developer(programs: frozenset[str]) -> ShellRule:
    """``inspect`` plus the build and test commands the config names."""
    return replace(INSPECT, id="developer", preset="developer", programs=INSPECT.programs | programs)
