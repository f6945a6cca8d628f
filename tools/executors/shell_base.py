"""The interface shell executors (local, SSH) implement, and the result they return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from bastion.policy import Identity


@dataclass
class ShellResult:
    exit_code: int | None  # None when the command was killed (timeout, cancellation)
    stdout: str
    stderr: str
    truncated: bool = False  # stdout or stderr was cut at max_output_bytes
    timed_out: bool = False
    masking: dict[str, Any] = field(default_factory=dict)  # detections per kind, never a value


@dataclass(frozen=True)
class ShellRunRequest:
    """What the guard decided may run.

    ``command`` is the command Bastion rebuilt from the vetted structure (bash syntax, every literal
    word quoted by Bastion); it is never the agent's text. ``cwd`` is absolute and already checked.
    """

    command: str
    cwd: str | None
    timeout_s: float
    max_output_bytes: int
    identity: Identity


class ShellExecutor(Protocol):
    async def run(self, request: ShellRunRequest) -> ShellResult: ...

    async def close(self) -> None: ...


def decode_capped(data: bytes, cap: int) -> tuple[str, bool]:
    """Output as text, cut at ``cap`` bytes (on a character boundary), and whether it was cut."""
    if len(data) <= cap:
        return data.decode("utf-8", "replace"), False
    return data[:cap].decode("utf-8", "ignore"), True
