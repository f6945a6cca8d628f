"""The SQL rule model: who a rule is for, what it allows, holds or denies, and its limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bastion.policy.cache import ClearingCache
from bastion.policy.decision import Limits, Verdict
from bastion.policy.identity import Identity
from bastion.policy.sql.facts import Kind


@dataclass(frozen=True)
class SqlRule:
    """One rule on one connection.

    A rule applies to an identity when the identity's subject is in ``subjects`` or one of its
    groups is in ``groups``; a rule naming neither applies to everyone.

    >>> SqlRule("analysts", groups=frozenset({"analysts"}), allow=frozenset({Kind.SELECT})).applies_to(
    ...     Identity("a", groups=frozenset({"analysts"})))
    True
    """

    id: str
    subjects: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    allow: frozenset[Kind] = frozenset()
    review: frozenset[Kind] = frozenset()
    deny: frozenset[Kind] = frozenset()
    # schema.table globs; see policy.patterns. Writable tables are readable too.
    read_tables: tuple[str, ...] = ("*",)
    write_tables: tuple[str, ...] = ()
    deny_functions: tuple[str, ...] = ()
    # Names exempted from the built-in dangerous-function list.
    allow_functions: frozenset[str] = frozenset()
    # What an UPDATE or DELETE without a row-filtering WHERE gets.
    unfiltered_writes: Verdict = Verdict.REVIEW
    allow_locking: bool = False
    limits: Limits = field(default_factory=Limits)
    preset: str | None = None

    def applies_to(self, identity: Identity) -> bool:
        return applies(self.subjects, self.groups, identity)

    def summary(self) -> str:
        """One line on what the rule allows, for list_connections."""
        parts = [f"{self.id}: allows {_kinds(self.allow - self.deny) or 'nothing'}"]
        if self.review - self.deny:
            parts.append(f"holds {_kinds(self.review - self.deny)} for review")
        if self.deny:
            parts.append(f"denies {_kinds(self.deny)}")
        if self.unfiltered_writes is not Verdict.ALLOW and self.allow & {Kind.UPDATE, Kind.DELETE}:
            parts.append(f"UPDATE/DELETE need a WHERE ({self.unfiltered_writes.value} otherwise)")
        parts.append(f"max {self.limits.max_rows} rows")
        return "; ".join(parts)


def applies(subjects: frozenset[str], groups: frozenset[str], identity: Identity) -> bool:
    """A rule naming subjects or groups applies to those; a rule naming neither, to everyone."""
    if not subjects and not groups:
        return True
    return identity.subject in subjects or identity.in_any(groups)


def _kinds(kinds: frozenset[Kind]) -> str:
    return ", ".join(sorted(k.value.upper() for k in kinds))


DECISION_MEMO_SIZE = 4096  # decide()'s memo, per connection


@dataclass(frozen=True)
class ConnectionPolicy:
    """The rules of one connection, in order."""

    connection: str
    dialect: str
    rules: tuple[SqlRule, ...]
    # Where unqualified table names live (PostgreSQL: the connection's one search-path schema).
    default_schema: str | None = None
    # decide()'s memo: (identity, id(analysis), id(catalog)) → ((analysis, catalog), decision). Not part of the policy's value.
    decisions: ClearingCache[tuple[Any, ...], tuple[Any, Any]] = field(
        default_factory=lambda: ClearingCache(DECISION_MEMO_SIZE), compare=False, repr=False)

    def rules_for(self, identity: Identity) -> tuple[SqlRule, ...]:
        return tuple(rule for rule in self.rules if rule.applies_to(identity))
