"""Pure policy: SQL analysis, rules, decisions. No I/O, no MCP, no connections."""

from bastion.policy.decide import decide
from bastion.policy.decision import Decision, Limits, Verdict
from bastion.policy.identity import Identity
from bastion.policy.rules import ConnectionPolicy, SqlRule
from bastion.policy.sql.analyze import analyse
from bastion.policy.sql.facts import Analysis, Kind, Statement

__all__ = [
    "Analysis", "ConnectionPolicy", "Decision", "Identity", "Kind", "Limits", "SqlRule", "Statement",
    "Verdict", "analyse", "decide",
]
