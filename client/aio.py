"""The SDK for asyncio, on `tritonclient.grpc.aio`: the same service as client.sdk, events typed.

    from talking_head.client.aio import AsyncTalkingHeadClient      # in this repository: client.aio
    from talking_head.client.events import AudioEvent, DoneEvent, TextEvent

    async with AsyncTalkingHeadClient("localhost:8001") as th:
        avatar = await th.register_avatar(open("face.jpg", "rb").read())
        async with th.ask(avatar_id=avatar.id, text="Hello!") as stream:
            async for e in stream:                 # TextEvent, AudioEvent, VideoEvent, ..., DoneEvent
                if isinstance(e, AudioEvent):
                    play(e.pcm)
        result = await th.turn(avatar_id=avatar.id, text="Hello!")   # the whole turn: client.turns.TurnResult

Many turns may run at once on one client (each on its own gRPC stream on the one channel). A turn's stream stays
open `keep_stream_s` (2 s) for the client's next turn (client/aio_stream.py). Leaving `async with` or calling
`aclose()` before the `done` event cancels the turn on the server (its stream is closed). Errors are
client.wire's: ServerError with `.status` ("INVALID_ARGUMENT", "UNAVAILABLE", "CANCELLED", ...: a failed turn's
error is its final response, its status read from the orchestrator's wording; the stream stays open),
ConnectionFailed, ProtocolError, TurnTimeout.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aio
from tritonclient.utils import InferenceServerException

from client.aio_stream import AsyncStreamPool
from client.events import TurnEvent, typed
from client.turns import Clock, TurnCollector, TurnResult
from client.wire import (
    AR_AVATAR_ID,
    AR_FACE_BOX,
    AR_IMAGE,
    AR_MESSAGE,
    ClientError,
    ConnectionFailed,
    ProtocolError,
    ServerError,
    StreamEvent,
    TurnTimeout,
    action_inputs,
    answers,
    as_bytes,
    auth_headers,
    cancel_inputs,
    event_from_result,
    first_value,
    infer_input,
    is_final_response,
    new_session_token,
    owned,
    translate_error,
    turn_inputs,
)
from export.contract import events as ev
from export.contract.layout import GRPC_URL
from export.contract.spec import AVATAR_REGISTRY, TALKING_HEAD

__all__ = ["AsyncTalkingHeadClient", "AsyncTurnStream"]


def _rpc_error(e: grpc.RpcError, url: str) -> ClientError:
    """A failed gRPC call (the stream closed with a status) as the SDK's error."""
    return translate_error(InferenceServerException(msg=e.details() or str(e), status=str(e.code())), url)


class AsyncTurnStream:
    """The typed events of one turn, as they arrive: `async for`, `async with`, `aclose()` (cancels an unfinished
    turn). `request_id` names the turn's request."""

    def __init__(self, gen: AsyncIterator[StreamEvent], request_id: str):
        self._gen = gen
        self.request_id = request_id

    def __aiter__(self) -> AsyncTurnStream:
        return self

    async def __anext__(self) -> TurnEvent:
        return typed(await self._gen.__anext__())

    async def raw(self) -> AsyncIterator[StreamEvent]:
        """The events untyped (client.wire.StreamEvent: .type, .data, .audio, .frame, client timestamps)."""
        async for event in self._gen:
            yield event

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def __aenter__(self) -> AsyncTurnStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncTalkingHeadClient:
    """Client of `talking_head` and `avatar_registry` on one Triton server, for asyncio (arguments as
    client.sdk.TalkingHeadClient's)."""

    def __init__(self, url: str = GRPC_URL, ssl: bool = False, *, root_certificates: str | None = None,
                 private_key: str | None = None, certificate_chain: str | None = None,
                 turn_timeout_s: float = 120.0, request_timeout_s: float = 30.0, clock: Clock = time.perf_counter,
                 session_token: str | None = None, api_key: str | None = None, keep_stream_s: float = 2.0):
        self.url = url[len("grpc://"):] if url.startswith("grpc://") else url
        self.turn_timeout_s = turn_timeout_s
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self.session_token = session_token or new_session_token()
        self._auth = auth_headers(api_key)
        self._kwargs = dict(url=self.url, ssl=ssl, root_certificates=root_certificates, private_key=private_key,
                            certificate_chain=certificate_chain)
        self._client: aio.InferenceServerClient | None = None
        headers = dict(self._auth)
        self._streams = AsyncStreamPool(lambda requests: self._grpc().stream_infer(requests, headers=headers),
                                        keep_stream_s)

    def _grpc(self) -> aio.InferenceServerClient:
        if self._client is None:  # made on first use, inside the running event loop
            self._client = aio.InferenceServerClient(**self._kwargs)
        return self._client

    async def close(self) -> None:
        self._streams.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> AsyncTalkingHeadClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def check_connection(self, models: Iterable[str] = (TALKING_HEAD.name, AVATAR_REGISTRY.name),
                               timeout_s: float = 5.0) -> None:
        """Raise ConnectionFailed if Triton is unreachable, ServerError if a model is not ready."""
        try:
            if not await self._grpc().is_server_live(headers=self._auth, client_timeout=timeout_s):
                raise ConnectionFailed(self.url, "the server is not live")
            for name in models:
                if not await self._grpc().is_model_ready(name, headers=self._auth, client_timeout=timeout_s):
                    raise ServerError(f"model {name!r} is not ready on Triton at {self.url}")
        except InferenceServerException as e:
            if str(e.status() or "").endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
                raise ConnectionFailed(self.url, str(e.message())) from None
            raise translate_error(e, self.url) from None

    async def register_avatar(self, image: bytes, *, timeout_s: float | None = None):
        """Register a face image (encoded PNG/JPEG bytes); returns client.sdk.AvatarInfo."""
        from client.sdk import AvatarInfo

        outputs = [grpcclient.InferRequestedOutput(t.name) for t in AVATAR_REGISTRY.outputs]
        try:
            result = await self._grpc().infer(AVATAR_REGISTRY.name, [infer_input(AVATAR_REGISTRY, AR_IMAGE,
                                                                                   [bytes(image)])],
                                              outputs=outputs, headers=self._auth,
                                              client_timeout=timeout_s or self.request_timeout_s)
        except InferenceServerException as e:
            raise translate_error(e, self.url) from None
        avatar_id, box = first_value(result.as_numpy(AR_AVATAR_ID.name)), result.as_numpy(AR_FACE_BOX.name)
        message = first_value(result.as_numpy(AR_MESSAGE.name))
        if avatar_id is None or box is None or box.size != 4:
            raise ProtocolError(f"{AVATAR_REGISTRY.name} returned no avatar id / face box")
        return AvatarInfo(id=as_bytes(avatar_id).decode(), face_box=tuple(int(v) for v in box.reshape(-1)),
                          message="" if message is None else as_bytes(message).decode())

    def ask(self, *, avatar_id: Any, text: str | None = None, audio: np.ndarray | None = None,
            sample_rate: int | None = None, options: Mapping[str, Any] | str | None = None,
            timeout_s: float | None = None, request_id: str | None = None) -> AsyncTurnStream:
        """One user turn (speech or text); iterate its typed events. Arguments are checked now; the request goes
        out on the first `__anext__`."""
        inputs = turn_inputs(avatar_id=getattr(avatar_id, "id", avatar_id), text=text, audio=audio,
                             sample_rate=sample_rate, options=owned(options, self.session_token))
        rid = request_id or uuid.uuid4().hex
        return AsyncTurnStream(self._run(inputs, rid, self.turn_timeout_s if timeout_s is None else timeout_s), rid)

    async def turn(self, **ask_kwargs: Any) -> TurnResult:
        """`ask(...)` collected into a client.turns.TurnResult (reply, audio, frames, latencies, underrun)."""
        collector = TurnCollector(clock=self.clock)
        async with self.ask(**ask_kwargs) as stream:
            async for event in stream.raw():
                collector.add(event)
        return collector.result()

    def idle(self, *, avatar_id: Any, seconds: float, session: str | None = None) -> AsyncTurnStream:
        """Idle-motion frames for `seconds`, in real time (a new turn of `session` stops them)."""
        options = {"idle_s": seconds, **({"session": session, "session_token": self.session_token} if session else {})}
        rid = uuid.uuid4().hex
        return AsyncTurnStream(self._run(action_inputs("idle", getattr(avatar_id, "id", avatar_id), options), rid,
                                         self.turn_timeout_s + seconds), rid)

    async def cancel(self, session: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop the reply in flight of conversation `session`; the server's `cancelled` event data."""
        gen = self._run(cancel_inputs(session, self.session_token), uuid.uuid4().hex,
                        timeout_s or self.request_timeout_s,
                        expect_done=False)
        async for event in gen:
            if event.type == ev.CANCELLED:
                await gen.aclose()
                return dict(event.data)
        raise ProtocolError(f"{TALKING_HEAD.name} answered a cancel without a '{ev.CANCELLED}' event")

    async def _run(self, inputs: list, request_id: str, timeout_s: float,
                   expect_done: bool = True) -> AsyncIterator[StreamEvent]:
        clock = self.clock
        deadline = time.monotonic() + timeout_s
        try:
            stream = self._streams.acquire()
        except InferenceServerException as e:
            raise translate_error(e, self.url) from None
        stream.send({"model_name": TALKING_HEAD.name, "inputs": inputs, "request_id": request_id,
                     "parameters": {"triton_enable_empty_final_response": True}})
        sent_at = clock()
        clean, n, last, saw_done = False, 0, None, False
        try:
            while True:
                try:
                    result, error = await asyncio.wait_for(stream.receive(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise TurnTimeout(f"{TALKING_HEAD.name} turn {request_id} did not finish within {timeout_s:g} s "
                                      f"({n} events received, last: {last})") from None
                except StopAsyncIteration:
                    raise ProtocolError(f"{TALKING_HEAD.name} stream {request_id} ended before its final response "
                                        f"({n} events, last: {last})") from None
                except grpc.RpcError as e:  # the server closed the stream with a status
                    raise _rpc_error(e, self.url) from None
                if error is not None:  # the server's error answer, sent as the turn's final response
                    clean = True  # nothing left to cancel: the stream stays open for the next turn
                    raise translate_error(error, self.url)
                if not answers(result, request_id):
                    continue  # an earlier turn's, late on this kept stream
                final = is_final_response(result)
                event = event_from_result(result, sent_at=sent_at, received_at=clock(), request_id=request_id)
                if event is not None:
                    n, last, saw_done = n + 1, event.type, saw_done or event.type == ev.DONE
                    yield event
                if final:
                    break
            if expect_done and not saw_done:
                raise ProtocolError(f"{TALKING_HEAD.name} turn {request_id} ended without a '{ev.DONE}' event "
                                    f"({n} events, last: {last})")
            clean = True
        finally:
            self._streams.release(stream, clean)  # not clean (stopped early, timed out, failed): the turn is cancelled
