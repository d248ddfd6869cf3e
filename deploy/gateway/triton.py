"""The gateway's side of Triton: ONE bidirectional gRPC stream per browser session, and avatar registration.

Async gRPC (`tritonclient.grpc.aio`), not the SDK in a thread: the gateway is one asyncio loop (aiohttp for the
page and signalling, aiortc for the media), so the orchestrator's events arrive on that loop with no thread hop
between a response and the RTP packet it becomes, one gRPC channel multiplexes every session's stream (HTTP/2)
instead of a client and two threads per browser, and cancelling a session is cancelling a task. The requests of
a session (32 ms microphone chunks, typed turns, idle-motion requests, cancels) are queued and sent on the
stream in order; every response comes back on it, with the id of the request it answers.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from client.wire import (
    AR_AVATAR_ID,
    AR_FACE_BOX,
    AR_IMAGE,
    AR_MESSAGE,
    TH_AUDIO,
    TH_AVATAR_ID,
    TH_OPTIONS,
    TH_SAMPLE_RATE,
    TH_TEXT,
    StreamEvent,
    as_bytes,
    event_from_result,
    first_value,
    infer_input,
    new_session_token,
)
from export.contract import media as C
from export.contract.spec import AVATAR_REGISTRY, TALKING_HEAD

ERROR = "error"  # the gateway's own event type: a request the server refused (its message in data["message"])


def connect(url: str, root_cert: str | None = None) -> grpcaio.InferenceServerClient:
    """One aio client (one gRPC channel) for the whole gateway."""
    if root_cert:
        return grpcaio.InferenceServerClient(url, ssl=True, root_certificates=root_cert)
    return grpcaio.InferenceServerClient(url)


async def register_avatar(client: grpcaio.InferenceServerClient, image: bytes, timeout_s: float = 30.0) -> dict:
    """Register a face image with the avatar_registry model: {"id", "face_box", "message"}."""
    outputs = [grpcclient.InferRequestedOutput(t.name) for t in AVATAR_REGISTRY.outputs]
    result = await client.infer(AVATAR_REGISTRY.name, [infer_input(AVATAR_REGISTRY, AR_IMAGE, [image])],
                                outputs=outputs, client_timeout=timeout_s)
    avatar_id = first_value(result.as_numpy(AR_AVATAR_ID.name))
    box = result.as_numpy(AR_FACE_BOX.name)
    message = first_value(result.as_numpy(AR_MESSAGE.name))
    if avatar_id is None or box is None:
        raise RuntimeError(f"{AVATAR_REGISTRY.name} returned no avatar id")
    return {"id": as_bytes(avatar_id).decode(), "face_box": [int(v) for v in box.reshape(-1)],
            "message": "" if message is None else as_bytes(message).decode()}


async def wait_ready(client: grpcaio.InferenceServerClient, timeout_s: float = 120.0) -> None:
    """Until the orchestrator and the registry are ready (the gateway may start before Triton)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if all([await client.is_model_ready(m.name) for m in (TALKING_HEAD, AVATAR_REGISTRY)]):
                return
        except Exception:  # not up yet
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"Triton's {TALKING_HEAD.name} / {AVATAR_REGISTRY.name} not ready in {timeout_s:g} s")
        await asyncio.sleep(0.5)


class OrchestratorStream:
    """One session's stream to `talking_head`: send requests, iterate the events of all of them.

    session: the conversation id (barge-in and turn detection are per session on the server); the stream owns it
    with a secret of its own (`session_token`, new unless given), so no other client of the server can touch the
    session.
    options: per-turn options of the session's turns (already checked by the gateway).
    """

    def __init__(self, client: grpcaio.InferenceServerClient, session: str, avatar_id: str, options: dict[str, Any],
                 token: str | None = None):
        self.session = session
        self.token = token or new_session_token()
        self.options = dict(options)
        self._client = client
        self._queue: asyncio.Queue = asyncio.Queue()
        self._ids = itertools.count()
        self._call = None
        self._rate = infer_input(TALKING_HEAD, TH_SAMPLE_RATE, [C.INPUT_SAMPLE_RATE])
        self.set_avatar(avatar_id)
        self._mic_options = self._options(action="mic", session=session, session_token=self.token)
        self._mic_last = self._options(action="mic", session=session, session_token=self.token, end_of_input=True)

    def reopened(self) -> OrchestratorStream:
        """A new stream of the same session (same owner token, avatar and options): the gateway's sessions go on
        after talking_head was unloaded and loaded again (their streams had to close for the unload to finish)."""
        return OrchestratorStream(self._client, self.session, self.avatar_id, self.options, token=self.token)

    def set_avatar(self, avatar_id: str) -> None:
        self.avatar_id = avatar_id
        self._avatar = infer_input(TALKING_HEAD, TH_AVATAR_ID, [avatar_id])

    def _options(self, **extra: Any) -> grpcclient.InferInput:
        return infer_input(TALKING_HEAD, TH_OPTIONS, [json.dumps({**self.options, **extra}, separators=(",", ":"))])

    def _send(self, kind: str, inputs: list[grpcclient.InferInput]) -> str:
        rid = f"{kind}-{next(self._ids)}"
        self._queue.put_nowait({"model_name": TALKING_HEAD.name, "inputs": inputs, "request_id": rid})
        return rid

    def mic(self, chunk: np.ndarray, end_of_input: bool = False) -> str:
        """One 32 ms chunk (16 kHz mono float32); end_of_input ends a turn in progress now (push-to-talk release)."""
        opts = self._mic_last if end_of_input else self._mic_options
        return self._send("mic", [infer_input(TALKING_HEAD, TH_AUDIO, chunk), self._rate, opts, self._avatar])

    def text(self, text: str) -> str:
        """A typed turn of the session (it interrupts the session's reply in flight on the server)."""
        return self._send("text", [infer_input(TALKING_HEAD, TH_TEXT, [text]),
                                   self._options(session=self.session, session_token=self.token),
                                   self._avatar])

    def idle(self, seconds: float, from_s: float = 0.0, frame_stride: int = 2) -> str:
        """Idle-motion frames for `seconds`, paced by the server, every `frame_stride`-th slot of the 25 fps clock
        (12.5 fps: a slow sway looks the same, and it halves the server's and the encoder's work between replies).
        Not tied to the session on purpose: speech starting (which interrupts the session's turn) must not stop
        the face moving while the user talks. `from_s`: where on the idle motion's clock to start (the seconds of
        idle motion already sent, so that one request's sway continues the last one's)."""
        opts = {k: v for k, v in self.options.items() if k == "jpeg_quality"}
        return self._send("idle", [infer_input(TALKING_HEAD, TH_OPTIONS, [json.dumps(
            {**opts, "action": "idle", "idle_s": seconds, "idle_from_s": from_s, "frame_stride": frame_stride})]), self._avatar])

    def cancel(self) -> str:
        return self._send("cancel", [infer_input(TALKING_HEAD, TH_OPTIONS, [json.dumps(
            {"action": "cancel", "session": self.session, "session_token": self.token})])])

    async def _requests(self) -> AsyncIterator[dict]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Every event of every request of this stream, as it arrives (received_at: time.monotonic()). A request
        the server refuses gives an event of type ERROR; the stream itself failing raises."""
        self._call = self._client.stream_infer(self._requests())
        async for result, error in self._call:
            now = time.monotonic()
            if error is not None:
                yield StreamEvent(ERROR, {"message": str(error.message())}, received_at=now)
                continue
            event = event_from_result(result, received_at=now, request_id=result.get_response().id)
            if event is not None:
                yield event

    def close(self) -> None:
        """End the stream now: the server cancels every request of it still in flight."""
        self._queue.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
