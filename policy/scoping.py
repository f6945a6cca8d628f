"""Scoped execution: which database role, remote user or OS user a call runs as.

A connection may map identities to run-as targets, in order, first match wins. Where a connection
has a mapping, an identity that matches no entry does not see the connection at all; where it has
none, calls run as the gateway's own login (the single-user, embedded default).
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.policy.identity import Identity
from bastion.policy.rules import applies


@dataclass(frozen=True)
class RunAs:
    """One mapping entry: who it is for, and what they run as.

    ``target`` is a PostgreSQL role, a remote SSH user, or a local OS user; ``key`` (SSH only) names
    the private key file the gateway holds for that user.

    >>> RunAs("analyst", groups=frozenset({"analysts"})).applies_to(Identity("a", groups=frozenset({"analysts"})))
    True
    """

    target: str
    subjects: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    key: str | None = None

    def applies_to(self, identity: Identity) -> bool:
        return applies(self.subjects, self.groups, identity)

    def as_record(self) -> dict[str, str]:
        return {"as": self.target}


@dataclass(frozen=True)
class Scoping:
    """A connection's mapping; empty means every call runs as the gateway itself."""

    entries: tuple[RunAs, ...] = ()

    @property
    def mapped(self) -> bool:
        return bool(self.entries)

    def run_as(self, identity: Identity) -> RunAs | None:
        """The first entry for ``identity``; None when it has none (or the connection maps nobody)."""
        return next((entry for entry in self.entries if entry.applies_to(identity)), None)

    def admits(self, identity: Identity) -> bool:
        return not self.mapped or self.run_as(identity) is not None
