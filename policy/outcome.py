"""One rule's outcome for one piece of text, and how a rule's checks fold into it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# allow | review | deny (an explicit prohibition: it beats every allow) | none (this rule does not
# cover the text; the reason says what it would need).
Effect = Literal["allow", "review", "deny", "none"]


@dataclass(frozen=True)
class Outcome:
    effect: Effect
    rule: str
    reason: str = ""
    hint: str | None = None


def first_outcome(rule_id: str, outcomes: Iterable[Outcome | None]) -> Outcome:
    """A rule's checks in order: the first deny or gap wins; else review if any check holds; else allow."""
    held: Outcome | None = None
    for outcome in outcomes:
        if outcome is None:
            continue
        if outcome.effect == "review":
            held = held or outcome
            continue
        return outcome
    return held or Outcome("allow", rule_id)


_SEVERITY = {"deny": 3, "none": 2, "review": 1, "allow": 0}


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    return max(outcomes, key=lambda o: _SEVERITY[o.effect])
