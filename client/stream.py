"""A `talking_head` stream kept open across a client's turns (client.sdk).

A turn sent on a stream that is already open pays no stream set-up: no new HTTP/2 stream, no new call in every
gRPC hop on the way (the front door's is most of what it adds to a turn's first response, BENCHMARKS.md "Front
door overhead"), no response thread started and joined per turn. Turns on one KeptStream run one at a time; each
listens on its own queue, so a response of an earlier turn that comes late is never taken for this turn's.

Kept briefly, not for ever: Triton 2.51 does not finish unloading a model while a stream that sent it requests
is still open, idle or not (measured: `talking_head` stayed UNLOADING with one idle stream open and unloaded
within ~1.5 s of its close), so an idle kept stream would hold up the watchdog's reload of `talking_head`, a
drain's unload and the server's graceful exit (to its exit timeout). The SDK ends a stream idle for
`keep_s` (StreamPool; client.sdk.TalkingHeadClient's keep_stream_s).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.turns import Clock
from client.wire import ClientError
from export.contract.spec import TALKING_HEAD

log = logging.getLogger(__name__)


class KeptStream:
    """One gRPC client and its ModelStreamInfer stream, opened on the first turn and kept between turns.

    A stream whose RPC ended (the server or a front door closed it) is opened afresh by the next `listen`; a failed
    turn does not end it (its error is the turn's final response inside the stream, client.wire).
    """

    def __init__(self, client: grpcclient.InferenceServerClient, headers: dict[str, str], clock: Clock):
        self.client, self.headers, self.clock = client, headers, clock
        self._lock = threading.Lock()
        self._sink: queue.SimpleQueue | None = None
        self.open = False
        self.ended = False  # the RPC under the open stream has ended
        self.expiry: threading.Timer | None = None  # ends the stream once idle too long (client.sdk)

    def _on_response(self, result: grpcclient.InferResult | None, error: InferenceServerException | None) -> None:
        if error is not None and error.status() is not None:
            self.ended = True
        with self._lock:
            sink = self._sink
        if sink is not None:  # between turns nobody listens: nothing is due then
            sink.put((self.clock(), result, error))

    def listen(self) -> queue.SimpleQueue:
        """Open the stream unless it is open and alive; the queue that gets its responses from now on, as
        (received_at, result, error). Raises InferenceServerException when the stream cannot start."""
        if self.open and self.ended:
            self.stop(cancel=True)
        sink: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._sink = sink
        if not self.open:
            self.ended = False
            self.client.start_stream(callback=self._on_response, headers=self.headers)
            self.open = True
        return sink

    def send(self, inputs: list[grpcclient.InferInput], request_id: str) -> None:
        self.client.async_stream_infer(TALKING_HEAD.name, inputs, request_id=request_id,
                                       enable_empty_final_response=True)

    def park(self) -> None:
        """Between turns: the stream stays open, its responses (none are due) go nowhere."""
        with self._lock:
            self._sink = None

    def stop(self, cancel: bool) -> None:
        """End the stream: cancel=True cancels what is in flight on the server, else waits for it."""
        self.park()
        if self.open:
            self.open = False
            self.client.stop_stream(cancel_requests=cancel)

    def close(self) -> None:
        self.park()
        self.open = False
        self.client.close()  # stops the stream, waiting for nothing: none is in flight between turns


class StreamPool:
    """A client's streams between turns: one per turn running at once, each kept open `keep_s` after its turn
    (0: a stream per turn); its gRPC client stays for the next stream after that."""

    def __init__(self, make_client: Callable[[], grpcclient.InferenceServerClient], headers: dict[str, str],
                 clock: Clock, keep_s: float):
        self.make_client, self.headers, self.clock, self.keep_s = make_client, headers, clock, keep_s
        self._lock = threading.Lock()
        self._idle: list[KeptStream] = []
        self._closed = False

    def acquire(self) -> KeptStream:
        with self._lock:
            if self._closed:
                raise ClientError("TalkingHeadClient is closed")
            if self._idle:
                stream = self._idle.pop()
                if stream.expiry is not None:
                    stream.expiry.cancel()
                return stream
        return KeptStream(self.make_client(), self.headers, self.clock)

    def release(self, stream: KeptStream, clean: bool, reuse: bool = True) -> None:
        """After a turn: a clean one leaves its stream open for the next; any other cancels the stream on the
        server (the consumer stopped early, or it failed) and keeps the client for a new stream if `reuse`."""
        keep, kept_open = clean or reuse, clean and self.keep_s > 0
        try:
            stream.park() if kept_open else stream.stop(cancel=not clean)
        except Exception:
            log.debug("stopping a stream failed", exc_info=True)
            keep = False
        if keep and self._put_back(stream):
            if kept_open:
                stream.expiry = threading.Timer(self.keep_s, self._expire, args=(stream,))
                stream.expiry.daemon = True
                stream.expiry.start()
            return
        _close(stream)

    def _expire(self, stream: KeptStream) -> None:
        """Idle for keep_s: end the stream (nothing is in flight), keep its client."""
        with self._lock:
            if stream not in self._idle:  # a turn took it meanwhile
                return
            self._idle.remove(stream)
        try:
            stream.stop(cancel=False)
        except Exception:
            log.debug("stopping an idle stream failed", exc_info=True)
        if not self._put_back(stream):
            _close(stream)

    def _put_back(self, stream: KeptStream) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._idle.append(stream)
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for stream in idle:
            if stream.expiry is not None:
                stream.expiry.cancel()
            _close(stream)


def _close(stream: KeptStream) -> None:
    try:
        stream.close()
    except Exception:  # closing is best effort
        log.debug("closing a gRPC client failed", exc_info=True)
