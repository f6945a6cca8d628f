"""Where work that parses an agent's text runs: a short text on the event loop, a long one in a
worker thread, so a large text (a 1.3 MB one once took 68 s) never holds up the other callers, and a
normal one pays no thread hand-off (about 0.5 ms a call under load). The steps that parse the same
SQL text (tools.sql's catalog check before the guard, the guard's vet) decide the same way, so the
analysis they share is cached where it runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

OFFLOAD_BYTES = 16 * 1024


async def parsing(text: str, work: Callable[[], T], limiter: anyio.CapacityLimiter | None = None) -> T:
    """``work()``, which parses ``text``: inline when the text is short, else in a worker thread."""
    if len(text) <= OFFLOAD_BYTES:
        return work()
    return await anyio.to_thread.run_sync(work, limiter=limiter)
