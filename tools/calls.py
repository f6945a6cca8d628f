"""Who is calling, from where: the per-call context the server hands to tools/."""

from __future__ import annotations

from dataclasses import dataclass, field

from policy import Identity


@dataclass(frozen=True)
class Caller:
    identity: Identity
    # MCP client name and version, where the client said them.
    client: dict[str, str] = field(default_factory=dict)
    session: str | None = None
