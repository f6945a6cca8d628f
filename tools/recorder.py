"""Writes audit events through the store off the event loop; translates store failures."""

from __future__ import annotations

from typing import Any

import anyio

from policy.errors import AuditUnavailable
from store import StoreError
from store.sqlite_store import SqliteAuditStore


class Recorder:
    def __init__(self, store: SqliteAuditStore) -> None:
        self.store = store
        # Its own limiter: audit writes never queue behind executors in anyio's shared thread pool.
        # Many waiting appends let the store's group commit share one fsync among them.
        self._limiter = anyio.CapacityLimiter(64)

    async def append(self, event: dict[str, Any]) -> dict[str, Any]:
        try:
            return await anyio.to_thread.run_sync(self.store.append, event, limiter=self._limiter)
        except StoreError as error:
            raise AuditUnavailable(
                "the audit store cannot be written, so nothing was run",
                hint="Tell the gateway's operator; retry once the audit store is writable.",
                detail=str(error),
            ) from error
