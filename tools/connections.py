"""A connection as tools/ sees it: its policy and its executor. server/ builds these from config."""

from __future__ import annotations

from dataclasses import dataclass

from policy import ConnectionPolicy, Identity
from tools.executors.base import SqlExecutor


@dataclass
class Connection:
    name: str
    kind: str  # postgres | sqlite
    policy: ConnectionPolicy
    executor: SqlExecutor
    description: str = ""

    @property
    def dialect(self) -> str:
        return self.policy.dialect

    def visible_to(self, identity: Identity) -> bool:
        return bool(self.policy.rules_for(identity))
