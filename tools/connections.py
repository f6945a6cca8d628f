"""Connections as tools/ sees them: a policy and an executor. server/ builds these from config."""

from __future__ import annotations

from dataclasses import dataclass, field

from bastion.policy import ConnectionPolicy, Identity
from bastion.policy.scoping import RunAs, Scoping
from bastion.policy.shell.rules import ShellPolicy
from bastion.tools.executors.base import SqlExecutor
from bastion.tools.executors.shell_base import ShellExecutor
from bastion.tools.masking import Masking


@dataclass
class Connection:
    """A database: PostgreSQL or SQLite."""

    name: str
    kind: str  # postgres | sqlite
    policy: ConnectionPolicy
    executor: SqlExecutor
    description: str = ""
    sandbox: bool = False  # replay may re-run recorded calls here
    scoping: Scoping = Scoping()  # groups → database role
    masking: Masking | None = None  # sensitive columns, detectors, the hash key, the catalog

    @property
    def dialect(self) -> str:
        return self.policy.dialect

    def visible_to(self, identity: Identity) -> bool:
        return self.scoping.admits(identity) and bool(self.policy.rules_for(identity))

    def run_as(self, identity: Identity) -> RunAs | None:
        return self.scoping.run_as(identity)

    def rules_summary(self, identity: Identity) -> str:
        return " | ".join(r.summary() for r in self.policy.rules_for(identity))

    async def close(self) -> None:
        await self.executor.close()


@dataclass
class ShellConnection:
    """A host to run commands on: the gateway's own (local) or one reached over SSH."""

    name: str
    kind: str  # local | ssh
    policy: ShellPolicy
    executor: ShellExecutor
    description: str = ""
    scoping: Scoping = Scoping()  # groups → OS user (local) or remote user (ssh)
    # One executor per mapping entry (user and key), beside the gateway's own ``executor``.
    executors: dict[RunAs, ShellExecutor] = field(default_factory=dict)
    masking: Masking | None = None  # detectors over stdout and stderr

    def visible_to(self, identity: Identity) -> bool:
        return self.scoping.admits(identity) and bool(self.policy.rules_for(identity))

    def run_as(self, identity: Identity) -> RunAs | None:
        return self.scoping.run_as(identity)

    def executor_for(self, run_as: RunAs | None) -> ShellExecutor:
        return self.executors[run_as] if run_as is not None else self.executor

    async def close(self) -> None:
        for executor in (self.executor, *self.executors.values()):
            await executor.close()

    def rules_summary(self, identity: Identity) -> str:
        return " | ".join(r.summary() for r in self.policy.rules_for(identity))


AnyConnection = Connection | ShellConnection
