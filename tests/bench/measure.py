"""Timing a call repeated back to back, the unit every per-call figure here is made of."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


async def ms_per_call(call: Callable[[], Awaitable[object]], calls: int) -> float:
    """Mean milliseconds per call over ``calls`` calls made one after another (callers take the
    median of several such rounds)."""
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - start) / calls * 1e3
