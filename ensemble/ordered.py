"""Calls that overlap but hand on their results in order: a turn's lip-sync batches (ensemble/pipeline.py).

At most `limit` calls run at once. Each result goes to `deliver` as soon as its call and every call started before
it are done, so frames leave in the order they were asked for while the next batch is already being made.
The first failure goes to `on_error` at once (the owner is then told where it waits, not at its next call) and is
raised by the next `start` or by `join`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class OrderedCalls(Generic[T]):
    def __init__(self, limit: int, deliver: Callable[[T], None],
                 on_error: Callable[[BaseException], None] = lambda e: None):
        if limit < 1:
            raise ValueError(f"calls in flight must be at least 1, not {limit}")
        self._room = asyncio.Semaphore(limit)
        self._deliver = deliver
        self._on_error = on_error
        self._last: asyncio.Task | None = None  # the newest call: it delivers after the ones before it
        self._running: set[asyncio.Task] = set()
        self.error: BaseException | None = None

    async def start(self, call: Awaitable[T]) -> None:
        """Start `call` once fewer than `limit` run (it waits for room)."""
        try:
            self._raise()
            await self._room.acquire()
            if self.error is not None:
                self._room.release()
                self._raise()
        except BaseException:
            _close(call)
            raise
        task = asyncio.ensure_future(self._run(call, self._last))
        self._running.add(task)
        task.add_done_callback(self._done)
        self._last = task

    async def join(self) -> None:
        """Wait until every started call has delivered; raises the first failure."""
        if self._last is not None:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._raise()

    async def cancel(self) -> None:
        """Cancel the calls still running and wait for them to end (their results are not delivered)."""
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(self, call: Awaitable[T], before: asyncio.Task | None) -> None:
        try:
            result = await call
        finally:
            self._room.release()
        if before is not None:
            await asyncio.wait([before])  # its failure is reported by its own task
            if before.cancelled() or before.exception() is not None:
                return
        self._deliver(result)

    def _done(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()
            self._on_error(self.error)

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def _close(call: Awaitable) -> None:
    if asyncio.iscoroutine(call):
        call.close()  # never started: no "never awaited" warning
