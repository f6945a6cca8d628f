"""The interface shell executors (local, SSH, container) implement, the result they return, and the
helpers for a command run as a local process group (local shell, a container runtime's client)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any, Protocol

from anyio.abc import ByteReceiveStream, Process

from bastion.policy import Identity


@dataclass
class ShellResult:
    exit_code: int | None  # None when the command was killed (timeout, cancellation)
    stdout: str
    stderr: str
    truncated: bool = False  # stdout or stderr was cut at max_output_bytes
    timed_out: bool = False
    masking: dict[str, Any] = field(default_factory=dict)  # detections per kind, never a value
    network: list[dict[str, Any]] = field(default_factory=list)  # per endpoint reached: connections, bytes each way


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


async def drain_capped(stream: ByteReceiveStream | None, buffer: bytearray, cap: int) -> None:
    """Read to the end; keep at most cap + 1 bytes (the extra byte says "truncated")."""
    if stream is None:
        return
    async for chunk in stream:
        if len(buffer) <= cap:
            buffer.extend(chunk[: cap + 1 - len(buffer)])


def kill_group(process: Process) -> None:
    """SIGKILL the process group ``process`` leads (it was started with start_new_session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
