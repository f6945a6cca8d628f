"""Who is calling: the one identity type every room shares.

Identity is plain data so that any authenticator (a configured stdio identity today, OIDC tokens
later) can build one without tools/ or policy/ knowing where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypedDict


class IdentityRecord(TypedDict):
    """An identity as the audit log and the holds store it (`Identity.as_record`)."""

    subject: str
    groups: list[str]
    email: str | None
    name: str | None
    source: str


@dataclass(frozen=True)
class Identity:
    """A person or service account, as the gateway authenticated it.

    >>> Identity("alice@example.com", groups=frozenset({"analysts"})).in_any(["analysts", "dba"])
    True
    """

    subject: str
    groups: frozenset[str] = frozenset()
    email: str | None = None
    name: str | None = None
    # How the identity was established ("config", "token", ...): recorded, never decided on.
    source: str = "config"
    claims: dict[str, object] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def in_any(self, groups: Iterable[str]) -> bool:
        return any(g in self.groups for g in groups)

    def as_record(self) -> IdentityRecord:
        """The identity as the audit log stores it (claims stay out: they may hold tokens)."""
        return {
            "subject": self.subject,
            "groups": sorted(self.groups),
            "email": self.email,
            "name": self.name,
            "source": self.source,
        }
