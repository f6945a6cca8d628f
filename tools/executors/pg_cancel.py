"""A cancelled call cancels its statement on the server, and keeps the connection until the server
has answered.

One cancel request is not enough: PostgreSQL drops a cancel that arrives while no statement is
running, and a call's pipeline (BEGIN, settings, DECLARE, FETCH, COMMIT) has such gaps between its
statements. A cancel that landed after the DECLARE and before the FETCH left the FETCH running
until its statement_timeout, on a connection psycopg had already closed (a backend that sends
nothing does not notice). So the work runs shielded from the caller's cancellation; when the caller
gives up (or the gateway's own clock runs out), the statement is cancelled again every
``RETRY_S`` until the server answers, at most ``ANSWER_WAIT_S``; only then does the cancellation go
on. A server that never answers gets the connection closed (the pool discards it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import psycopg

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_S = 0.2  # between cancel requests while the server has not answered
ANSWER_WAIT_S = 10.0  # how long a cancelled call waits for the server before closing the connection


async def until_answered(conn: psycopg.AsyncConnection[Any], work: Callable[[], Awaitable[T]]) -> T:
    """``work()`` on ``conn``; cancelled, it ends only once the server has answered (see above)."""
    canceller = conn.pgconn.get_cancel()  # taken up front: it works without the connection itself
    outcome: list[T] = []
    failure: list[BaseException] = []
    done = anyio.Event()
    shielded = anyio.CancelScope(shield=True)

    async def run() -> None:
        with shielded:
            try:
                outcome.append(await work())
            except BaseException as error:  # handed to the caller below
                failure.append(error)
            finally:
                done.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.move_on_after(ANSWER_WAIT_S, shield=True):
                while not done.is_set():
                    await anyio.to_thread.run_sync(_cancel_quietly, canceller)
                    with anyio.move_on_after(RETRY_S):
                        await done.wait()
            if not done.is_set():
                log.warning("the server did not answer a cancelled statement within %g s: closing its connection", ANSWER_WAIT_S)
                shielded.cancel()
            raise
    if failure:
        raise failure[0]
    return outcome[0]


def _cancel_quietly(canceller: Any) -> None:
    try:
        canceller.cancel()
    except Exception:  # the statement may have ended already; nothing left to cancel
        log.debug("cancel request failed", exc_info=True)
