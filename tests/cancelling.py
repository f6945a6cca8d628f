"""Cancelling a call at a point the test can see (a query on the server, a process, a lock wait),
not after a fixed time: on a loaded machine a clock cancels too early (proving nothing) or too late."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


async def cancel_once(ready: Callable[[], bool], call: Callable[[], Awaitable[object]], guard_s: float = 60.0) -> None:
    """Run ``call()`` and cancel it as soon as ``ready()`` (polled in a worker thread) is true.
    Fails if the call ends first, or if neither happens within ``guard_s`` (a hang guard)."""
    with anyio.fail_after(guard_s):
        async with anyio.create_task_group() as tg:

            async def cancel_when_ready() -> None:
                while not await anyio.to_thread.run_sync(ready):
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_when_ready)
            await call()
            raise AssertionError("the call ended before it could be cancelled")
