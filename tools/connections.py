"""Connections as tools/ sees them: a policy and an executor. server/ builds these from config."""

from __future__ import annotations

from dataclasses import dataclass

from policy import ConnectionPolicy, Identity
from policy.shell.rules import ShellPolicy
from tools.executors.base import SqlExecutor
from tools.executors.shell_base import ShellExecutor


@dataclass
class Connection:
    """A database: PostgreSQL or SQLite."""

    name: str
    kind: str  # postgres | sqlite
    policy: ConnectionPolicy
    executor: SqlExecutor
    description: str = ""
    sandbox: bool = False  # replay may re-run recorded calls here

    @property
    def dialect(self) -> str:
        return self.policy.dialect

    def visible_to(self, identity: Identity) -> bool:
        return bool(self.policy.rules_for(identity))

    def rules_summary(self, identity: Identity) -> str:
        return " | ".join(r.summary() for r in self.policy.rules_for(identity))


@dataclass
class ShellConnection:
    """A host to run commands on: the gateway's own (local) or one reached over SSH."""

    name: str
    kind: str  # local | ssh
    policy: ShellPolicy
    executor: ShellExecutor
    description: str = ""

    def visible_to(self, identity: Identity) -> bool:
        return bool(self.policy.rules_for(identity))

    def rules_summary(self, identity: Identity) -> str:
        return " | ".join(r.summary() for r in self.policy.rules_for(identity))


AnyConnection = Connection | ShellConnection
