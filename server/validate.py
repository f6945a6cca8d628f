"""`bastion config validate`: what a config names outside itself, checked before serving.

A config that parses can still fail at the first call: a secret named by reference whose variable
is unset or whose file is missing, a SQLite file that is not there, a shell folder that does not
exist. `references` finds these without connecting anywhere; `connect` (with `--connect`) asks
every target to answer (tools/probe.py) and checks that a PostgreSQL login is what the rules assume.
Each finding names the key it is about, so the CLI can print `FILE:LINE: key: problem`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bastion.server.config import Config, ConnectionConfig, ShellConnectionConfig
from bastion.server.config_errors import Path_, dotted, key_lines, line_of


@dataclass(frozen=True)
class Finding:
    key: Path_
    problem: str

    def line(self, config: Config, text: str | None) -> str:
        where = line_of(key_lines(text), self.key) if text is not None else None
        return f"{config.source}{f':{where}' if where else ''}: {dotted(self.key)}: {self.problem}"


def _env(key: Path_, name: str | None) -> list[Finding]:
    if name and not os.environ.get(name):
        return [Finding(key, f"the environment variable `{name}` is not set")]
    return []


def _file(config: Config, key: Path_, name: str | None, what: str) -> list[Finding]:
    if not name:
        return []
    path = config.path(name)
    if not path.is_file():
        return [Finding(key, f"no {what} at {path}")]
    if not os.access(path, os.R_OK):
        return [Finding(key, f"the {what} at {path} is not readable by this user")]
    return []


def references(config: Config) -> list[Finding]:
    """Secrets by reference (variables set, files readable) and the files and folders the config names."""
    found: list[Finding] = []
    for name, conn in config.connections.items():
        at: Path_ = ("connections", name)
        if isinstance(conn, ConnectionConfig):
            found += _env(at + ("target_env",), conn.target_env)
            found += _env(at + ("password_env",), conn.password_env)
            found += _file(config, at + ("password_file",), conn.password_file, "password file")
            found += _env(at + ("mask_key_env",), conn.mask_key_env)
            found += _file(config, at + ("mask_key_file",), conn.mask_key_file, "key file")
            for index, role in enumerate(conn.roles):
                found += _env(at + ("roles", index, "password_env"), role.password_env)
                found += _file(config, at + ("roles", index, "password_file"), role.password_file, "password file")
            if conn.kind == "sqlite" and conn.target and not config.path(conn.target).is_file():
                found.append(Finding(at + ("target",), f"no SQLite database at {config.path(conn.target)}"))
        elif isinstance(conn, ShellConnectionConfig):
            if conn.kind == "local" and conn.cwd and not config.path(conn.cwd).is_dir():
                found.append(Finding(at + ("cwd",), f"no folder at {config.path(conn.cwd)}"))
            if conn.kind == "ssh":
                found += _file(config, at + ("key_file",), conn.key_file, "private key")
                found += _file(config, at + ("known_hosts",), conn.known_hosts, "known_hosts file")
            for index, user in enumerate(conn.users):
                found += _file(config, at + ("users", index, "key_file"), user.key_file, "private key")
    audit = config.audit
    found += _env(("audit", "checkpoint_key_env"), audit.checkpoint_key_env)
    found += _file(config, ("audit", "checkpoint_key_file"), audit.checkpoint_key_file, "key file")
    if audit.url:
        found += _env(("audit", "password_env"), audit.password_env)
        found += _file(config, ("audit", "password_file"), audit.password_file, "password file")
    elif not (folder := config.path(audit.path).parent).is_dir():
        found.append(Finding(("audit", "path"), f"no folder {folder} to keep the audit log in"))
    approvals = config.approvals
    found += _env(("approvals", "web_client_secret_env"), approvals.web_client_secret_env)
    found += _file(config, ("approvals", "web_client_secret_file"), approvals.web_client_secret_file, "secret file")
    found += _env(("approvals", "session_secret_env"), approvals.session_secret_env)
    return found


async def connect(config: Config) -> tuple[list[str], list[Finding]]:
    """Ask every target to answer: one line each on what answered, and the findings."""
    from bastion.server.build import build_executor, build_shell_executor
    from bastion.tools.connections import Connection, ShellConnection
    from bastion.tools.probe import probe_shell, probe_sql

    said: list[str] = []
    found: list[Finding] = []
    policies, shell_policies, scopings = config.policies(), config.shell_policies(), config.scopings()
    for name, conn in config.connections.items():
        key: Path_ = ("connections", name)
        if isinstance(conn, ConnectionConfig):
            executor = build_executor(config, name, conn)
            try:
                probe = await probe_sql(Connection(name, conn.kind, policies[name], executor, conn.description,
                                                   conn.sandbox, scopings[name]))
            finally:
                await executor.close()
        else:
            shell_executor = build_shell_executor(config, name, conn)
            try:
                probe = await probe_shell(ShellConnection(name, conn.kind, shell_policies[name], shell_executor,
                                                          conn.description, scopings[name]))
            finally:
                await shell_executor.close()
        said.append(f"  {name}: {probe.said}" if probe.ok else f"  {name}: does not answer: {probe.said}")
        if not probe.ok:
            found.append(Finding(key, f"does not answer: {probe.said}"))
        found += [Finding(key, problem) for problem in probe.problems]
    return said, found


def source_text(config: Config) -> str | None:
    try:
        return Path(config.source).read_text(encoding="utf-8")
    except OSError:
        return None
