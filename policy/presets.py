"""Built-in rule presets. docs/policy.md documents each exactly; tests/test_docs.py keeps them in step."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bastion.policy.decision import Verdict
from bastion.policy.rules import SqlRule
from bastion.policy.sql.facts import Kind

# Relations that hold secrets or other sessions' activity: never covered by a preset's patterns.
SENSITIVE_CATALOG = (
    "!pg_catalog.pg_authid",
    "!pg_catalog.pg_shadow",
    "!pg_catalog.pg_user_mapping",
    "!pg_catalog.pg_user_mappings",
    "!pg_catalog.pg_statistic",
    "!pg_catalog.pg_statistic_ext_data",
    "!pg_catalog.pg_largeobject",
    "!pg_catalog.pg_hba_file_rules",
    "!pg_catalog.pg_ident_file_mappings",
    "!pg_catalog.pg_file_settings",
    "!pg_catalog.pg_config",
    "!pg_catalog.pg_stat_activity",
    "!pg_catalog.pg_replication_slots",
    "!pg_catalog.pg_subscription",
    "!information_schema.user_mapping_options",
    "!information_schema._pg_user_mappings",
    "!information_schema.user_mappings",
)

# The same relations as plain patterns: evaluate.py applies them under every rule, preset or not.
SENSITIVE_CATALOG_PATTERNS = tuple(p[1:] for p in SENSITIVE_CATALOG)

# Planner statistics: sample values (most common values, histogram bounds) of every column the
# login may read, whatever table it is in. Denied under a rule that does not read every table, and
# on a connection that masks columns (tools/masking.py).
STATS_CATALOG = frozenset({
    "pg_catalog.pg_stats", "pg_catalog.pg_stats_ext", "pg_catalog.pg_stats_ext_exprs",
    "pg_catalog.pg_statistic", "pg_catalog.pg_statistic_ext_data",
})

READ_ONLY = SqlRule(
    id="read-only",
    preset="read-only",
    allow=frozenset({Kind.SELECT, Kind.EXPLAIN}),
    read_tables=("*",) + SENSITIVE_CATALOG,
    write_tables=(),
)

READ_WRITE = SqlRule(
    id="read-write",
    preset="read-write",
    allow=frozenset({Kind.SELECT, Kind.EXPLAIN, Kind.INSERT, Kind.UPDATE, Kind.DELETE}),
    review=frozenset({Kind.CREATE, Kind.ALTER, Kind.DROP, Kind.TRUNCATE, Kind.GRANT, Kind.REVOKE, Kind.COMMENT}),
    read_tables=("*",) + SENSITIVE_CATALOG,
    write_tables=("*", "!pg_catalog.*", "!information_schema.*", "!main.sqlite_*"),
    allow_functions=frozenset({"nextval", "setval"}),
    unfiltered_writes=Verdict.REVIEW,
)

PRESETS: dict[str, SqlRule] = {rule.id: rule for rule in (READ_ONLY, READ_WRITE)}


def preset(name: str, **overrides: Any) -> SqlRule:
    """A preset, optionally with fields overridden (a config rule that starts from a preset).
    Any: each field has its own type; dataclasses.replace refuses an unknown field name."""
    return replace(PRESETS[name], **overrides)
