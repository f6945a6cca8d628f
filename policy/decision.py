"""A decision: verdict, the rule ids that determined it, a reason, and what would pass."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(str, Enum):
    ALLOW = "allow"
    REVIEW = "review"
    DENY = "deny"


@dataclass(frozen=True)
class Limits:
    """Bounds on one call's execution: the allowing rule's, the tightest over a text's statements."""

    max_rows: int = 1000
    max_bytes: int = 4_000_000
    timeout_s: float = 30.0
    # Rows one call may insert, update or delete (checked inside its transaction); None: no bound.
    max_rows_affected: int | None = None
    # Past that bound: "deny", or "review" (held for approvers, who see the count).
    over_rows_affected: str = "deny"

    def tightest(self, other: Limits) -> Limits:
        bounds = [b for b in (self.max_rows_affected, other.max_rows_affected) if b is not None]
        return Limits(
            max_rows=min(self.max_rows, other.max_rows),
            max_bytes=min(self.max_bytes, other.max_bytes),
            timeout_s=min(self.timeout_s, other.timeout_s),
            max_rows_affected=min(bounds) if bounds else None,
            over_rows_affected="review" if "review" == self.over_rows_affected == other.over_rows_affected else "deny",
        )


@dataclass(frozen=True)
class Decision:
    """What the guard decided about one call.

    >>> Decision.deny("read-only:kind", "DROP is not allowed", hint="SELECT only").verdict
    <Verdict.DENY: 'deny'>
    """

    verdict: Verdict
    rules: tuple[str, ...]
    reason: str
    hint: str | None = None
    limits: Limits | None = None
    # True when every statement only reads: the executor then opens a read-only transaction.
    read_only: bool = True

    @classmethod
    def deny(cls, rule: str | tuple[str, ...], reason: str, *, hint: str | None = None) -> Decision:
        rules = (rule,) if isinstance(rule, str) else rule
        return cls(Verdict.DENY, rules, reason, hint)

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    def as_record(self) -> dict[str, object]:
        out: dict[str, object] = {"verdict": self.verdict.value, "rules": list(self.rules), "reason": self.reason}
        if self.hint:
            out["hint"] = self.hint
        if self.limits:
            limits: dict[str, object] = {"max_rows": self.limits.max_rows, "max_bytes": self.limits.max_bytes,
                                         "timeout_s": self.limits.timeout_s}
            if self.limits.max_rows_affected is not None:
                limits["max_rows_affected"] = self.limits.max_rows_affected
            out["limits"] = limits
        if self.verdict is Verdict.ALLOW:
            out["read_only"] = self.read_only
        return out
