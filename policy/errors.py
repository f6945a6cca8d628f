"""Bastion's one exception tree. Every error the agent can see has a stable ``code``.

    BastionError                      code
    ├── ConfigError                   config_invalid
    ├── InvalidInput                  invalid_input
    ├── UnknownConnection             unknown_connection
    ├── Denied                        denied          (carries the Decision)
    │   └── ApprovalRequired          approval_required
    ├── AuditUnavailable              audit_unavailable
    ├── RateLimited                   rate_limited    (an identity's concurrent calls or calls per minute)
    ├── ApprovalError                 approval_error  (deciding or using a held call)
    │   ├── HoldNotFound              hold_not_found
    │   ├── HoldClosed                hold_closed     (approved, denied, expired or used already)
    │   ├── ReasonRequired            reason_required (a denial without a reason)
    │   └── NotAllowedToDecide        not_an_approver (not in the hold's approver groups)
    │       ├── SelfApproval          self_approval   (the requester themself)
    │       └── AlreadyVoted          already_voted   (a second vote by the same approver)
    └── ExecutionError                execution_failed
        ├── TargetUnavailable         target_unavailable
        ├── QueryTimeout              timeout
        └── QueryRejected             rejected_by_database

Messages are curated for the agent: user input in backticks, never a DSN, password or raw driver
text (raw text goes to the audit log, scrubbed, as ``detail``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class BastionError(Exception):
    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # for the audit log only
        self.hint = hint  # what would pass

    def __init_subclass__(cls, code: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if code:
            cls.code = code

    def for_agent(self) -> str:
        """``[code] message. hint`` — what was wrong and what would pass."""
        text = f"[{self.code}] {self.message.rstrip('.')}."
        return f"{text} {self.hint}" if self.hint else text


class ConfigError(BastionError, code="config_invalid"):
    pass


class InvalidInput(BastionError, code="invalid_input"):
    pass


class UnknownConnection(BastionError, code="unknown_connection"):
    pass


class Denied(BastionError, code="denied"):
    def __init__(self, decision: Any) -> None:
        super().__init__(decision.reason, hint=decision.hint)
        self.decision = decision

    def for_agent(self) -> str:
        return f"{super().for_agent()} (rule: {', '.join(self.decision.rules)})"


class ApprovalRequired(Denied, code="approval_required"):
    def __init__(self, decision: Any) -> None:
        super().__init__(decision)
        self.message = f"{decision.reason}: this needs approval, and this gateway cannot hold it for approvers"


class RateLimited(BastionError, code="rate_limited"):
    """Over a per-identity limit ([limits]); ``retry_after_s`` says when a call would pass."""

    def __init__(self, message: str, *, retry_after_s: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s


class AuditUnavailable(BastionError, code="audit_unavailable"):
    pass


class ExecutionError(BastionError, code="execution_failed"):
    pass


class TargetUnavailable(ExecutionError, code="target_unavailable"):
    pass


class QueryTimeout(ExecutionError, code="timeout"):
    pass


class QueryRejected(ExecutionError, code="rejected_by_database"):
    """The database refused what the policy allowed; ``rule`` names the engine's check that refused
    (`engine:no-such-table`, `engine:sqlite-authorizer`, ...) where Bastion could tell which."""

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None, rule: str | None = None) -> None:
        super().__init__(message, detail=detail, hint=hint)
        self.rule = rule

    def for_agent(self) -> str:
        return f"{super().for_agent()} (rule: {self.rule})" if self.rule else super().for_agent()


class RowsAffectedExceeded(QueryRejected):
    """A write changed more rows than its rule's max_rows_affected; it was rolled back. The rule
    may hold such a call for review instead (the count shown to approvers)."""

    def __init__(self, changed: int, bound: int) -> None:
        super().__init__(f"the call would change {changed:,} rows and its rule allows at most {bound:,} per call; "
                         "it was rolled back, nothing changed",
                         hint=f"Narrow the WHERE clause so that at most {bound:,} rows change, or change them in smaller calls.")
        self.changed, self.bound = changed, bound


class PendingApproval(BastionError, code="pending_approval"):
    """A held call still waiting for approvers when the tool call's wait ended; the hold lives on."""


class ApprovalDenied(BastionError, code="approval_denied"):
    """An approver denied the held call (the message carries their reason)."""


class HoldExpired(BastionError, code="hold_expired"):
    """A held call's hold expired before anyone decided it (or its approval went unused)."""


class ApprovalError(BastionError, code="approval_error"):
    """Deciding on or using a held call was refused (policy/approvals.py, store/approvals.py)."""


class HoldNotFound(ApprovalError, code="hold_not_found"):
    pass


class HoldClosed(ApprovalError, code="hold_closed"):
    """The held call is no longer pending: approved, denied, expired or used already."""


class ReasonRequired(ApprovalError, code="reason_required"):
    pass


class NotAllowedToDecide(ApprovalError, code="not_an_approver"):
    pass


class SelfApproval(NotAllowedToDecide, code="self_approval"):
    pass


class AlreadyVoted(NotAllowedToDecide, code="already_voted"):
    pass
