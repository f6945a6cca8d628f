"""Pure policy: SQL analysis, rules, decisions. No I/O, no MCP, no connections."""

from policy.decide import decide
from policy.decision import Decision, Limits, Verdict
from policy.identity import Identity
from policy.rules import ConnectionPolicy, SqlRule
from policy.sql.analyze import analyse
from policy.sql.facts import Analysis, Kind, Statement

__all__ = [
    "Analysis", "ConnectionPolicy", "Decision", "Identity", "Kind", "Limits", "SqlRule", "Statement",
    "Verdict", "analyse", "decide",
]
