"""Who is calling, from where: the per-call context the server hands to tools/."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bastion.policy import Identity

# (seconds elapsed, message): a progress notification to the MCP client, where it asked for them.
Progress = Callable[[float, str], Awaitable[None]]


@dataclass(frozen=True)
class Caller:
    identity: Identity
    # MCP client name and version, where the client said them.
    client: dict[str, str] = field(default_factory=dict)
    session: str | None = None
    progress: Progress | None = field(default=None, compare=False)
