"""Writes audit events through the store from one writer thread; translates store failures.

One thread of its own, not anyio's worker pool: handing an append to it and back costs about a
third as much (about 20 µs against anyio's 68, measured alone), and events that arrive while a
write is on disk go to the store together, one transaction and one fsync for all of them.

A guarded call running alone (`alone()`: the Guard counts its calls in ``calls``, and nothing is
queued for the writer) writes on the calling thread instead: there is no batch to share, and two
thread wake-ups per event (there and back) cost more than the write's CPU on a busy machine. The
event loop waits for that write, which is fine with nothing else to serve; a second call arriving
meanwhile finds two calls running and takes the writer thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading

from bastion.policy.errors import AuditUnavailable
from bastion.store import StoreError
from bastion.store.audit_store import AuditStore
from bastion.store.events import AuditEvent

_BATCH = 256  # events per transaction at most, so one slow batch does not grow without bound
_Outcome = AuditEvent | BaseException  # an event as stored, or what kept it out
_Item = tuple[asyncio.AbstractEventLoop, "asyncio.Future[AuditEvent]", AuditEvent]


class Recorder:
    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.calls = 0  # guarded calls running now (Guard.run counts them)
        self._queued = 0  # events handed to the writer thread and not yet written

    def alone(self) -> bool:
        """One guarded call running and nothing waiting for the writer: write on the calling thread."""
        return self.calls == 1 and self._queued == 0

    async def append(self, event: AuditEvent) -> AuditEvent:
        try:
            if self.alone():
                outcome = self._write([event])[0]
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome
            loop = asyncio.get_running_loop()
            future: asyncio.Future[AuditEvent] = loop.create_future()
            self._start()
            with self._start_lock:
                self._queued += 1
            self._queue.put((loop, future, event))
            return await future
        except StoreError as error:
            raise AuditUnavailable(
                "the audit store cannot be written, so nothing was run",
                hint="Tell the gateway's operator; retry once the audit store is writable.",
                detail=str(error),
            ) from error

    def _start(self) -> None:
        if self._writer is None:
            with self._start_lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_forever, name="bastion-audit-writer", daemon=True)
                    self._writer.start()

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            written = self._write([event for _, _, event in batch])
            with self._start_lock:
                self._queued -= len(batch)
            # One wake-up per event loop for the whole batch, not one per event.
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[AuditEvent], _Outcome]]] = {}
            for (loop, future, _), outcome in zip(batch, written):
                by_loop.setdefault(loop, []).append((future, outcome))
            for loop, settled in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_settle, settled)
                except RuntimeError:  # that loop has closed: nobody is waiting any more
                    pass


    def _write(self, batch: list[AuditEvent]) -> list[_Outcome]:
        """Each event's stored form, or the error that kept it out. An event the store cannot take
        (anything but a StoreError: its transaction was rolled back before commit) fails only its own
        call: the rest of the batch is tried again one by one, so a write a neighbour made is never
        left without its outcome. A StoreError (the store itself, or a witness after commit) is
        everyone's."""
        try:
            return list(self.store.append_many(batch))
        except StoreError as error:
            return [error] * len(batch)
        except Exception as error:
            if len(batch) == 1:
                return [StoreError(f"cannot record this event: {type(error).__name__}: {error}")]
        return [self._write([event])[0] for event in batch]


def _settle(settled: list[tuple[asyncio.Future[AuditEvent], _Outcome]]) -> None:
    for future, outcome in settled:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
