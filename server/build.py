"""Config → a running Gateway: resolve secrets by reference, create executors and the store."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from bastion.policy.errors import ConfigError
from bastion.policy.sql.facts import WRITE_KINDS
from bastion.policy.sql.privileges import LeastPrivilege
from bastion.server.config import Config, ConnectionConfig, ShellConnectionConfig
from bastion.store.audit_store import AuditStore
from bastion.store.errors import StoreError
from bastion.store.limits import CallLimits
from bastion.tools.connections import AnyConnection, Connection, ShellConnection
from bastion.tools.executors.base import SqlExecutor
from bastion.tools.executors.local_shell import LocalShellExecutor
from bastion.tools.executors.network_bridge import describe, plan
from bastion.tools.executors.sandbox import DEFAULT_HIDE, Sandbox, SandboxLimits, remote_bwrap
from bastion.tools.executors.shell_base import ShellExecutor
from bastion.tools.executors.postgres import PostgresExecutor
from bastion.tools.executors.sqlite import SqliteExecutor
from bastion.tools.gateway import Gateway
from bastion.tools.notify import ApprovalNotifier, ApprovalWebhook

log = logging.getLogger(__name__)
UNSANDBOXED = ("UNSANDBOXED: commands run on the gateway's host without an OS sandbox "
               "(isolation = \"none\"); only the parser's policy stands between them and the host")


def _env(config: Config, name: str, key: str, variable: str) -> str:
    value = config.secret(f"connections.{name}", key, variable, "", None)
    assert value is not None
    return value


def _secret(config: Config, name: str, conn: ConnectionConfig) -> str | None:
    return config.secret(f"connections.{name}", "password_env", conn.password_env, "password_file", conn.password_file)


def _target(config: Config, name: str, conn: ConnectionConfig) -> str:
    if conn.target_env:
        return _env(config, name, "target_env", conn.target_env)
    assert conn.target is not None
    return conn.target


def build_executor(config: Config, name: str, conn: ConnectionConfig) -> SqlExecutor:
    target = _target(config, name, conn)
    if conn.kind == "sqlite":
        return SqliteExecutor(name, config.path(target))
    # Mapped roles with a login of their own: calls as them log in as them (a role escape fails).
    logins = {entry.role: config.secret(f"connections.{name}.roles", "password_env", entry.password_env,
                                        "password_file", entry.password_file)
              for entry in conn.roles if entry.login}
    # Least privilege, verified before the first call runs: the logins may do no more than the rules need.
    writes = any((rule.allow | rule.review) & WRITE_KINDS for rule in conn.rule_list())
    expected = LeastPrivilege(writes, frozenset(conn.accept_rights), tuple(dict.fromkeys(e.role for e in conn.roles)))
    return PostgresExecutor(name, target, password=_secret(config, name, conn), search_path=conn.search_path,
                            role_logins=logins, least_privilege=expected)


def build_shell_executor(config: Config, name: str, conn: ShellConnectionConfig, user: str | None = None,
                         key_file: str | None = None) -> ShellExecutor:
    """The connection's executor: as its configured user, or as a mapped ``user`` (with ``key_file`` on SSH)."""
    if conn.kind == "local":
        return LocalShellExecutor(name, config.shell_cwd(conn), run_as=user,
                                  sandbox=build_sandbox(config, name, conn, user))
    if conn.kind == "container":
        return build_container_executor(config, name, conn, user)
    from bastion.tools.executors.ssh import SshExecutor

    assert conn.host and conn.user and conn.key_file and conn.cwd
    return SshExecutor(name, host=conn.host, port=conn.port, user=user or conn.user,
                       key_file=config.path(key_file or conn.key_file),
                       known_hosts=config.path(conn.known_hosts) if conn.known_hosts else None,
                       accept_unknown_hosts=conn.accept_unknown_hosts,
                       sandbox=remote_bwrap(conn.cwd, writes(conn)) if conn.remote_isolation == "bubblewrap" else None)


def build_container_executor(config: Config, name: str, conn: ShellConnectionConfig, user: str | None) -> ShellExecutor:
    """Commands run inside the container through its runtime's CLI, as ``user`` (never root: checked
    by the config and again inside the container on every exec)."""
    from bastion.tools.executors.container import ContainerExecutor, ContainerRuntime

    assert conn.user is not None
    runtime = ContainerRuntime(name, runtime=conn.runtime or "docker",
                               path=str(config.path(conn.runtime_path)) if conn.runtime_path else None,
                               args=tuple(conn.runtime_args or ()), container=conn.container, label=conn.label)
    return ContainerExecutor(runtime, user=user or conn.user, cwd=config.shell_cwd(conn), shell=conn.shell or "sh")


def build_sandbox(config: Config, name: str, conn: ShellConnectionConfig, user: str | None) -> Sandbox | None:
    """The OS sandbox of a local connection; None only when the config opts out (`isolation = \"none\"`).

    A workspace may not hold a database of the gateway's (the audit store, a SQLite target: their
    journals come and go while commands run), nor, when it is writable, any file of the gateway's (a
    command could move, replace or plant beside it). Config and key files in a read-only workspace
    read as empty inside."""
    if conn.isolation == "none":
        return None
    workspace = config.shell_cwd(conn)
    databases, files = gateway_files(config)
    writable = writes(conn)
    for path in databases + (files if writable else ()):
        if path.startswith(workspace.rstrip("/") + "/"):
            what = "database" if path in databases else "file"
            raise ConfigError(f"{config.source}: connections.{name}.cwd: the workspace {workspace} holds the gateway's "
                              f"own {what} {path}; a command in the sandbox could read or change it",
                              hint="Point `cwd` at a folder holding none of the gateway's files, or move the file out.")
    limits = SandboxLimits(conn.cpu_seconds, conn.memory_mb << 20, conn.max_file_mb << 20, conn.max_processes)
    return Sandbox(workspace, writable, tuple(conn.hide) if conn.hide is not None else DEFAULT_HIDE,
                   limits, run_as=user, protected=files, network=plan(conn.network))


def writes(conn: ShellConnectionConfig) -> bool:
    """Whether the workspace is writable inside the sandbox: as configured, else when a rule may write."""
    if conn.writable is not None:
        return conn.writable
    return any(r.preset == "developer" or r.redirects == "write" for r in conn.rule_list())


def gateway_files(config: Config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The gateway's own databases (audit store, SQLite targets) and its other files (config, keys, secrets)."""
    databases = ([] if config.audit.url else [config.audit.path]) + [_target(config, name, conn) for name, conn in config.connections.items()
                                       if isinstance(conn, ConnectionConfig) and conn.kind == "sqlite"]
    names: list[str | None] = [config.audit.checkpoint_key_file, config.audit.password_file,
                               config.approvals.web_client_secret_file]
    for conn in config.connections.values():
        if isinstance(conn, ConnectionConfig):
            names += [conn.password_file, conn.mask_key_file, *(r.password_file for r in conn.roles)]
        else:
            names += [conn.key_file, conn.known_hosts, *(u.key_file for u in conn.users)]
    files = [str(config.path(n).resolve()) for n in names if n]
    witness = config.checkpoint_witness()
    if witness is not None and witness.path is not None:  # the sandbox must never reach the witness either
        files.append(str(witness.path.resolve()))
    if config.source != "<defaults>":
        files.append(str(Path(config.source).resolve()))
    return tuple(str(config.path(d).resolve()) for d in databases), tuple(dict.fromkeys(files))


def build_gateway(config: Config) -> Gateway:
    policies, shell_policies, scopings = config.policies(), config.shell_policies(), config.scopings()
    connections: dict[str, AnyConnection] = {}
    for name, conn in config.connections.items():
        if isinstance(conn, ConnectionConfig):
            connections[name] = Connection(name, conn.kind, policies[name], build_executor(config, name, conn),
                                           conn.description, conn.sandbox, scopings[name], masking=config.masking(name))
        else:
            per_user = {entry: build_shell_executor(config, name, conn, entry.target, entry.key)
                        for entry in scopings[name].entries}
            description = conn.description
            if conn.kind == "local" and conn.isolation == "none":
                log.warning("connection `%s` is %s", name, UNSANDBOXED)
                description = f"{description} ({UNSANDBOXED})".lstrip()
            elif conn.kind == "local" and conn.network:  # what its commands may reach: for the agent and the log
                network = describe(plan(conn.network))
                log.info("connection `%s`: sandboxed, %s", name, network)
                description = f"{description} ({network})".lstrip()
            shell_class = ShellConnection
            extra: dict[str, Any] = {}
            if conn.kind == "container":  # a shell connection with the container tool's actions
                from bastion.tools.containers import ContainerConnection, verdicts

                shell_class, extra = ContainerConnection, {"actions": verdicts(conn.actions)}
            connections[name] = shell_class(name, conn.kind, shell_policies[name],
                                            build_shell_executor(config, name, conn), description,
                                            scopings[name], per_user, masking=config.masking(name), **extra)
    store = open_audit_store(config)
    limits = config.limits
    gateway = Gateway(connections, store, tuple(a.to_rule() for a in config.alerts),
                      approval_policies=config.approval_policies(), wait_s=config.approvals.wait_s)
    notifier = approval_notifier(config, store)
    if notifier is not None:
        gateway.approvals.subscribe(notifier.on_change)
        gateway.notifier = notifier
    if limits.concurrent_calls is not None or limits.calls_per_minute is not None:
        gateway.guard.limits = CallLimits(store, concurrent=limits.concurrent_calls, per_minute=limits.calls_per_minute)
    return gateway


def approvals_base_url(config: Config) -> str:
    """Where the approvals page is, for links: configured, else the origin of [auth] resource."""
    from urllib.parse import urlsplit

    if config.approvals.base_url:
        return config.approvals.base_url.rstrip("/")
    if config.auth is not None:
        url = urlsplit(config.auth.resource)
        return f"{url.scheme}://{url.netloc}"
    return "http://127.0.0.1:8765"


def approval_notifier(config: Config, store: AuditStore) -> ApprovalNotifier | None:
    """Webhooks told about held, approved, denied and expired calls; None when none are configured."""
    if not config.approvals.webhooks:
        return None
    hooks = []
    for i, hook in enumerate(config.approvals.webhooks):
        secret = config.secret(f"approvals.webhooks[{i}]", "secret_env", hook.secret_env, "secret_file", hook.secret_file)
        hooks.append(ApprovalWebhook(hook.url, hook.format, name=f"webhook-{i + 1}",
                                     secret=secret.encode() if secret else None))
    return ApprovalNotifier(hooks, approvals_base_url(config), store)


def open_audit_store(config: Config, *, checkpoints: bool = True) -> AuditStore:
    """The audit store the config names: PostgreSQL at `[audit] url`, else SQLite at `path`; with
    ``checkpoints``, signing and witnessing as configured (a gateway; reading needs neither)."""
    from bastion.store.postgres_store import PostgresAuditStore
    from bastion.store.sqlite_store import SqliteAuditStore

    audit = config.audit
    signing: dict[str, Any] = {"sync": audit.sync}
    if checkpoints:
        signing |= {"signer": config.checkpoint_signer(), "checkpoint_every": audit.checkpoint_every,
                    "witness": config.checkpoint_witness()}
    try:
        if audit.url:
            password = config.secret("audit", "password_env", audit.password_env, "password_file", audit.password_file)
            return PostgresAuditStore(audit.url, password=password, **signing)
        return SqliteAuditStore(config.path(audit.path), **signing)
    except StoreError as error:
        raise ConfigError(f"{config.source}: audit.{'url' if audit.url else 'path'}: {error}") from None


def audit_path(config: Config) -> Path:
    return config.path(config.audit.path)
