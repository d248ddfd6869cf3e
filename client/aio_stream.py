"""A `talking_head` stream kept open across turns, for the asyncio SDK (client.aio): client/stream.py's idea on
`tritonclient.grpc.aio`, for the same reasons and with the same limit.

A turn on a stream that is already open pays no stream set-up (no new HTTP/2 stream, no new call in every gRPC hop
on the way: through the front door most of what it adds to a turn, BENCHMARKS.md "Front door overhead"). Turns on
one stream run one at a time. An idle stream ends after `keep_s`: Triton 2.51 does not finish unloading
`talking_head` while a stream that sent it requests is open (client/stream.py says what was measured).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from client.wire import ClientError


class AsyncKeptStream:
    """One ModelStreamInfer call: requests go out through a queue (`send`); a reader task puts the responses in
    an inbox (`receive`) and marks the stream `ended` once the call is over (the server closed it: a front door
    closes idle ones at a drain; a failed turn does not, its error is an answer inside the stream)."""

    def __init__(self, start: Callable[[AsyncIterator[dict]], object]):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._responses = start(self._requests())  # tritonclient.grpc.aio's stream_infer response iterator
        self._inbox: asyncio.Queue = asyncio.Queue()  # (result, error) pairs, then the exception that ended it
        self.ended = False
        self.expiry: asyncio.TimerHandle | None = None
        self._reader = asyncio.ensure_future(self._read())

    async def _requests(self) -> AsyncIterator[dict]:
        while (request := await self._queue.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for pair in self._responses:
                self._inbox.put_nowait(pair)
            end: BaseException = StopAsyncIteration()
        except grpc.RpcError as e:  # the call ended with a status
            end = e
        except asyncio.CancelledError:  # closed here
            end = ClientError("the stream was closed")
        self.ended = True
        self._inbox.put_nowait(end)

    def send(self, request: dict) -> None:
        self._queue.put_nowait(request)

    async def receive(self) -> tuple:
        """The next (InferResult | None, InferenceServerException | None); raises what ended the call
        (grpc.RpcError, StopAsyncIteration for an end without a status)."""
        item = await self._inbox.get()
        if isinstance(item, BaseException):
            self._inbox.put_nowait(item)  # and for every later receive
            raise item
        return item

    def close(self) -> None:
        """End the call now: whatever of it is still running on the server is cancelled."""
        if self.expiry is not None:
            self.expiry.cancel()
        self._queue.put_nowait(None)
        self._responses.cancel()
        self._reader.cancel()


class AsyncStreamPool:
    """A client's streams between turns: one per turn running at once, each kept open `keep_s` after a turn that
    ended cleanly (0: a stream per turn)."""

    def __init__(self, start: Callable[[AsyncIterator[dict]], object], keep_s: float):
        self.start, self.keep_s = start, keep_s
        self._idle: list[AsyncKeptStream] = []
        self._closed = False

    def acquire(self) -> AsyncKeptStream:
        if self._closed:
            raise ClientError("AsyncTalkingHeadClient is closed")
        while self._idle:
            stream = self._idle.pop()
            if stream.expiry is not None:
                stream.expiry.cancel()
            if not stream.ended:
                return stream
            stream.close()  # the server ended it while it was idle
        return AsyncKeptStream(self.start)

    def release(self, stream: AsyncKeptStream, clean: bool) -> None:
        """After a turn: a clean one leaves its stream open for the next turn; any other (left early, failed,
        timed out) ends it, which cancels the turn on the server."""
        if not clean or self.keep_s <= 0 or self._closed:
            stream.close()
            return
        stream.expiry = asyncio.get_running_loop().call_later(self.keep_s, self._expire, stream)
        self._idle.append(stream)

    def _expire(self, stream: AsyncKeptStream) -> None:
        if stream in self._idle:  # else a turn took it meanwhile
            self._idle.remove(stream)
            stream.close()

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for stream in idle:
            stream.close()
