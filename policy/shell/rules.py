"""The shell rule model: which programs, arguments, operators, redirections and expansions a rule allows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bastion.policy.decision import Limits
from bastion.policy.identity import Identity
from bastion.policy.rules import applies

DEFAULT_OPERATORS = frozenset({"|", "&&", "||", ";", "newline"})
DEFAULT_VARIABLES = frozenset({"HOME", "PWD", "USER", "LOGNAME"})
DEFAULT_PROGRAM_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")
# Paths no argument or redirection may name (after normalising against the working directory):
# other processes' environments hold secrets, including the gateway's own.
DEFAULT_DENY_PATHS = ("/proc/*", "/sys/*", "/dev/tcp/*", "/dev/udp/*", "/etc/shadow", "/etc/gshadow", "*/.ssh/*",
                      "*/.aws/*", "*/.gnupg/*", "*/.config/gcloud/*", "*/.kube/*", "*/.docker/config.json",
                      "*/.netrc", "*/.pgpass", "*/.git-credentials", "*/.bash_history", "/dev/fd/*",
                      "/run/secrets/*", "/var/run/secrets/*", "/etc/ssl/private/*", "*/.config/gh/*", "*/.npmrc",
                      "*/.pypirc", "*/.vault-token")


@dataclass(frozen=True)
class ShellRule:
    """One rule on one shell connection; applies like an SQL rule (subjects, groups, or everyone)."""

    id: str
    subjects: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    # Program names, or exact command prefixes written with spaces ("python -m pytest"): such a command
    # runs as the administrator wrote it (policy.shell.evaluate.named_command).
    programs: frozenset[str] = frozenset()
    review_programs: frozenset[str] = frozenset()
    deny_programs: frozenset[str] = frozenset()
    git_subcommands: frozenset[str] = frozenset()
    program_dirs: tuple[str, ...] = DEFAULT_PROGRAM_DIRS
    operators: frozenset[str] = DEFAULT_OPERATORS
    # Constructs beyond simple commands: subshell, group, for, while, until, if, function,
    # command-substitution, process-substitution, heredoc, herestring.
    constructs: frozenset[str] = frozenset({"subshell", "group", "command-substitution"})
    redirects: Literal["none", "read", "write"] = "read"
    write_paths: tuple[str, ...] = ("/dev/null",)
    deny_paths: tuple[str, ...] = DEFAULT_DENY_PATHS
    variables: frozenset[str] = DEFAULT_VARIABLES
    allow_assignments: bool = False
    limits: Limits = field(default_factory=lambda: Limits(max_rows=0, max_bytes=1_000_000, timeout_s=30.0))
    preset: str | None = None

    def applies_to(self, identity: Identity) -> bool:
        return applies(self.subjects, self.groups, identity)

    def summary(self) -> str:
        programs = ", ".join(sorted(self.programs - self.deny_programs)) or "nothing"
        git = f" (git {', '.join(sorted(self.git_subcommands))})" if "git" in self.programs else ""
        held = f"; holds {', '.join(sorted(self.review_programs))} for review" if self.review_programs else ""
        denied = f"; denies {', '.join(sorted(self.deny_programs))}" if self.deny_programs else ""
        return (f"{self.id}: runs {programs}{git}{held}{denied}; redirects: {self.redirects}; "
                f"max {self.limits.max_bytes} output bytes, {self.limits.timeout_s:g} s")


@dataclass(frozen=True)
class ShellPolicy:
    connection: str
    rules: tuple[ShellRule, ...]
    # The working directory commands run in; relative paths are judged against it.
    cwd: str = "/"

    def rules_for(self, identity: Identity) -> tuple[ShellRule, ...]:
        return tuple(rule for rule in self.rules if rule.applies_to(identity))
