"""bastion.toml: load, validate (pydantic), and explain errors by file, key path, found and expected."""

from __future__ import annotations

import getpass
from dataclasses import replace
import os
import re
import tomllib
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.policy import durations
from bastion.policy.decision import Limits, Verdict
from bastion.policy.errors import ConfigError
from bastion.policy.identity import Identity
from bastion.policy.masking import DETECTOR_KINDS, MASKERS, PROBING, MaskRules
from bastion.policy.masking import USES as MASK_USES
from bastion.policy.presets import PRESETS
from bastion.policy.rules import ConnectionPolicy, SqlRule
from bastion.policy.approvals import ApprovalPolicy
from bastion.policy.scoping import RunAs, Scoping
from bastion.policy.shell.presets import SHELL_PRESETS
from bastion.policy.shell.rules import ShellPolicy, ShellRule
from bastion.policy.sql.facts import Kind
from bastion.policy.sql.privileges import ACCEPTABLE as ACCEPTABLE_RIGHTS
from bastion.tools.alerts import AlertRule
from bastion.server import config_errors
from bastion.tools.masking import Masking

DEFAULT_PATH = "bastion.toml"
if TYPE_CHECKING:  # imported where used: the store and the auth module stay out of a config load
    from bastion.server.auth import TokenRules
    from bastion.store.checkpoints import FileWitness, HttpWitness, Signer

# Names checked against the policy's own lists: pydantic validates these Literals built at run time;
# a type checker cannot evaluate them, so it sees the names as what they are, strings.
if TYPE_CHECKING:
    KindName: TypeAlias = str
    MaskerName: TypeAlias = str
    MaskUseName: TypeAlias = str
    DetectorName: TypeAlias = str
    AcceptedRight: TypeAlias = str
else:
    KindName = Literal[tuple(k.value for k in Kind)]
    MaskerName = Literal[MASKERS]
    MaskUseName = Literal[tuple(sorted(MASK_USES))]
    DetectorName = Literal[DETECTOR_KINDS]
    AcceptedRight = Literal[tuple(sorted(ACCEPTABLE_RIGHTS))]
VerdictName = Literal["allow", "review", "deny"]


class _Model(BaseModel):
    # strict: a value of the wrong type is an error, never coerced ("5" is not 5, 1 is not true).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RuleConfig(_Model):
    """One rule. Starts from ``preset`` when given; every other key overrides it."""

    id: str | None = None
    preset: Literal["read-only", "read-write"] | None = None
    subjects: list[str] = []
    groups: list[str] = []
    allow: list[KindName] | None = None
    review: list[KindName] | None = None
    deny: list[KindName] | None = None
    read_tables: list[str] | None = None
    write_tables: list[str] | None = None
    deny_functions: list[str] | None = None
    allow_functions: list[str] | None = None
    unfiltered_writes: Literal["allow", "review", "deny"] | None = None
    allow_locking: bool | None = None
    max_rows: Annotated[int, Field(gt=0, le=1_000_000)] = 1000
    max_bytes: Annotated[int, Field(gt=0, le=1_000_000_000)] = 4_000_000
    timeout: Annotated[float, Field(gt=0, le=3600, description="seconds")] = 30.0
    max_rows_affected: Annotated[int, Field(ge=0)] | None = Field(
        None, description="rows one call may insert, update or delete; past it the call is rolled back")
    over_max_rows_affected: Literal["deny", "review"] = Field(
        "deny", description="past max_rows_affected: refused, or held for approvers who see the count")
    approvers: list[str] | None = Field(None, description="groups that may approve what this rule holds (default: [approvals] approvers)")
    min_approvals: Annotated[int, Field(ge=1, le=10)] | None = None
    self_confirm: bool = Field(False, description="the requester may confirm what this rule holds (MCP elicitation)")

    def to_rule(self, index: int) -> SqlRule:
        base = PRESETS[self.preset] if self.preset else SqlRule(id="", read_tables=("*",))
        overrides: dict[str, Any] = {
            "id": self.id or (self.preset if self.preset and index == 0 else f"rule-{index + 1}"),
            "subjects": frozenset(self.subjects),
            "groups": frozenset(self.groups),
            "limits": Limits(self.max_rows, self.max_bytes, self.timeout, self.max_rows_affected,
                             self.over_max_rows_affected),
        }
        for name in ("allow", "review", "deny"):
            value = getattr(self, name)
            if value is not None:
                overrides[name] = frozenset(Kind(v) for v in value)
        for name in ("read_tables", "write_tables", "deny_functions"):
            value = getattr(self, name)
            if value is not None:
                overrides[name] = tuple(value)
        if self.allow_functions is not None:
            overrides["allow_functions"] = frozenset(f.lower() for f in self.allow_functions)
        if self.unfiltered_writes is not None:
            overrides["unfiltered_writes"] = Verdict(self.unfiltered_writes)
        if self.allow_locking is not None:
            overrides["allow_locking"] = self.allow_locking
        return replace(base, **overrides)


class _Who(_Model):
    subjects: list[str] = []
    groups: list[str] = []

    @model_validator(mode="after")
    def _someone(self) -> _Who:
        if not self.subjects and not self.groups:
            raise ValueError("name the `groups` or `subjects` this entry is for")
        return self


class RoleConfig(_Who):
    """PostgreSQL: identities in these groups (or with these subjects) run as ``role``."""

    role: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")]
    # Log in as the role itself (a pool of its own) instead of SET ROLE from the gateway's login:
    # a role escape then fails in the server (docs/identity.md). Its password by reference, if any.
    login: bool = False
    password_env: str | None = None
    password_file: str | None = None


class UserConfig(_Who):
    """Shells: identities in these groups (or with these subjects) run as ``user`` (SSH: with ``key_file``)."""

    user: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")]
    key_file: str | None = None


def _scoping(entries: list[RoleConfig] | list[UserConfig]) -> Scoping:
    return Scoping(tuple(RunAs(e.role if isinstance(e, RoleConfig) else e.user, frozenset(e.subjects),
                               frozenset(e.groups), getattr(e, "key_file", None)) for e in entries))


class ConnectionConfig(_Model):
    """A database connection (PostgreSQL or SQLite)."""

    kind: Literal["postgres", "sqlite"]
    target: str | None = Field(None, description="DSN (postgres, no password) or file path (sqlite)")
    target_env: str | None = Field(None, description="name of an environment variable holding the DSN")
    password_env: str | None = None
    password_file: str | None = None
    description: str = ""
    sandbox: bool = Field(False, description="a copy for replays: `bastion replay --against` may run recorded calls here")
    search_path: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_$]*$",
                                      description="the one schema unqualified names resolve to")] = "public"
    preset: Literal["read-only", "read-write"] | None = Field(None, description="shorthand for one rule for everyone")
    rules: list[RuleConfig] = []
    roles: list[RoleConfig] = Field([], description="groups → database role, first match; unmapped identities do not see the connection")
    accept_rights: list[AcceptedRight] = Field(
        [], description="rights the PostgreSQL login (or a mapped role) may hold beyond what the rules need; others refuse the connection")
    mask: dict[str, MaskerName] = Field({}, description="sensitive columns: `schema.table.column` (globs; `table.column` for the default schema) → masker")
    mask_predicates: dict[MaskerName, VerdictName | dict[MaskUseName, VerdictName]] = Field(
        {}, description="per masker: the verdict on probing its columns (equality, like, regex, range, filter), or use → verdict")
    detectors: list[DetectorName | Literal["all"]] = Field([], description="value detectors over every result")
    mask_key_env: str | None = Field(None, description="environment variable holding the key of the `hash` masker")
    mask_key_file: str | None = Field(None, description="file holding the key of the `hash` masker")

    @model_validator(mode="after")
    def _mask_fields(self) -> ConnectionConfig:
        for pattern in self.mask:
            if not 2 <= len(pattern.split(".")) <= 3 or not all(pattern.split(".")):
                raise ValueError(f"mask: `{pattern}` is not `schema.table.column` or `table.column`")
        if self.mask_key_env and self.mask_key_file:
            raise ValueError("give at most one of `mask_key_env` and `mask_key_file`")
        if "hash" in self.mask.values() and not (self.mask_key_env or self.mask_key_file):
            raise ValueError("the `hash` masker needs a key: set `mask_key_env` or `mask_key_file` (never the key itself)")
        return self

    @model_validator(mode="after")
    def _target_given(self) -> ConnectionConfig:
        if (self.target is None) == (self.target_env is None):
            raise ValueError("give exactly one of `target` and `target_env`")
        if self.kind == "sqlite" and (self.password_env or self.password_file):
            raise ValueError("a sqlite connection takes no password")
        if self.kind == "sqlite" and self.roles:
            raise ValueError("`roles` apply to postgres connections (SQLite has no roles)")
        if self.preset and self.rules:
            raise ValueError("give either `preset` or `rules`, not both")
        return self

    @field_validator("target")
    @classmethod
    def _no_inline_secret(cls, value: str | None) -> str | None:
        if value and _has_inline_password(value):
            raise ValueError("the DSN holds a password; put it in `password_env` or `password_file` instead")
        return value

    def rule_list(self) -> tuple[SqlRule, ...]:
        if self.preset:
            return (PRESETS[self.preset],)
        return _unique_ids(tuple(r.to_rule(i) for i, r in enumerate(self.rules)))


class ShellRuleConfig(_Model):
    """One rule on a shell connection. Starts from ``preset`` when given; other keys override it."""

    id: str | None = None
    preset: Literal["inspect", "developer"] | None = None
    subjects: list[str] = []
    groups: list[str] = []
    programs: list[str] | None = Field(None, description="with preset developer: added to inspect's programs")
    review_programs: list[str] | None = None
    deny_programs: list[str] | None = None
    git_subcommands: list[str] | None = None
    program_dirs: list[str] | None = None
    operators: list[Literal["|", "|&", "&&", "||", ";", "&", "newline"]] | None = None
    constructs: list[Literal["subshell", "group", "for", "while", "until", "if", "case", "conditional", "arithmetic",
                             "function", "command-substitution", "process-substitution", "heredoc",
                             "herestring"]] | None = None
    redirects: Literal["none", "read", "write"] | None = None
    write_paths: list[str] | None = None
    deny_paths: list[str] | None = None
    variables: list[str] | None = None
    allow_assignments: bool | None = None
    timeout: Annotated[float, Field(gt=0, le=3600, description="seconds")] = 30.0
    max_output_bytes: Annotated[int, Field(gt=0, le=100_000_000)] = 1_000_000
    approvers: list[str] | None = Field(None, description="groups that may approve what this rule holds (default: [approvals] approvers)")
    min_approvals: Annotated[int, Field(ge=1, le=10)] | None = None
    self_confirm: bool = Field(False, description="the requester may confirm what this rule holds (MCP elicitation)")

    def to_rule(self, index: int) -> ShellRule:
        base = SHELL_PRESETS[self.preset] if self.preset else ShellRule(id="")
        overrides: dict[str, Any] = {
            "id": self.id or (self.preset if self.preset and index == 0 else f"rule-{index + 1}"),
            "subjects": frozenset(self.subjects), "groups": frozenset(self.groups),
            "limits": Limits(0, self.max_output_bytes, self.timeout),
        }
        if self.programs is not None:
            overrides["programs"] = (base.programs if self.preset == "developer" else frozenset()) | frozenset(self.programs)
        for name in ("review_programs", "deny_programs", "git_subcommands", "operators", "constructs", "variables"):
            value = getattr(self, name)
            if value is not None:
                overrides[name] = frozenset(value)
        for name in ("program_dirs", "write_paths", "deny_paths"):
            value = getattr(self, name)
            if value is not None:
                overrides[name] = tuple(value)
        if self.redirects is not None:
            overrides["redirects"] = self.redirects
        if self.allow_assignments is not None:
            overrides["allow_assignments"] = self.allow_assignments
        return replace(base, **overrides)


# `exec --user`: a name or a uid, optionally with a group (a uid or gid of 0 is refused apart).
_CONTAINER_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,31}|[0-9]{1,10}"
_CONTAINER_USER = re.compile(rf"^({_CONTAINER_NAME})(:({_CONTAINER_NAME}))?$")


class ShellConnectionConfig(_Model):
    """A shell connection: the gateway's own host (local), one reached over SSH, or a container."""

    kind: Literal["local", "ssh", "container"]
    cwd: str | None = Field(None, description="working directory (local: default the config's folder; ssh: required; container: default /)")
    host: str | None = None
    port: Annotated[int, Field(gt=0, lt=65536)] = 22
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    accept_unknown_hosts: bool = False
    description: str = ""
    preset: Literal["inspect", "developer"] | None = None
    rules: list[ShellRuleConfig] = []
    users: list[UserConfig] = Field([], description="groups → OS user (local) or remote user and key (ssh), first match")
    detectors: list[DetectorName | Literal["all"]] = Field([], description="value detectors over stdout and stderr")
    # Local: the OS sandbox every command runs in (docs/shell.md). Not `sandbox`: that is the replay key.
    isolation: Literal["bubblewrap", "none"] = Field("bubblewrap", description="`none` runs commands unsandboxed")
    writable: bool | None = Field(None, description="the workspace is writable inside (default: when a rule may write)")
    hide: list[str] | None = Field(None, description="names hidden (empty) inside the workspace; default .env*, *.pem, *.key, id_rsa*, ...")
    network: list[str] = Field([], description='TCP endpoints commands may reach, "host:port" or "name=host:port"; default none')
    cpu_seconds: Annotated[int, Field(gt=0, le=86400)] = 60
    memory_mb: Annotated[int, Field(gt=0, le=1_048_576)] = 2048
    max_file_mb: Annotated[int, Field(gt=0, le=1_048_576)] = 1024
    max_processes: Annotated[int, Field(gt=0, le=65536)] = 512
    # SSH: the remote account is the boundary; this also wraps each command in the host's own bubblewrap.
    remote_isolation: Literal["none", "bubblewrap"] = Field("none", description="ssh: run each command in bwrap on the host")
    # Container (docs/containers.md): commands run inside it through the runtime's CLI, as `user`.
    runtime: Literal["docker", "podman"] | None = Field(None, description="container: the runtime's CLI (default docker)")
    runtime_path: str | None = Field(None, description="container: the CLI's path (default: found on PATH)")
    runtime_args: list[str] | None = Field(None, description="container: global options before the subcommand, e.g. [\"--host\", \"unix:///run/docker.sock\"]")
    container: str | None = Field(None, description="container: its name or id")
    label: Annotated[str, Field(pattern=r"^[A-Za-z0-9_./-]+(=[^\s]*)?$")] | None = Field(
        None, description="container: `key=value` picking the one running container that carries it")
    shell: str | None = Field(None, description="container: the shell inside that runs the rebuilt command (default sh)")
    actions: dict[Literal["logs", "inspect", "start", "stop", "restart"], VerdictName] | None = Field(
        None, description="container: the `container` tool's actions → verdict (default logs, inspect allow; start, stop, restart review)")

    @model_validator(mode="after")
    def _container_fields(self) -> ShellConnectionConfig:
        container_only = ("runtime", "runtime_path", "runtime_args", "container", "label", "shell", "actions")
        if self.kind != "container":
            if any(getattr(self, k) is not None for k in container_only):
                raise ValueError(f"{', '.join(container_only)} apply to container connections only")
            return self
        if (self.container is None) == (self.label is None):
            raise ValueError("a container connection names exactly one of `container` and `label`")
        if self.user is None:
            raise ValueError("a container connection needs `user`: the unprivileged user commands run as inside it")
        for user in [self.user, *(u.user for u in self.users)]:
            if not _CONTAINER_USER.match(user):
                raise ValueError(f"`{user}` is not a user for `exec --user` (name, uid, name:group or uid:gid)")
            if any(part == "root" or (part.isdigit() and int(part) == 0) for part in user.split(":")):
                raise ValueError(f"`{user}` is root: Bastion never runs a command inside a container as root (uid or gid 0)")
        if self.cwd is not None and not self.cwd.startswith("/"):
            raise ValueError("`cwd` of a container connection must be an absolute path inside the container")
        if any(getattr(self, k) is not None for k in ("host", "key_file", "known_hosts")) or self.accept_unknown_hosts:
            raise ValueError("host, key_file, known_hosts and accept_unknown_hosts apply to ssh connections only")
        if self.hide is not None or self.isolation != "bubblewrap" or self.remote_isolation != "none":
            raise ValueError("`isolation`, `hide` and `remote_isolation` do not apply to a container: the container is the boundary")
        return self

    @field_validator("network")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        from bastion.tools.executors.network_bridge import plan

        plan(value)  # found ...; expected ... (docs/shell.md, "Network")
        return value

    @model_validator(mode="after")
    def _ssh_fields(self) -> ShellConnectionConfig:
        if self.kind != "ssh" and any(u.key_file for u in self.users):
            raise ValueError("`users[].key_file` applies to ssh connections only")
        ssh_only = ("host", "user", "key_file", "known_hosts")
        if self.hide and any("/" in pattern for pattern in self.hide):
            raise ValueError("`hide` patterns match names, not paths: write `id_rsa` or `*.pem`, not a path with `/`")
        if self.kind == "ssh":
            missing = [k for k in ("host", "user", "key_file", "cwd") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"an ssh connection needs {', '.join(f'`{k}`' for k in missing)}")
            if self.cwd and not self.cwd.startswith("/"):
                raise ValueError("`cwd` of an ssh connection must be an absolute path on the remote host")
            if self.hide is not None or self.isolation != "bubblewrap" or self.network:
                raise ValueError("`isolation`, `hide` and `network` apply to local connections; on ssh see `remote_isolation` "
                                 "(docs/shell.md)")
        elif self.kind == "container":  # its keys: _container_fields
            if self.network:
                raise ValueError("`network` applies to local connections")
        elif self.remote_isolation != "none":
            raise ValueError("`remote_isolation` applies to ssh connections; a local one is always sandboxed")
        elif self.network and self.isolation == "none":
            raise ValueError("`network` names what a sandboxed command may reach; with `isolation = \"none\"` commands "
                             "have the host's whole network: remove one of the two")
        elif any(getattr(self, k) is not None for k in ssh_only):
            raise ValueError(f"{', '.join(ssh_only)} apply to ssh connections only")
        if self.preset and self.rules:
            raise ValueError("give either `preset` or `rules`, not both")
        return self

    def rule_list(self) -> tuple[ShellRule, ...]:
        if self.preset:
            return (SHELL_PRESETS[self.preset],)
        return _unique_ids(tuple(r.to_rule(i) for i, r in enumerate(self.rules)))


class AlertConfig(_Model):
    """One alert rule over the event stream."""

    id: str
    kind: Literal["denials", "large-result", "egress"]
    threshold: Annotated[int, Field(gt=0)] = 5
    window: str | float = "10m"
    max_rows: Annotated[int, Field(gt=0)] | None = None
    max_bytes: Annotated[int, Field(gt=0)] | None = None
    action: Literal["alert", "review", "deny"] = "alert"
    webhook: str | None = None
    webhook_format: Literal["generic", "slack"] = "generic"

    @model_validator(mode="after")
    def _limits(self) -> AlertConfig:
        durations.seconds(self.window)
        if self.kind != "denials" and self.max_rows is None and self.max_bytes is None:
            raise ValueError(f"a `{self.kind}` alert needs `max_rows` or `max_bytes`")
        return self

    def to_rule(self) -> AlertRule:
        return AlertRule(self.id, self.kind, self.threshold, durations.seconds(self.window), self.max_rows, self.max_bytes,
                         self.action, self.webhook, self.webhook_format)


class IdentityConfig(_Model):
    subject: str = Field(default_factory=getpass.getuser)
    groups: list[str] = []
    email: str | None = None
    name: str | None = None

    def to_identity(self) -> Identity:
        return Identity(self.subject, frozenset(self.groups), self.email, self.name, source="config")


class AuditConfig(_Model):
    """Where the audit log (and holds, votes, alerts) lives: a SQLite file (`path`, the default) or a
    PostgreSQL database several gateways share (`url`)."""

    path: str = Field("bastion-audit.db", description="the SQLite audit store's file (when no `url` is set)")
    url: str | None = Field(None, description="postgresql://user@host/db of a PostgreSQL audit store shared by several gateways (no password)")
    password_env: str | None = Field(None, description="environment variable holding the password of `url`'s user")
    password_file: str | None = Field(None, description="file holding the password of `url`'s user")
    checkpoint_key_env: str | None = Field(None, description="environment variable holding the Ed25519 checkpoint signing key")
    checkpoint_key_file: str | None = Field(None, description="file holding the Ed25519 checkpoint signing key (`bastion audit keygen`)")
    checkpoint_every: Annotated[int, Field(gt=0)] = 1000
    sync: Literal["before-run", "every-event"] = Field(
        "before-run", description="before-run: each call.requested and approval is on disk before the call goes on, "
                                  "a call's end within 50 ms of being committed; every-event: every event on disk before the call goes on")
    witness: str | None = Field(None, description="file:///path of an append-only file, or an https:// endpoint, every signed checkpoint is also written to")

    @model_validator(mode="before")
    @classmethod
    def _store_named_by_url(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "kind" in data:
                raise ValueError("[audit] has no `kind`: a PostgreSQL store is chosen by `url = \"postgresql://user@host/db\"`, "
                                 "a SQLite one by `path`")
            path = data.get("path")
            if isinstance(path, str) and path.split(":", 1)[0].lower() in ("postgres", "postgresql"):
                raise ValueError(f"`path` is a SQLite file, not `{path.split('@')[-1]}`: a PostgreSQL store is "
                                 "`url = \"postgresql://...\"`")
            if "url" in data and "path" in data:
                raise ValueError("give the audit store either `path` (SQLite) or `url` (PostgreSQL), not both")
        return data

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None:
            if value.split(":", 1)[0].lower() not in ("postgres", "postgresql"):
                raise ValueError(f"`url` is a postgresql://user@host/db URL; for a SQLite file use `path`")
            if _has_inline_password(value):
                raise ValueError("the URL holds a password; put it in `password_env` or `password_file` instead")
        return value


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class AuthConfig(_Model):
    """OIDC: HTTP callers present bearer JWT access tokens from this issuer, for this resource."""

    issuer: Annotated[str, Field(description="the issuer URL, exactly as tokens' `iss` claim says it")]
    resource: Annotated[str, Field(description="Bastion's own MCP URL, e.g. https://bastion.example.com/mcp; tokens' `aud` must hold it")]
    jwks_uri: str | None = Field(None, description="default: from the issuer's OIDC discovery document")
    algorithms: list[Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                             "EdDSA"]] = ["RS256", "ES256"]
    leeway: Annotated[float, Field(ge=0, le=300, description="seconds of clock skew allowed on exp and nbf")] = 30.0
    jwks_ttl: Annotated[float, Field(gt=0, le=86400)] = 600.0
    jwks_refetch_interval: Annotated[float, Field(ge=0, le=3600, description="least seconds between refetches on an unknown key id")] = 10.0
    required_scopes: list[str] = []
    groups_claim: str = Field("groups", description="claim holding the groups; a dotted path such as realm_access.roles")
    email_claim: str = "email"
    name_claim: str = "name"
    allowed_hosts: list[str] = Field([], description="Host headers HTTP accepts (default: the resource URL's host)")
    cli_client_id: str | None = Field(None, description="public OIDC client `bastion login` signs in as (device flow, RFC 8628)")

    @field_validator("issuer", "resource", "jwks_uri")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is None:
            return value
        url = urlsplit(value)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"expected an https:// URL; found {value!r}")
        if url.scheme == "http" and url.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"use https:// (plain http only on loopback); found {value!r}")
        return value

    def token_rules(self) -> TokenRules:
        from bastion.server.auth import TokenRules

        return TokenRules(self.issuer, self.resource, self.jwks_uri, tuple(self.algorithms), self.leeway, self.jwks_ttl,
                          self.jwks_refetch_interval, tuple(self.required_scopes), self.groups_claim, self.email_claim,
                          self.name_claim)

    def hosts(self) -> list[str]:
        """The Host header values HTTP accepts: configured, else the resource URL's host (any port)."""
        from urllib.parse import urlsplit

        if self.allowed_hosts:
            return list(self.allowed_hosts)
        netloc = urlsplit(self.resource).netloc
        host = urlsplit(self.resource).hostname or ""
        hosts = [netloc, f"{host}:*"] + ([f"{h}:*" for h in _LOOPBACK_HOSTS] if host in _LOOPBACK_HOSTS else [])
        return list(dict.fromkeys(hosts))


class HttpConfig(_Model):
    """Streamable HTTP behind a load balancer: what lets any replica answer any request."""

    stateless: bool = Field(False, description="serve 2025-era (legacy) clients without MCP sessions, so any replica can answer any request; "
                                                "2026-07-28 clients are sessionless either way")
    # Input-required answers (self-confirmation) carry state sealed by the gateway; every replica must
    # hold the same key to open what another sealed. By reference, never in the file.
    state_key_env: str | None = Field(None, description="environment variable with the key sealing request state (the same on every replica)")
    state_key_file: str | None = Field(None, description="file with the key sealing request state (`openssl rand -hex 32`)")


class WebhookConfig(_Model):
    url: str
    format: Literal["generic", "slack"] = "generic"
    # Signs each body (X-Bastion-Signature, docs/approvals.md); the secret by reference, never in the file.
    secret_env: str | None = None
    secret_file: str | None = None


class LimitsConfig(_Model):
    """Per identity, across every gateway sharing the audit store (store/limits.py); none by default."""

    concurrent_calls: Annotated[int, Field(gt=0)] | None = Field(None, description="calls one identity may have running at once (a held call is running while it waits)")
    calls_per_minute: Annotated[int, Field(gt=0)] | None = Field(None, description="calls one identity may start in any 60 s")


class ApprovalsConfig(_Model):
    """Held calls: how long a tool call waits, how long a hold lives, who approves by default, who is told."""

    wait: str | float = Field("60s", description="how long a held tool call waits for a decision before answering pending_approval")
    ttl: str | float = Field("1h", description="how long a hold (and an unused approval) lives")
    approvers: list[str] = Field(["approvers"], description="groups that may approve, where a rule names none")
    min_approvals: Annotated[int, Field(ge=1, le=10)] = 1
    base_url: str | None = Field(None, description="where the approvals page is, for links (default: from [auth] resource)")
    webhooks: list[WebhookConfig] = []
    web_client_id: str | None = Field(None, description="OIDC client id of the approvals page's browser login")
    web_client_secret_env: str | None = None
    web_client_secret_file: str | None = None
    session_secret_env: str | None = Field(None, description="environment variable with the key signing the page's session cookie")

    @model_validator(mode="after")
    def _durations(self) -> ApprovalsConfig:
        if durations.seconds(self.wait) <= 0 or durations.seconds(self.ttl) <= 0:
            raise ValueError("`wait` and `ttl` must be positive durations")
        if durations.seconds(self.wait) > 600:
            raise ValueError("`wait` over 10m outlasts every client's request timeout; a pending call is re-issued instead")
        return self

    @property
    def wait_s(self) -> float:
        return durations.seconds(self.wait)

    @property
    def ttl_s(self) -> float:
        return durations.seconds(self.ttl)


class Config(_Model):
    identity: IdentityConfig = IdentityConfig()
    auth: AuthConfig | None = None
    approvals: ApprovalsConfig = ApprovalsConfig()
    audit: AuditConfig = AuditConfig()
    limits: LimitsConfig = LimitsConfig()
    http: HttpConfig = HttpConfig()
    connections: dict[str, Annotated[ConnectionConfig | ShellConnectionConfig, Field(discriminator="kind")]] = {}
    alerts: list[AlertConfig] = []
    # Set by load(): the folder relative paths are resolved against.
    base_dir: Path = Path(".")
    source: str = "<defaults>"

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.base_dir / p

    def secret(self, where: str, env_key: str, env: str | None, file_key: str, file: str | None) -> str | None:
        """A secret given by reference, never in the file itself: the environment variable ``env``,
        else the file ``file``; None when neither is configured. ``where`` and the keys name the
        config key in errors (``audit`` + ``checkpoint_key_env`` → `audit.checkpoint_key_env`)."""
        if env:
            value = os.environ.get(env)
            if not value:
                raise ConfigError(f"{self.source}: {where}.{env_key}: the environment variable `{env}` is not set",
                                  hint=f"Set `{env}` where Bastion starts (for an MCP client: the server entry's `env`)"
                                       + (f", or name a file with `{file_key}` instead." if file_key else "."))
            return value
        if file:
            try:
                return self.path(file).read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ConfigError(f"{self.source}: {where}.{file_key}: cannot read `{file}` ({error.strerror})") from None
            except UnicodeDecodeError:
                raise ConfigError(f"{self.source}: {where}.{file_key}: `{file}` is not UTF-8 text",
                                  hint="Keep the secret as text, e.g. `openssl rand -hex 32 > FILE`.") from None
        return None

    def request_state_keys(self) -> list[str]:
        """The keys replicas share to open each other's sealed request state, the sealing key first
        (the secret holds one key, or several separated by spaces while rotating); [] means a key per
        process, which suits one gateway."""
        secret = self.secret("http", "state_key_env", self.http.state_key_env, "state_key_file", self.http.state_key_file)
        keys = (secret or "").split()
        for key in keys:
            if len(key.encode()) < 32:
                raise ConfigError(f"{self.source}: http.state_key: found a key of {len(key.encode())} bytes; expected at least 32",
                                  hint="Make one with `openssl rand -hex 32` and give every replica the same.")
        return keys

    def checkpoint_signer(self) -> Signer | None:
        """The audit checkpoints' Ed25519 signing key, by reference; None when not configured."""
        from bastion.store.checkpoints import Signer
        from bastion.store.errors import StoreError

        audit = self.audit
        key = self.secret("audit", "checkpoint_key_env", audit.checkpoint_key_env,
                          "checkpoint_key_file", audit.checkpoint_key_file)
        if key is None:
            return None
        try:
            return Signer.parse(key)
        except StoreError as error:
            where = "checkpoint_key_env" if audit.checkpoint_key_env else "checkpoint_key_file"
            raise ConfigError(f"{self.source}: audit.{where}: {error}",
                              hint="Checkpoints are signed with Ed25519 now, not an HMAC key: run "
                                   "`bastion audit keygen DIR` and name DIR/audit-checkpoint.key.") from None

    def checkpoint_witness(self) -> FileWitness | HttpWitness | None:
        """The witness every checkpoint is appended to; None when not configured."""
        from bastion.store.checkpoints import open_witness
        from bastion.store.errors import StoreError

        if not self.audit.witness:
            return None
        try:
            return open_witness(self.audit.witness, self.base_dir)
        except StoreError as error:
            raise ConfigError(f"{self.source}: audit.witness: {error}") from None

    def masking(self, name: str) -> Masking | None:
        """A connection's masking: its masked columns, predicate verdicts and detectors, and the key
        of the `hash` masker (read by reference); None when it masks nothing."""
        conn = self.connections[name]
        kinds = DETECTOR_KINDS if "all" in conn.detectors else tuple(d for d in conn.detectors if d != "all")
        if isinstance(conn, ShellConnectionConfig):
            return Masking(MaskRules.build({}, detectors=kinds)) if kinds else None
        if not conn.mask and not kinds:
            return None
        schema = conn.search_path if conn.kind == "postgres" else "main"
        columns = {p if p.count(".") == 2 else f"{schema}.{p}": m for p, m in conn.mask.items()}
        verdicts = [(masker, use, Verdict(v)) for masker, spec in conn.mask_predicates.items()
                    for use, v in (spec.items() if isinstance(spec, dict) else ((u, spec) for u in sorted(PROBING)))]
        key = self.secret(f"connections.{name}", "mask_key_env", conn.mask_key_env, "mask_key_file", conn.mask_key_file)
        return Masking(MaskRules.build(columns, predicates=verdicts, detectors=kinds), key.encode() if key else None)

    def policies(self) -> dict[str, ConnectionPolicy]:
        """The database connections' policies."""
        return {name: ConnectionPolicy(name, c.kind, c.rule_list(), c.search_path if c.kind == "postgres" else "main")
                for name, c in self.connections.items() if isinstance(c, ConnectionConfig)}

    def shell_policies(self) -> dict[str, ShellPolicy]:
        """The shell connections' policies."""
        return {name: ShellPolicy(name, c.rule_list(), self.shell_cwd(c))
                for name, c in self.connections.items() if isinstance(c, ShellConnectionConfig)}

    def approval_policies(self) -> dict[str, dict[str, tuple[ApprovalPolicy, bool]]]:
        """Per connection, per rule id: who approves what the rule holds, and whether the requester
        may confirm it themself. A rule without its own keys takes [approvals]' defaults."""
        defaults = self.approvals
        out: dict[str, dict[str, tuple[ApprovalPolicy, bool]]] = {}
        for name, conn in self.connections.items():
            rules: Sequence[RuleConfig | ShellRuleConfig] = conn.rules or []
            ids = [r.id for r in conn.rule_list()]
            out[name] = {
                rule_id: (ApprovalPolicy(frozenset(r.approvers or defaults.approvers),
                                         r.min_approvals or defaults.min_approvals, defaults.ttl_s), r.self_confirm)
                for rule_id, r in zip(ids, rules)}
            out[name][""] = (ApprovalPolicy(frozenset(defaults.approvers), defaults.min_approvals, defaults.ttl_s), False)
        return out

    def approver_groups(self) -> frozenset[str]:
        """Every group that may approve something on this gateway (they see the approvers' tools)."""
        return frozenset(g for rules in self.approval_policies().values() for policy, _ in rules.values()
                         for g in policy.approver_groups)

    def scopings(self) -> dict[str, Scoping]:
        """Each connection's run-as mapping (empty: calls run as the gateway's own login)."""
        return {name: _scoping(c.roles if isinstance(c, ConnectionConfig) else c.users)
                for name, c in self.connections.items()}

    def shell_cwd(self, connection: ShellConnectionConfig) -> str:
        if connection.kind in ("ssh", "container"):
            return connection.cwd or "/"
        return str(self.path(connection.cwd).resolve()) if connection.cwd else str(self.base_dir.resolve())


def _unique_ids(rules: tuple[Any, ...]) -> tuple[Any, ...]:
    ids = [r.id for r in rules]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise ValueError(f"rule id `{duplicate}` is used twice")
    return rules


def _has_inline_password(dsn: str) -> bool:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return "password" in conninfo_to_dict(dsn)
    except Exception:
        return False


def load(path: str | Path | None = None) -> Config:
    """Load and validate a config file; every problem is a ConfigError naming file, line and key."""
    file = Path(path or os.environ.get("BASTION_CONFIG", DEFAULT_PATH))
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file",
                          hint="Pass --config PATH; `bastion demo` writes a working bastion.toml to start from.") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: is a folder, not a config file", hint="Pass --config FOLDER/bastion.toml.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(config_errors.toml_error(str(file), text, error)) from None
    return parse(data, source=str(file), base_dir=file.resolve().parent, text=text)


def parse(data: dict[str, Any], *, source: str, base_dir: Path, text: str | None = None) -> Config:
    """Validate parsed TOML; ``text``, the file's own text, lets errors name their line."""
    try:
        config = Config.model_validate({**data, "base_dir": base_dir, "source": source})
        config.policies()  # rule-level checks (duplicate ids) surface now, not at the first call
        config.shell_policies()
        return config
    except ValidationError as error:
        raise ConfigError(config_errors.explain(source, text, error, Config)) from None
    except ValueError as error:  # a check across keys (a rule id used twice): at the line it names
        raise ConfigError(config_errors.locate(source, text, str(error))) from None
