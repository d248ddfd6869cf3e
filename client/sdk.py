"""A thin SDK for the talking-head service on `tritonclient.grpc`.

    from client.sdk import TalkingHeadClient
    from client.turns import collect

    with TalkingHeadClient("localhost:8001") as th:
        avatar = th.register_avatar(open("face.jpg", "rb").read())
        for event in th.ask(avatar_id=avatar.id, text="Hello!"):
            ...                                   # export.contract.events.Event, as it arrives
        result = th.turn(avatar_id=avatar.id, text="Hello!")   # or: collect(th.ask(...))
        print(result.reply, result.time_to_first_audio_s, result.underrun)

Tensor and model names come from `export.contract.spec` (TALKING_HEAD, AVATAR_REGISTRY);
the event protocol is `export.contract.events`.

One `ask` is one user turn: a gRPC bidirectional stream carrying one request to
the decoupled `talking_head` model, opened with `enable_empty_final_response`
so the end of the turn is the response whose `triton_final_response` parameter
is true. A `TalkingHeadClient` may run several turns at once from different
threads: each turn takes its own `InferenceServerClient` (tritonclient allows
one stream per client) from a small pool of idle ones.

Errors: `ConnectionFailed` (Triton unreachable), `ServerError` (the server's message, verbatim), `ProtocolError`
(a response that breaks the event protocol; a `ServerError`), `TurnTimeout` (the turn did not finish in time).
All derive from `ClientError`.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.events import TurnEvent
from client.retry import RetryPolicy, is_retryable_refusal
from client.stream import StreamPool
from client.turns import Clock, TurnCollector, TurnResult
from client.wire import (
    AR_AVATAR_ID,
    AR_FACE_BOX,
    AR_IMAGE,
    AR_MESSAGE,
    TH_AVATAR_ID,
    TH_SAMPLE_RATE,
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
    mic_inputs,
    new_session_token,
    owned,
    translate_error,
    turn_inputs,
)
from client.wire import TH_AUDIO, TH_OPTIONS, TH_TEXT  # noqa: F401  (re-exported: sdk.TH_* stay importable)
from export.contract import events as ev
from export.contract import media
from export.contract.layout import GRPC_URL
from export.contract.spec import AVATAR_REGISTRY, TALKING_HEAD

log = logging.getLogger(__name__)

DEFAULT_URL = GRPC_URL
DEFAULT_TURN_TIMEOUT_S = 120.0  # a whole turn, from sending the request to the final response
DEFAULT_REQUEST_TIMEOUT_S = 30.0  # unary calls: register_avatar, health checks



# ---------------------------------------------------------------- the client

@dataclass(frozen=True)
class AvatarInfo:
    id: str
    face_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the registered image
    message: str  # what the face detector decided


class TurnStream(Iterator[StreamEvent]):
    """The events of one turn, as they arrive (what `TalkingHeadClient.ask` returns).

    Iterating sends the request (on the first `next`) and yields events until the
    final response. Stopping early — `close()`, leaving a `with` block, or simply
    dropping the iterator after a `break` — cancels the stream on the server.
    """

    def __init__(self, gen: Iterator[StreamEvent], request_id: str):
        self._gen = gen
        self.request_id = request_id

    def __iter__(self) -> TurnStream:
        return self

    def __next__(self) -> StreamEvent:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()  # GeneratorExit at the pending yield: the turn's finally cancels the stream

    def typed(self) -> Iterator[TurnEvent]:
        """The same events as dataclasses (client.events: TextEvent, AudioEvent, VideoEvent, DoneEvent, ...)."""
        for event in self:
            yield event.typed()

    def __enter__(self) -> TurnStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TalkingHeadClient:
    """Client of the `talking_head` and `avatar_registry` models on one Triton server (gRPC).

    url: "host:port" of Triton's gRPC endpoint (a leading "grpc://" is dropped).
    ssl, root_certificates, private_key, certificate_chain: TLS, as tritonclient takes them.
    turn_timeout_s: default overall limit of one `ask` turn; request_timeout_s: of unary calls.
    clock: the clock that stamps events (`time.perf_counter`; tests may inject one).
    session_token: the secret that owns this client's sessions, sent beside every session id (the server refuses
    a session's requests with another one); default a new one per client: share it to reach a session elsewhere.
    api_key: sent as `authorization: Bearer <key>` on every call (the front door, deploy/front_door, needs one).
    keep_stream_s: a turn's stream stays open this long for the next turn (client.stream: a turn on an open
    stream skips the stream set-up); 0 opens a stream per turn. Short, because an open stream keeps Triton from
    unloading `talking_head` (a reload, a drain, the server's exit wait for it).
    """

    def __init__(self, url: str = DEFAULT_URL, ssl: bool = False, *, root_certificates: str | None = None,
                 private_key: str | None = None, certificate_chain: str | None = None,
                 turn_timeout_s: float = DEFAULT_TURN_TIMEOUT_S,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 clock: Clock = time.perf_counter, verbose: bool = False, session_token: str | None = None,
                 api_key: str | None = None, keep_stream_s: float = 2.0):
        if url.startswith("grpc://"):
            url = url[len("grpc://"):]
        self.url = url
        self.turn_timeout_s = turn_timeout_s
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self.session_token = session_token or new_session_token()
        self._auth = auth_headers(api_key)
        self._client_kwargs = dict(url=url, verbose=verbose, ssl=ssl, root_certificates=root_certificates,
                                   private_key=private_key, certificate_chain=certificate_chain)
        self._streams = StreamPool(self._new_grpc_client, dict(self._auth), clock, keep_stream_s)
        self._unary = self._new_grpc_client()

    # -- lifetime

    def _new_grpc_client(self) -> grpcclient.InferenceServerClient:
        try:
            return grpcclient.InferenceServerClient(**self._client_kwargs)
        except InferenceServerException as e:
            raise ConnectionFailed(self.url, str(e.message())) from None

    def close(self) -> None:
        self._streams.close()
        try:
            self._unary.close()
        except Exception:  # closing is best effort
            log.debug("closing a gRPC client failed", exc_info=True)

    def __enter__(self) -> TalkingHeadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health

    def check_connection(self, models: Iterable[str] = (TALKING_HEAD.name, AVATAR_REGISTRY.name),
                         timeout_s: float | None = 5.0) -> None:
        """Raise `ConnectionFailed` if Triton is unreachable, `ServerError` if a model is not ready."""
        try:
            if not self._unary.is_server_live(headers=self._auth, client_timeout=timeout_s):
                raise ConnectionFailed(self.url, "the server is not live")
            for name in models:
                if not self._unary.is_model_ready(name, headers=self._auth, client_timeout=timeout_s):
                    raise ServerError(f"model {name!r} is not ready on Triton at {self.url}")
        except InferenceServerException as e:
            if str(e.status() or "").endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
                raise ConnectionFailed(self.url, str(e.message())) from None
            raise translate_error(e, self.url) from None

    def wait_until_ready(self, timeout_s: float = 60.0,
                         models: Iterable[str] = (TALKING_HEAD.name, AVATAR_REGISTRY.name),
                         poll_s: float = 0.5) -> None:
        """Poll until the server is live and `models` are ready; re-raise the last error at the deadline."""
        models = tuple(models)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.check_connection(models, timeout_s=min(5.0, max(0.1, deadline - time.monotonic())))
                return
            except ClientError:
                if time.monotonic() + poll_s > deadline:
                    raise
            time.sleep(poll_s)

    # -- avatar_registry

    def register_avatar(self, image: bytes | os.PathLike, *, timeout_s: float | None = None) -> AvatarInfo:
        """Register a face image (encoded PNG/JPEG/... bytes, or a path) and return its avatar id."""
        if isinstance(image, os.PathLike):
            with open(image, "rb") as f:
                image = f.read()
        if not isinstance(image, (bytes, bytearray, memoryview)):
            raise TypeError(f"register_avatar takes the image file's bytes, not {type(image).__name__}")
        inputs = [infer_input(AVATAR_REGISTRY, AR_IMAGE, [bytes(image)])]
        outputs = [grpcclient.InferRequestedOutput(t.name) for t in AVATAR_REGISTRY.outputs]
        try:
            result = self._unary.infer(AVATAR_REGISTRY.name, inputs, outputs=outputs, headers=self._auth,
                                       client_timeout=timeout_s or self.request_timeout_s)
        except InferenceServerException as e:
            raise translate_error(e, self.url) from None
        avatar_id, box = first_value(result.as_numpy(AR_AVATAR_ID.name)), result.as_numpy(AR_FACE_BOX.name)
        message = first_value(result.as_numpy(AR_MESSAGE.name))
        if avatar_id is None or box is None or box.size != 4:
            raise ProtocolError(f"{AVATAR_REGISTRY.name} returned no avatar id / face box")
        return AvatarInfo(id=as_bytes(avatar_id).decode(), face_box=tuple(int(v) for v in box.reshape(-1)),
                          message="" if message is None else as_bytes(message).decode())

    # -- talking_head

    def ask(self, *, avatar_id: str | AvatarInfo, text: str | None = None, audio: np.ndarray | None = None,
            sample_rate: int | None = None, options: Mapping[str, Any] | str | bytes | None = None,
            timeout_s: float | None = None, request_id: str | None = None) -> TurnStream:
        """One user turn: send speech (`audio`, mono float32) or `text`, iterate the reply's events.

        sample_rate defaults to media.INPUT_SAMPLE_RATE; other rates are sent as given (and refused by the server).
        options: a JSON object (a dict, or its JSON text), see ensemble.options. timeout_s bounds the whole turn
        (default: the client's turn_timeout_s). Arguments are checked now; the request goes out on the first `next()`.
        """
        inputs = turn_inputs(avatar_id=_avatar(avatar_id), text=text, audio=audio, sample_rate=sample_rate,
                             options=owned(options, self.session_token))
        rid = request_id or uuid.uuid4().hex
        timeout = self.turn_timeout_s if timeout_s is None else float(timeout_s)
        return TurnStream(self._run_turn(inputs, rid, timeout), rid)

    def idle(self, *, avatar_id: str | AvatarInfo, seconds: float, session: str | None = None,
             options: Mapping[str, Any] | None = None) -> TurnStream:
        """Idle-motion frames of the avatar for `seconds`, paced in real time (while the user speaks or thinks).

        With a `session`, a new turn of that session stops the idle stream (as it stops a reply)."""
        opts = {**dict(options or {}), "idle_s": seconds, **({"session": session} if session else {})}
        return self._action("idle", avatar_id, opts, timeout_s=self.turn_timeout_s + seconds)

    def prerender(self, *, avatar_id: str | AvatarInfo, text: str | None = None,
                  options: Mapping[str, Any] | None = None) -> list[str]:
        """Render the server's cached exchanges (or the one `text`) for this avatar and voice (`options`:
        speed, pitch, ...) into its answer cache; returns the phrases rendered now."""
        events = list(self._action("prerender", avatar_id, options or {}, text=text, timeout_s=4 * self.turn_timeout_s))
        return list(events[-1].data.get("prerendered", []))

    def _action(self, action: str, avatar_id: str | AvatarInfo, options: dict[str, Any], *, text: str | None = None,
                timeout_s: float) -> TurnStream:
        inputs = action_inputs(action, _avatar(avatar_id), owned(options, self.session_token), text=text)
        rid = uuid.uuid4().hex
        return TurnStream(self._run_turn(inputs, rid, timeout_s), rid)

    def cancel(self, session: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop the reply in flight of conversation `session` (barge-in without a new turn).

        Returns the server's `cancelled` event data: `interrupted_turn` is the stopped turn's id, or
        None when the session had no reply in flight. The stopped turn's own stream ends with a
        `done` event whose `interrupted` is "cancel".
        """
        inputs = cancel_inputs(session, self.session_token)
        timeout = self.request_timeout_s if timeout_s is None else float(timeout_s)
        for event in self._run_turn(inputs, uuid.uuid4().hex, timeout, expect_done=False):
            if event.type == ev.CANCELLED:
                return dict(event.data)
        raise ProtocolError(f"{TALKING_HEAD.name} answered a cancel without a '{ev.CANCELLED}' event")

    def microphone(self, *, session: str, avatar_id: str | AvatarInfo, audio: np.ndarray | Iterable[np.ndarray],
                   chunk_ms: float = 32.0, realtime: bool = True, options: Mapping[str, Any] | None = None,
                   timeout_s: float | None = None) -> Iterator[StreamEvent]:
        """Stream speech as a live microphone would, on one gRPC stream, and yield every event back.

        `audio`: a recording (mono float32 at media.INPUT_SAMPLE_RATE), sent in `chunk_ms` chunks paced at
        real time when `realtime` (else as fast as possible); or an iterable of such chunks (a live
        microphone, client.mic: its own pace). The server's voice activity detection sends `vad` events
        (speech_start, turn_end) and, at each turn's end, the reply's events (transcript, text, audio, video,
        done) on the request that ended the turn; speech during a reply interrupts it (its `done` says
        "barge_in"). The last chunk says `end_of_input`: a turn still open then ends without waiting for
        silence (its turn_end event has "end_of_input": true). Ends when all audio is sent and every request
        has its final response; `timeout_s` bounds the whole stream (default: turn_timeout_s plus the audio).
        """
        avatar_id = _avatar(avatar_id)
        step = max(1, int(round(chunk_ms * media.INPUT_SAMPLE_RATE / 1000)))
        if isinstance(audio, np.ndarray):
            a = np.asarray(audio, dtype=np.float32).reshape(-1)
            chunks: Iterable[np.ndarray] = (a[i:i + step] for i in range(0, a.size, step))
            pace_s = step / media.INPUT_SAMPLE_RATE if realtime else 0.0
            seconds = a.size / media.INPUT_SAMPLE_RATE
        else:
            chunks, pace_s, seconds = audio, 0.0, 3600.0
        base = {**dict(options or {}), "action": "mic", "session": session, "session_token": self.session_token}
        fixed = [infer_input(TALKING_HEAD, TH_AVATAR_ID, [avatar_id]),
                 infer_input(TALKING_HEAD, TH_SAMPLE_RATE, [media.INPUT_SAMPLE_RATE])]

        def requests() -> Iterator[list[grpcclient.InferInput]]:
            pending = None
            for chunk in chunks:
                if pending is not None:
                    yield mic_inputs(pending, base, fixed, last=False)
                pending = np.asarray(chunk, dtype=np.float32).reshape(-1)
            if pending is not None:
                yield mic_inputs(pending, base, fixed, last=True)

        total = self.turn_timeout_s + seconds if timeout_s is None else float(timeout_s)
        return self._run_stream(requests(), uuid.uuid4().hex, total, pace_s)

    def turn(self, *, retry: RetryPolicy | None = None, **ask_kwargs: Any) -> TurnResult:
        """`ask(...)` and collect the whole turn into a `TurnResult`.

        retry: retry a turn the server refused as busy/shutting down before sending any event
        (client.retry); a turn that delivered content is never repeated.
        """
        if retry is not None:
            retry.record_first_attempt()
        attempt = 1
        while True:
            collector = TurnCollector(clock=self.clock)
            try:
                return collector.collect(self.ask(**ask_kwargs))
            except ServerError as e:
                if (retry is None or collector.delivered or not is_retryable_refusal(e.message)
                        or attempt >= retry.max_attempts or not retry.try_spend()):
                    raise
                retry.backoff(attempt)
                attempt += 1

    def _run_stream(self, requests: Iterator[list[grpcclient.InferInput]], stream_id: str, timeout_s: float,
                    pace_s: float) -> Iterator[StreamEvent]:
        """Send many requests on one stream (a sender thread, one every `pace_s`), yield their events."""
        clock = self.clock
        stream = self._streams.acquire()
        stop = threading.Event()
        sent = {"n": 0, "done": False, "error": None}

        def send(responses: queue.SimpleQueue) -> None:
            t0 = time.monotonic()
            try:
                for k, inputs in enumerate(requests):
                    time.sleep(max(0.0, t0 + k * pace_s - time.monotonic()))
                    if stop.is_set():
                        break
                    stream.send(inputs, f"{stream_id}-{k}")
                    sent["n"] += 1
            except Exception as e:  # the stream broke: the reason also comes through the callback
                sent["error"] = e
            finally:
                sent["done"] = True
                responses.put(None)  # wake the reader

        clean = False
        try:
            try:
                responses = stream.listen()
            except InferenceServerException as e:
                raise translate_error(e, self.url) from None
            sent_at = clock()
            threading.Thread(target=send, args=(responses,), name=f"mic-{stream_id[:8]}", daemon=True).start()
            deadline = time.monotonic() + timeout_s
            finals = 0
            while not (sent["done"] and finals >= sent["n"]):
                try:
                    item = responses.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TurnTimeout(f"{TALKING_HEAD.name} stream {stream_id} did not finish within "
                                      f"{timeout_s:g} s") from None
                if item is None:
                    if isinstance(sent["error"], InferenceServerException):
                        raise translate_error(sent["error"], self.url)
                    continue
                received_at, result, error = item
                if error is not None:
                    raise translate_error(error, self.url)
                finals += is_final_response(result)
                rid = result.get_response().id
                event = event_from_result(result, sent_at=sent_at, received_at=received_at, request_id=rid)
                if event is not None:
                    yield event
            clean = True
        finally:
            stop.set()
            self._streams.release(stream, clean, reuse=False)  # a sender still running must not reach a later stream

    def _run_turn(self, inputs: list[grpcclient.InferInput], request_id: str,
                  timeout_s: float, expect_done: bool = True) -> Iterator[StreamEvent]:
        stream = self._streams.acquire()
        clean = False  # True once the final response arrived: the stream stays open, else it is cancelled
        reuse = True
        n_events, last_type = 0, None
        try:
            try:
                responses = stream.listen()
            except InferenceServerException as e:
                raise translate_error(e, self.url) from None
            sent_at = self.clock()
            deadline = time.monotonic() + timeout_s
            try:
                stream.send(inputs, request_id)
            except InferenceServerException as e:
                # The stream already failed; the reason came through the callback.
                try:
                    _, _, error = responses.get(timeout=1.0)
                    e = error or e
                except queue.Empty:
                    pass
                raise translate_error(e, self.url) from None
            saw_done = False
            while True:
                try:
                    received_at, result, error = responses.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TurnTimeout(f"{TALKING_HEAD.name} turn {request_id} did not finish within {timeout_s:g} s "
                                      f"({n_events} events received, last: {last_type})") from None
                if error is not None:
                    if error.status() is not None:  # the RPC itself failed: a new client next turn
                        reuse = False
                    else:  # the server's error answer, sent as the turn's final response: nothing left to cancel
                        clean = True
                    raise translate_error(error, self.url)
                if not answers(result, request_id):
                    continue  # an earlier turn's, late on this kept stream
                final = is_final_response(result)
                event = event_from_result(result, sent_at=sent_at, received_at=received_at, request_id=request_id)
                if event is not None:
                    n_events, last_type = n_events + 1, event.type
                    saw_done = saw_done or event.type == ev.DONE
                if final:
                    clean = True
                if event is not None:
                    yield event  # a consumer that stops here gets GeneratorExit: finally cancels
                if final:
                    break
            if expect_done and not saw_done:
                raise ProtocolError(f"{TALKING_HEAD.name} turn {request_id} ended without a '{ev.DONE}' event "
                                    f"({n_events} events, last: {last_type})")
        finally:
            self._streams.release(stream, clean, reuse)


def _avatar(avatar_id: str | AvatarInfo) -> str:
    return avatar_id.id if isinstance(avatar_id, AvatarInfo) else avatar_id
