"""Approvals, the pure part: what an approval binds to, who may decide a held call, and why not.

No I/O. The store (store/approvals.py) keeps held calls and votes and calls `refusal` again inside
its own transaction; channels (CLI, HTTP, page, MCP tools) call `can_decide` first to explain a
refusal or to hide the buttons.

>>> alice = Identity("alice", frozenset({"dev"}))
>>> bob = Identity("bob", frozenset({"dba"}))
>>> held = Decidable("hold-1", "alice", ("dba",))
>>> can_decide(bob, held) is None
True
>>> can_decide(alice, held)
'`alice` asked for held call `hold-1` and cannot approve or deny it themself'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bastion.policy.errors import AlreadyVoted, ConfigError, NotAllowedToDecide, SelfApproval
from bastion.policy.identity import Identity

# Bumped only if the encoding below changes: a binding from another version never matches.
BINDING_VERSION = "bastion.approval/1"


def binding_hash(requester_subject: str, connection: str | None, tool: str, text: str) -> str:
    """The hash an approval binds to: sha256 over the JSON array (version, requester subject,
    connection, tool, exact text). JSON quoting makes the encoding unambiguous (no separator can be
    forged inside a value); one character changed anywhere gives another binding.

    >>> binding_hash("alice", "prod", "sql_execute", "DELETE FROM t WHERE id = 1") == \\
    ...     binding_hash("alice", "prod", "sql_execute", "DELETE FROM t WHERE id = 2")
    False
    """
    encoded = json.dumps([BINDING_VERSION, requester_subject, connection, tool, text],
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


def text_hash(text: str) -> str:
    """sha256 of the exact text (UTF-8), as stored beside a held call."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ApprovalPolicy:
    """How a rule's held calls are decided: who may approve, how many approvals, how long it lives.

    ``ttl_s`` bounds a hold's whole life: a pending hold expires then, and so does an approval that
    nobody used by then (the agent re-issues the identical call to use it).

    >>> ApprovalPolicy(("dba",), min_approvals=2).approver_groups
    frozenset({'dba'})
    """

    approver_groups: frozenset[str]
    min_approvals: int = 1
    ttl_s: float = 3600.0

    def __post_init__(self) -> None:
        groups = frozenset([self.approver_groups] if isinstance(self.approver_groups, str) else self.approver_groups)
        object.__setattr__(self, "approver_groups", groups)
        if not groups:
            raise ConfigError("an approval policy needs at least one approver group",
                              hint="Name the groups whose members may approve, e.g. approvers = [\"dba\"].")
        if self.min_approvals < 1:
            raise ConfigError(f"min_approvals is {self.min_approvals}; it must be at least 1")
        if self.ttl_s <= 0:
            raise ConfigError(f"the approval ttl is {self.ttl_s:g} s; it must be positive")


class HeldLike(Protocol):
    """What `can_decide` reads of a held call (store/approvals.py's `Held` has all of it)."""

    @property
    def hold_id(self) -> str: ...
    @property
    def requester_subject(self) -> str: ...
    @property
    def approver_groups(self) -> Collection[str]: ...


@dataclass(frozen=True)
class Decidable:
    """A minimal held call, for `can_decide` without a store (tests, previews)."""

    hold_id: str
    requester_subject: str
    approver_groups: Collection[str]
    requester: Mapping[str, Any] = field(default_factory=dict)
    votes: tuple[Any, ...] = ()
    min_approvals: int = 1


def _listed(groups: Iterable[str]) -> str:
    return ", ".join(f"`{g}`" for g in sorted(groups))


def refusal(approver: Identity, held: HeldLike) -> NotAllowedToDecide | None:
    """The error deciding ``held`` as ``approver`` must raise, or None when they may decide it.

    Refused, in this order: the requester themself (same subject, or the same e-mail address when
    both have one: one person, two accounts); anyone in none of the hold's approver groups; an
    approver who has voted on it already (``held.votes``, where the held call carries them).
    Whether the hold is still pending is the store's to check, not this function's.
    """
    groups = sorted(held.approver_groups)
    who = f"`{approver.subject}`"
    requester: Mapping[str, Any] = getattr(held, "requester", None) or {}
    email = requester.get("email")
    same_email = bool(approver.email and isinstance(email, str) and approver.email.casefold() == email.casefold())
    if approver.subject == held.requester_subject or same_email:
        return SelfApproval(f"{who} asked for held call `{held.hold_id}` and cannot approve or deny it themself",
                            hint=f"Another member of {_listed(groups)} must decide it.")
    if not approver.in_any(groups):
        return NotAllowedToDecide(
            f"{who} is not in an approver group of held call `{held.hold_id}`",
            hint=f"Only members of {_listed(groups)} may approve or deny it.")
    for vote in getattr(held, "votes", ()) or ():
        if vote.approver == approver.subject:
            needed = getattr(held, "min_approvals", 1)
            return AlreadyVoted(
                f"{who} has already {'approved' if vote.approve else 'denied'} held call `{held.hold_id}`",
                hint=(f"It needs {needed} approvals from different people: another member of {_listed(groups)} "
                      "must give the next one." if needed > 1 else "One vote per approver."))
    return None


def can_decide(approver: Identity, held: HeldLike) -> str | None:
    """None when ``approver`` may approve or deny ``held``; else the reason they may not, for a person.

    The hint that says who could decide instead is on `refusal(...)`'s error.
    """
    refused = refusal(approver, held)
    return None if refused is None else refused.message
