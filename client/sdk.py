"""A thin SDK for the talking-head service on `tritonclient.grpc`.

    from client.sdk import TalkingHeadClient, collect

    with TalkingHeadClient("localhost:8001") as th:
        avatar = th.register_avatar(open("face.jpg", "rb").read())
        for event in th.ask(avatar_id=avatar.id, text="Hello!"):
            ...                                   # ensemble.events.Event, as it arrives
        result = th.turn(avatar_id=avatar.id, text="Hello!")   # or: collect(th.ask(...))
        print(result.reply, result.time_to_first_audio_s, result.underrun)

Tensor and model names come from `export.spec` (TALKING_HEAD, AVATAR_REGISTRY);
the event protocol is `ensemble.events`.

One `ask` is one user turn: a gRPC bidirectional stream carrying one request to
the decoupled `talking_head` model, opened with `enable_empty_final_response`
so the end of the turn is the response whose `triton_final_response` parameter
is true. A `TalkingHeadClient` may run several turns at once from different
threads: each turn takes its own `InferenceServerClient` (tritonclient allows
one stream per client) from a small pool of idle ones.

Errors: `ConnectionFailed` (Triton unreachable), `ServerError` (the server's
message, verbatim), `ProtocolError` (a response that breaks the event
protocol; a `ServerError`), `TurnTimeout` (the turn did not finish in time).
All derive from `ClientError`.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.retry import RetryPolicy, is_retryable_refusal
from ensemble import events as ev
from ensemble.events import Event
from export import contract
from export.spec import AVATAR_REGISTRY, TALKING_HEAD, ModelSpec, Tensor

log = logging.getLogger(__name__)

DEFAULT_URL = "localhost:8001"
DEFAULT_TURN_TIMEOUT_S = 120.0  # a whole turn, from sending the request to the final response
DEFAULT_REQUEST_TIMEOUT_S = 30.0  # unary calls: register_avatar, health checks
FINAL_RESPONSE_PARAM = "triton_final_response"  # set by Triton with enable_empty_final_response

Clock = Callable[[], float]


# ---------------------------------------------------------------- tensors, from the specs only

def _lookup(spec: ModelSpec, tensors: tuple[Tensor, ...], key: str) -> Tensor:
    for t in tensors:
        if t.name == key:
            return t
    raise ImportError(f"export.spec.{spec.name.upper()} has no tensor {key!r}: update client/sdk.py to the spec")


TH_AUDIO = _lookup(TALKING_HEAD, TALKING_HEAD.inputs, "audio")
TH_SAMPLE_RATE = _lookup(TALKING_HEAD, TALKING_HEAD.inputs, "sample_rate")
TH_TEXT = _lookup(TALKING_HEAD, TALKING_HEAD.inputs, "text")
TH_AVATAR_ID = _lookup(TALKING_HEAD, TALKING_HEAD.inputs, "avatar_id")
TH_OPTIONS = _lookup(TALKING_HEAD, TALKING_HEAD.inputs, "options")
TH_EVENT = _lookup(TALKING_HEAD, TALKING_HEAD.outputs, "event")
TH_AUDIO_CHUNK = _lookup(TALKING_HEAD, TALKING_HEAD.outputs, "audio_chunk")
TH_FRAME = _lookup(TALKING_HEAD, TALKING_HEAD.outputs, "frame")
AR_IMAGE = _lookup(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs, "image")
AR_AVATAR_ID = _lookup(AVATAR_REGISTRY, AVATAR_REGISTRY.outputs, "avatar_id")
AR_FACE_BOX = _lookup(AVATAR_REGISTRY, AVATAR_REGISTRY.outputs, "face_box")
AR_MESSAGE = _lookup(AVATAR_REGISTRY, AVATAR_REGISTRY.outputs, "message")


def _infer_input(spec: ModelSpec, tensor: Tensor, value: Any) -> grpcclient.InferInput:
    """An InferInput named and typed by the spec (a batch axis of 1 added if the model batches)."""
    if tensor.dtype == "BYTES":
        arr = np.array([v.encode() if isinstance(v, str) else bytes(v) for v in np.ravel(value)], dtype=object)
    else:
        arr = np.ascontiguousarray(value, dtype=tensor.numpy_dtype).reshape(-1)
    if spec.batched:
        arr = arr[None]
    inp = grpcclient.InferInput(tensor.name, list(arr.shape), tensor.dtype)
    inp.set_data_from_numpy(arr)
    return inp


def _as_bytes(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, np.ndarray):
        return x.tobytes()
    return bytes(x)


def _first(arr: np.ndarray | None) -> Any:
    return None if arr is None or arr.size == 0 else arr.reshape(-1)[0]


# ---------------------------------------------------------------- errors

class ClientError(Exception):
    """Base class of everything this SDK raises on purpose."""


class ServerError(ClientError):
    """The server answered with an error; `message` is the server's text, verbatim."""

    def __init__(self, message: str, *, status: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status  # gRPC status name ("StatusCode.INVALID_ARGUMENT") for call-level errors


class ProtocolError(ServerError):
    """A response that does not follow the event protocol (ensemble.events)."""


class ConnectionFailed(ClientError, ConnectionError):
    """Triton could not be reached."""

    def __init__(self, url: str, detail: str):
        super().__init__(f"cannot reach Triton at {url}: {detail}")
        self.url = url
        self.detail = detail


class TurnTimeout(ClientError, TimeoutError):
    """A turn did not end (final response) within its timeout."""


_CONNECT_HINTS = ("failed to connect", "connection refused", "dns resolution failed", "name resolution",
                  "errors resolving", "lookup error", "domain name not found",
                  "connections to all backends failing", "socket closed", "connection reset",
                  "no route to host", "network is unreachable", "handshake failed", "ssl")


def _is_connection_error(exc: InferenceServerException) -> bool:
    status = str(exc.status() or "")
    msg = str(exc.message() or "").lower()
    return status.endswith("UNAVAILABLE") and any(h in msg for h in _CONNECT_HINTS)


def _translate(exc: InferenceServerException, url: str) -> ClientError:
    if _is_connection_error(exc):
        return ConnectionFailed(url, str(exc.message()))
    return ServerError(str(exc.message()), status=exc.status())


# ---------------------------------------------------------------- events with client timestamps

@dataclass
class StreamEvent(Event):
    """An `ensemble.events.Event` as `ask` yields it, stamped with the client's clock."""

    sent_at: float | None = None  # clock() just before this turn's request was sent
    received_at: float | None = None  # clock() when this response arrived (on the gRPC thread)
    request_id: str = ""

    @property
    def latency_s(self) -> float | None:
        """Seconds from sending the request to receiving this event."""
        if self.sent_at is None or self.received_at is None:
            return None
        return self.received_at - self.sent_at


def is_final_response(result: grpcclient.InferResult) -> bool:
    """Whether Triton flagged this stream response as the last of its request."""
    params = result.get_response().parameters
    return FINAL_RESPONSE_PARAM in params and params[FINAL_RESPONSE_PARAM].bool_param


def event_from_result(result: grpcclient.InferResult, *, sent_at: float | None = None,
                      received_at: float | None = None, request_id: str = "") -> StreamEvent | None:
    """The event of one `talking_head` response, with its audio chunk / JPEG frame attached.

    None for a response without an `event` output (the empty final response) or
    with an event type this client does not know (logged and skipped).
    """
    raw = _first(result.as_numpy(TH_EVENT.name))
    if raw is None:
        return None
    audio = result.as_numpy(TH_AUDIO_CHUNK.name)
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    frame = result.as_numpy(TH_FRAME.name)
    if frame is not None:
        frame = _as_bytes(frame) if frame.dtype != object else _as_bytes(_first(frame))
    try:
        base = Event.from_json(_as_bytes(raw), audio=audio, frame=frame)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"malformed event JSON from {TALKING_HEAD.name}: {e}: {_as_bytes(raw)[:200]!r}") from None
    except (KeyError, ValueError, TypeError) as e:
        log.warning("skipping an event this client does not understand (%s): %.200r", e, _as_bytes(raw))
        return None
    return StreamEvent(base.type, base.data, audio=base.audio, frame=base.frame,
                       sent_at=sent_at, received_at=received_at, request_id=request_id)


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
    """

    def __init__(self, url: str = DEFAULT_URL, ssl: bool = False, *, root_certificates: str | None = None,
                 private_key: str | None = None, certificate_chain: str | None = None,
                 turn_timeout_s: float = DEFAULT_TURN_TIMEOUT_S,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 clock: Clock = time.perf_counter, verbose: bool = False):
        if url.startswith("grpc://"):
            url = url[len("grpc://"):]
        self.url = url
        self.turn_timeout_s = turn_timeout_s
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self._client_kwargs = dict(url=url, verbose=verbose, ssl=ssl, root_certificates=root_certificates,
                                   private_key=private_key, certificate_chain=certificate_chain)
        self._lock = threading.Lock()
        self._idle: list[grpcclient.InferenceServerClient] = []  # stream clients between turns
        self._closed = False
        self._unary = self._new_grpc_client()

    # -- lifetime

    def _new_grpc_client(self) -> grpcclient.InferenceServerClient:
        try:
            return grpcclient.InferenceServerClient(**self._client_kwargs)
        except InferenceServerException as e:
            raise ConnectionFailed(self.url, str(e.message())) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for c in idle + [self._unary]:
            try:
                c.close()
            except Exception:  # closing is best effort
                log.debug("closing a gRPC client failed", exc_info=True)

    def __enter__(self) -> TalkingHeadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire(self) -> grpcclient.InferenceServerClient:
        with self._lock:
            if self._closed:
                raise ClientError("TalkingHeadClient is closed")
            if self._idle:
                return self._idle.pop()
        return self._new_grpc_client()

    def _release(self, c: grpcclient.InferenceServerClient, reusable: bool) -> None:
        with self._lock:
            if reusable and not self._closed:
                self._idle.append(c)
                return
        try:
            c.close()
        except Exception:
            log.debug("closing a gRPC client failed", exc_info=True)

    # -- health

    def check_connection(self, models: Iterable[str] = (TALKING_HEAD.name, AVATAR_REGISTRY.name),
                         timeout_s: float | None = 5.0) -> None:
        """Raise `ConnectionFailed` if Triton is unreachable, `ServerError` if a model is not ready."""
        try:
            if not self._unary.is_server_live(client_timeout=timeout_s):
                raise ConnectionFailed(self.url, "the server is not live")
            for name in models:
                if not self._unary.is_model_ready(name, client_timeout=timeout_s):
                    raise ServerError(f"model {name!r} is not ready on Triton at {self.url}")
        except InferenceServerException as e:
            if str(e.status() or "").endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
                raise ConnectionFailed(self.url, str(e.message())) from None
            raise _translate(e, self.url) from None

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
        inputs = [_infer_input(AVATAR_REGISTRY, AR_IMAGE, [bytes(image)])]
        outputs = [grpcclient.InferRequestedOutput(t.name) for t in AVATAR_REGISTRY.outputs]
        try:
            result = self._unary.infer(AVATAR_REGISTRY.name, inputs, outputs=outputs,
                                       client_timeout=timeout_s or self.request_timeout_s)
        except InferenceServerException as e:
            raise _translate(e, self.url) from None
        avatar_id = _first(result.as_numpy(AR_AVATAR_ID.name))
        box = result.as_numpy(AR_FACE_BOX.name)
        message = _first(result.as_numpy(AR_MESSAGE.name))
        if avatar_id is None or box is None or box.size != 4:
            raise ProtocolError(f"{AVATAR_REGISTRY.name} returned no avatar id / face box")
        return AvatarInfo(id=_as_bytes(avatar_id).decode(), face_box=tuple(int(v) for v in box.reshape(-1)),
                          message="" if message is None else _as_bytes(message).decode())

    # -- talking_head

    def ask(self, *, avatar_id: str | AvatarInfo, text: str | None = None, audio: np.ndarray | None = None,
            sample_rate: int | None = None, options: Mapping[str, Any] | str | bytes | None = None,
            timeout_s: float | None = None, request_id: str | None = None) -> TurnStream:
        """One user turn: send speech (`audio`, mono float32) or `text`, iterate the reply's events.

        sample_rate defaults to contract.INPUT_SAMPLE_RATE; other rates are sent as
        given (and refused by the server). options: a JSON object (a dict, or its
        JSON text), see ensemble.options. timeout_s bounds the whole turn (default:
        the client's turn_timeout_s). Arguments are checked now; the request goes
        out on the first `next()`.
        """
        if (text is None) == (audio is None):
            raise ValueError("give exactly one of text= or audio=")
        if isinstance(avatar_id, AvatarInfo):
            avatar_id = avatar_id.id
        inputs = []
        if audio is not None:
            a = np.asarray(audio, dtype=np.float32)
            if a.ndim != 1:
                if a.ndim == 0 or sorted(a.shape)[-2] != 1:
                    raise ValueError(f"audio must be mono (1-D), got shape {a.shape}")
                a = a.reshape(-1)
            rate = contract.INPUT_SAMPLE_RATE if sample_rate is None else int(sample_rate)
            inputs += [_infer_input(TALKING_HEAD, TH_AUDIO, a), _infer_input(TALKING_HEAD, TH_SAMPLE_RATE, [rate])]
        else:
            if sample_rate is not None:
                raise ValueError("sample_rate= goes with audio=, not text=")
            inputs.append(_infer_input(TALKING_HEAD, TH_TEXT, [text]))
        inputs.append(_infer_input(TALKING_HEAD, TH_AVATAR_ID, [avatar_id]))
        if options is not None:
            if isinstance(options, Mapping):
                options = json.dumps(dict(options), separators=(",", ":"))
            inputs.append(_infer_input(TALKING_HEAD, TH_OPTIONS, [options]))
        rid = request_id or uuid.uuid4().hex
        timeout = self.turn_timeout_s if timeout_s is None else float(timeout_s)
        return TurnStream(self._run_turn(inputs, rid, timeout), rid)

    def idle(self, *, avatar_id: str | AvatarInfo, seconds: float, session: str | None = None,
             options: Mapping[str, Any] | None = None) -> TurnStream:
        """Idle-motion frames of the avatar for `seconds`, paced in real time (while the user speaks or thinks).

        With a `session`, a new turn of that session stops the idle stream (as it stops a reply)."""
        return self._action("idle", avatar_id, {**dict(options or {}), "idle_s": seconds,
                                                **({"session": session} if session else {})},
                            timeout_s=self.turn_timeout_s + seconds)

    def prerender(self, *, avatar_id: str | AvatarInfo, text: str | None = None,
                  options: Mapping[str, Any] | None = None) -> list[str]:
        """Render the server's cached exchanges (or the one `text`) for this avatar and voice (`options`:
        speed, pitch, ...) into its answer cache; returns the phrases rendered now."""
        events = list(self._action("prerender", avatar_id, dict(options or {}), text=text,
                                   timeout_s=self.turn_timeout_s * 4))
        return list(events[-1].data.get("prerendered", []))

    def _action(self, action: str, avatar_id: str | AvatarInfo, options: dict[str, Any], *, text: str | None = None,
                timeout_s: float) -> TurnStream:
        if isinstance(avatar_id, AvatarInfo):
            avatar_id = avatar_id.id
        inputs = [_infer_input(TALKING_HEAD, TH_AVATAR_ID, [avatar_id]),
                  _infer_input(TALKING_HEAD, TH_OPTIONS, [json.dumps({**options, "action": action})])]
        if text is not None:
            inputs.append(_infer_input(TALKING_HEAD, TH_TEXT, [text]))
        rid = uuid.uuid4().hex
        return TurnStream(self._run_turn(inputs, rid, timeout_s), rid)

    def cancel(self, session: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop the reply in flight of conversation `session` (barge-in without a new turn).

        Returns the server's `cancelled` event data: `interrupted_turn` is the stopped turn's id, or
        None when the session had no reply in flight. The stopped turn's own stream ends with a
        `done` event whose `interrupted` is "cancel".
        """
        options = json.dumps({"action": "cancel", "session": session})
        inputs = [_infer_input(TALKING_HEAD, TH_OPTIONS, [options])]
        timeout = self.request_timeout_s if timeout_s is None else float(timeout_s)
        for event in self._run_turn(inputs, uuid.uuid4().hex, timeout, expect_done=False):
            if event.type == ev.CANCELLED:
                return dict(event.data)
        raise ProtocolError(f"{TALKING_HEAD.name} answered a cancel without a '{ev.CANCELLED}' event")

    def microphone(self, *, session: str, avatar_id: str | AvatarInfo, audio: np.ndarray, chunk_ms: float = 32.0,
                   realtime: bool = True, options: Mapping[str, Any] | None = None,
                   timeout_s: float | None = None) -> Iterator[StreamEvent]:
        """Stream speech as a live microphone would, on one gRPC stream, and yield every event back.

        `audio` (mono float32 at contract.INPUT_SAMPLE_RATE) goes out in `chunk_ms` chunks, paced
        at real time when `realtime` (else as fast as possible). The server's voice activity
        detection sends `vad` events (speech_start, turn_end) and, at each turn's end, the reply's
        events (transcript, text, audio, video, done) on the request that ended the turn; speech
        during a reply interrupts it (its `done` says "barge_in"). Ends when all audio is sent and
        every request has its final response; `timeout_s` bounds the whole stream.
        """
        if isinstance(avatar_id, AvatarInfo):
            avatar_id = avatar_id.id
        a = np.asarray(audio, dtype=np.float32).reshape(-1)
        step = max(1, int(round(chunk_ms * contract.INPUT_SAMPLE_RATE / 1000)))
        opts = json.dumps({**dict(options or {}), "action": "mic", "session": session})
        fixed = [_infer_input(TALKING_HEAD, TH_AVATAR_ID, [avatar_id]), _infer_input(TALKING_HEAD, TH_OPTIONS, [opts]),
                 _infer_input(TALKING_HEAD, TH_SAMPLE_RATE, [contract.INPUT_SAMPLE_RATE])]
        requests = ([_infer_input(TALKING_HEAD, TH_AUDIO, a[i:i + step])] + fixed for i in range(0, a.size, step))
        pace_s = step / contract.INPUT_SAMPLE_RATE if realtime else 0.0
        total = self.turn_timeout_s + a.size / contract.INPUT_SAMPLE_RATE if timeout_s is None else float(timeout_s)
        return self._run_stream(requests, uuid.uuid4().hex, total, pace_s)

    def turn(self, *, retry: RetryPolicy | None = None, **ask_kwargs: Any) -> TurnResult:
        """`ask(...)` and collect the whole turn into a `TurnResult`.

        retry: retry a turn the server refused as busy/shutting down before sending any event
        (client.retry); a turn that delivered content is never repeated.
        """
        if retry is not None:
            retry.record_first_attempt()
        attempt = 1
        while True:
            collector = Turn(clock=self.clock)
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
        responses: queue.SimpleQueue = queue.SimpleQueue()
        grpc_client = self._acquire()
        stop = threading.Event()
        sent = {"n": 0, "done": False, "error": None}

        def send() -> None:
            t0 = time.monotonic()
            try:
                for k, inputs in enumerate(requests):
                    if stop.is_set():
                        break
                    time.sleep(max(0.0, t0 + k * pace_s - time.monotonic()))
                    grpc_client.async_stream_infer(TALKING_HEAD.name, inputs, request_id=f"{stream_id}-{k}",
                                                   enable_empty_final_response=True)
                    sent["n"] += 1
            except Exception as e:  # the stream broke: the reason also comes through the callback
                sent["error"] = e
            finally:
                sent["done"] = True
                responses.put(None)  # wake the reader

        clean = False
        try:
            try:
                grpc_client.start_stream(callback=lambda result, error: responses.put((clock(), result, error)))
            except InferenceServerException as e:
                raise _translate(e, self.url) from None
            sent_at = clock()
            sender = threading.Thread(target=send, name=f"mic-{stream_id[:8]}", daemon=True)
            sender.start()
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
                        raise _translate(sent["error"], self.url)
                    continue
                received_at, result, error = item
                if error is not None:
                    raise _translate(error, self.url)
                finals += is_final_response(result)
                rid = result.get_response().id
                event = event_from_result(result, sent_at=sent_at, received_at=received_at, request_id=rid)
                if event is not None:
                    yield event
            clean = True
        finally:
            stop.set()
            try:
                grpc_client.stop_stream(cancel_requests=not clean)
            except Exception:
                log.debug("stop_stream failed", exc_info=True)
            self._release(grpc_client, reusable=False)

    def _run_turn(self, inputs: list[grpcclient.InferInput], request_id: str,
                  timeout_s: float, expect_done: bool = True) -> Iterator[StreamEvent]:
        clock = self.clock
        responses: queue.SimpleQueue = queue.SimpleQueue()

        def on_response(result: grpcclient.InferResult | None, error: InferenceServerException | None) -> None:
            responses.put((clock(), result, error))

        grpc_client = self._acquire()
        clean = False  # True once the final response arrived: stop gracefully, else cancel
        reusable = True
        n_events, last_type = 0, None
        try:
            try:
                grpc_client.start_stream(callback=on_response)
            except InferenceServerException as e:
                raise _translate(e, self.url) from None
            sent_at = clock()
            deadline = time.monotonic() + timeout_s
            try:
                grpc_client.async_stream_infer(TALKING_HEAD.name, inputs, request_id=request_id,
                                               enable_empty_final_response=True)
            except InferenceServerException as e:
                # The stream already failed; the reason came through the callback.
                try:
                    _, _, error = responses.get(timeout=1.0)
                    e = error or e
                except queue.Empty:
                    pass
                raise _translate(e, self.url) from None
            saw_done = False
            while True:
                try:
                    received_at, result, error = responses.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TurnTimeout(f"{TALKING_HEAD.name} turn {request_id} did not finish within {timeout_s:g} s "
                                      f"({n_events} events received, last: {last_type})") from None
                if error is not None:
                    if error.status() is not None:  # the RPC itself failed: start afresh next turn
                        reusable = False
                    raise _translate(error, self.url)
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
            try:
                grpc_client.stop_stream(cancel_requests=not clean)
            except Exception:
                reusable = False
                log.debug("stop_stream failed", exc_info=True)
            self._release(grpc_client, reusable)


# ---------------------------------------------------------------- collecting a turn

@dataclass
class PlaybackStats:
    """A player that starts at the first audio chunk's arrival and stalls when it runs dry."""

    max_gap_s: float | None  # largest time between two consecutive audio chunks' arrivals
    underruns: int  # how many times the player would stall
    stall_s: float  # total stalled time
    min_prebuffer_s: float  # start delay after the first chunk that would avoid every stall


_EPS = 1e-9


def playback_stats(arrivals: list[float], durations: list[float]) -> PlaybackStats:
    """Underruns of real-time playback of chunks (in arrival order) started when the first arrives."""
    if not arrivals:
        return PlaybackStats(None, 0, 0.0, 0.0)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    start = arrivals[0]
    played_until = start  # when the player runs out of what it has
    cum = 0.0  # audio before chunk k, seconds
    underruns, stall, prebuffer = 0, 0.0, 0.0
    for t, d in zip(arrivals, durations):
        prebuffer = max(prebuffer, t - (start + cum))
        if t > played_until + _EPS and cum > 0:
            underruns += 1
            stall += t - played_until
            played_until = t
        played_until += d
        cum += d
    return PlaybackStats(max(gaps) if gaps else None, underruns, stall, max(0.0, prebuffer))


@dataclass
class TurnResult:
    """One turn, collected: what was said and heard, and how fast it came (client clock, seconds
    from just before the request was sent)."""

    transcript: str | None  # what ASR heard (or the done event's transcript)
    reply: str  # the reply text (the done event's, else the streamed deltas)
    audio: np.ndarray = field(repr=False)  # float32 PCM, all chunks placed at their start_sample
    sample_rate: int
    frames: list[bytes] = field(repr=False)  # JPEG, in frame order
    frame_indices: list[int] = field(repr=False)  # each frame's slot on the 25 fps clock (gaps: dropped slots)
    events: list[Event] = field(repr=False)
    done: dict[str, Any] | None = field(repr=False)  # the done event's data (server timings_ms, ...)
    request_id: str = ""
    time_to_transcript_s: float | None = None
    time_to_first_text_s: float | None = None
    time_to_first_audio_s: float | None = None  # TTFA
    time_to_first_frame_s: float | None = None  # TTFF
    total_s: float | None = None  # to the done event (else the last event)
    max_audio_gap_s: float | None = None
    underrun_count: int = 0
    stall_s: float = 0.0
    min_prebuffer_s: float = 0.0

    @property
    def audio_s(self) -> float:
        return self.audio.size / self.sample_rate if self.sample_rate else 0.0

    @property
    def real_time_factor(self) -> float | None:
        """Total time / audio duration (< 1: the answer came faster than it plays)."""
        if self.total_s is None or self.audio_s <= 0:
            return None
        return self.total_s / self.audio_s

    @property
    def underrun(self) -> bool:
        """Whether audio played from its first chunk on would stall."""
        return self.underrun_count > 0

    @property
    def video_s(self) -> float:
        return len(self.frames) / contract.VIDEO_FPS

    @property
    def server_timings_ms(self) -> dict[str, Any]:
        return dict((self.done or {}).get("timings_ms") or {})

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (seconds) and texts."""
        return {
            "request_id": self.request_id,
            "transcript": self.transcript,
            "reply": self.reply,
            "time_to_transcript_s": self.time_to_transcript_s,
            "time_to_first_text_s": self.time_to_first_text_s,
            "time_to_first_audio_s": self.time_to_first_audio_s,
            "time_to_first_frame_s": self.time_to_first_frame_s,
            "total_s": self.total_s,
            "audio_s": self.audio_s,
            "real_time_factor": self.real_time_factor,
            "frames": len(self.frames),
            "max_audio_gap_s": self.max_audio_gap_s,
            "playback_underrun": self.underrun,
            "underrun_count": self.underrun_count,
            "stall_s": self.stall_s,
            "min_prebuffer_s": self.min_prebuffer_s,
            "server_timings_ms": self.server_timings_ms,
        }

    def format_table(self) -> str:
        def s(x: float | None) -> str:
            return "-" if x is None else f"{x:8.3f} s"

        rtf = self.real_time_factor
        rows = [
            ("time to first text", s(self.time_to_first_text_s)),
            ("first audio chunk (TTFA)", s(self.time_to_first_audio_s)),
            ("first video frame (TTFF)", s(self.time_to_first_frame_s)),
            ("total", s(self.total_s)),
            ("audio", s(self.audio_s)),
            ("real-time factor", "-" if rtf is None else f"{rtf:8.3f}"),
            ("frames", f"{len(self.frames):8d}"),
            ("largest audio gap", s(self.max_audio_gap_s)),
            ("playback underrun", (f"yes: {self.underrun_count} stall(s), {self.stall_s:.3f} s; "
                                   f"prebuffer {self.min_prebuffer_s:.3f} s avoids it")
             if self.underrun else f"{'no':>8}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class Turn:
    """Collects the events of one turn into a `TurnResult`.

    Latencies count from `t0`: the one given here, else the events' `sent_at`
    (stamped by `ask` just before the request goes out), else the clock read by
    `start()` (`collect` calls it just before pulling the first event). Arrival
    times are the events' `received_at`, or the clock when `add` sees them.

        turn = Turn()
        for e in client.ask(...):
            turn.add(e); ...           # e.g. print the text as it streams
        result = turn.result()
    """

    def __init__(self, *, clock: Clock = time.perf_counter, t0: float | None = None):
        self.clock = clock
        self.t0 = t0
        self._t0_given = t0 is not None
        self._records: list[tuple[float, Event]] = []

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = self.clock()

    def add(self, event: Event) -> None:
        t = getattr(event, "received_at", None)
        if t is None:
            t = self.clock()
        sent = getattr(event, "sent_at", None)
        if sent is not None and not self._t0_given:
            self.t0 = sent
        elif self.t0 is None:
            self.t0 = t
        self._records.append((t, event))

    @property
    def delivered(self) -> bool:
        """Whether any event of the turn reached the client (content was delivered)."""
        return bool(self._records)

    def collect(self, events: Iterable[Event]) -> TurnResult:
        self.start()
        for e in events:
            self.add(e)
        return self.result()

    def result(self) -> TurnResult:
        t0 = self.t0 if self.t0 is not None else 0.0

        def first(kind: str) -> float | None:
            return next((t - t0 for t, e in self._records if e.type == kind), None)

        transcript = next((e.data.get("text") for _, e in self._records if e.type == ev.TRANSCRIPT), None)
        deltas = "".join(str(e.data.get("delta", "")) for _, e in self._records if e.type == ev.TEXT)
        done_t, done = next(((t, e.data) for t, e in self._records if e.type == ev.DONE), (None, None))
        if done is not None:
            if transcript is None and done.get("transcript") is not None:
                transcript = done["transcript"]
            reply = done["reply"] if done.get("reply") is not None else deltas
        else:
            reply = deltas

        # Audio: chunks placed at start_sample (appended where it is missing).
        audio_recs = [(t, e) for t, e in self._records if e.type == ev.AUDIO]
        rate = next((int(e.data["sample_rate"]) for _, e in audio_recs if e.data.get("sample_rate")),
                    contract.OUTPUT_SAMPLE_RATE)
        placed: list[tuple[int, np.ndarray]] = []
        end = 0
        arrivals, durations = [], []
        for t, e in audio_recs:
            chunk = np.zeros(0, np.float32) if e.audio is None else np.asarray(e.audio, np.float32).reshape(-1)
            start = e.data.get("start_sample")
            start = end if start is None else int(start)
            placed.append((start, chunk))
            end = max(end, start + chunk.size)
            arrivals.append(t)
            durations.append(chunk.size / rate)
        audio = np.zeros(end, dtype=np.float32)
        for start, chunk in placed:
            audio[start:start + chunk.size] = chunk
        play = playback_stats(arrivals, durations)

        video = [e for _, e in self._records if e.type == ev.VIDEO and e.frame is not None]
        if all("index" in e.data for e in video):
            video.sort(key=lambda e: e.data["index"])

        last_t = done_t if done_t is not None else (self._records[-1][0] if self._records else None)
        return TurnResult(
            transcript=transcript, reply=reply, audio=audio, sample_rate=rate,
            frames=[e.frame for e in video], frame_indices=[int(e.data.get("index", i)) for i, e in enumerate(video)],
            events=[e for _, e in self._records], done=done,
            request_id=next((getattr(e, "request_id", "") for _, e in self._records), ""),
            time_to_transcript_s=first(ev.TRANSCRIPT), time_to_first_text_s=first(ev.TEXT),
            time_to_first_audio_s=first(ev.AUDIO), time_to_first_frame_s=first(ev.VIDEO),
            total_s=None if last_t is None else last_t - t0,
            max_audio_gap_s=play.max_gap_s, underrun_count=play.underruns, stall_s=play.stall_s,
            min_prebuffer_s=play.min_prebuffer_s,
        )


def collect(events: Iterable[Event], *, clock: Clock = time.perf_counter) -> TurnResult:
    """Collect a turn's events (e.g. `client.ask(...)`) into a `TurnResult`."""
    return Turn(clock=clock).collect(events)
