"""Combining the outcomes of every rule that applies to the caller into one Decision."""

from __future__ import annotations

from collections.abc import Sequence

from bastion.policy.decision import Decision, Limits, Verdict
from bastion.policy.outcome import Outcome


def combine(per_rule: Sequence[tuple[Outcome, Limits]]) -> Decision:
    """``per_rule``: each applying rule's outcome with that rule's limits, in rule order."""
    denies = [o for o, _ in per_rule if o.effect == "deny"]
    allows = [(o, lim) for o, lim in per_rule if o.effect == "allow"]
    reviews = [(o, lim) for o, lim in per_rule if o.effect == "review"]
    gaps = [o for o, _ in per_rule if o.effect == "none"]
    # Any explicit prohibition wins over every allow.
    if denies:
        return Decision.deny(tuple(o.rule for o in denies), denies[0].reason, hint=denies[0].hint)
    # Some rule fully allows it: allow, with that rule's limits.
    if allows:
        return Decision(Verdict.ALLOW, (allows[0][0].rule,), f"allowed by `{allows[0][0].rule}`", limits=allows[0][1])
    # Some rule would allow it with approval: hold.
    if reviews:
        o, limits = reviews[0]
        return Decision(Verdict.REVIEW, (o.rule,), o.reason, hint=o.hint, limits=limits)
    # No rule covers it: default deny, explained by the rule that came nearest. A rule that covers
    # this kind of statement (or this program) but not this table or argument is the one that
    # actually refused; one that is about other kinds altogether only says what it is for.
    nearest = next((o for o in gaps if not _out_of_scope(o)), gaps[0])
    return Decision.deny(tuple(o.rule for o in gaps), nearest.reason, hint=nearest.hint)


# The checks that say a rule is about something else entirely: SQL statement kinds, shell programs.
_SCOPE_CHECKS = ("kind", "program")


def _out_of_scope(outcome: Outcome) -> bool:
    """``developers-read:kind`` (the rule allows other statement kinds) rather than
    ``maintainers-write:table`` (it allows UPDATE, but not of this table)."""
    return outcome.rule.rpartition(":")[2] in _SCOPE_CHECKS
