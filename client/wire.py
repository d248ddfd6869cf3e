"""What travels on the wire: request tensors built from the specs, the SDK's error classes (with Triton's
message kept verbatim), and response events stamped with client-side times."""
from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.contract.events import Event
from export.contract.spec import AVATAR_REGISTRY, TALKING_HEAD, ModelSpec, Tensor

log = logging.getLogger(__name__)
FINAL_RESPONSE_PARAM = "triton_final_response"  # set by Triton with enable_empty_final_response


# ---------------------------------------------------------------- tensors, from the specs only

def spec_tensor(spec: ModelSpec, tensors: tuple[Tensor, ...], key: str) -> Tensor:
    for t in tensors:
        if t.name == key:
            return t
    raise ImportError(f"export.contract.spec.{spec.name.upper()} has no tensor {key!r}: update client/sdk.py to the spec")


TH_AUDIO = spec_tensor(TALKING_HEAD, TALKING_HEAD.inputs, "audio")
TH_SAMPLE_RATE = spec_tensor(TALKING_HEAD, TALKING_HEAD.inputs, "sample_rate")
TH_TEXT = spec_tensor(TALKING_HEAD, TALKING_HEAD.inputs, "text")
TH_AVATAR_ID = spec_tensor(TALKING_HEAD, TALKING_HEAD.inputs, "avatar_id")
TH_OPTIONS = spec_tensor(TALKING_HEAD, TALKING_HEAD.inputs, "options")
TH_EVENT = spec_tensor(TALKING_HEAD, TALKING_HEAD.outputs, "event")
TH_AUDIO_CHUNK = spec_tensor(TALKING_HEAD, TALKING_HEAD.outputs, "audio_chunk")
TH_FRAME = spec_tensor(TALKING_HEAD, TALKING_HEAD.outputs, "frame")
AR_IMAGE = spec_tensor(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs, "image")
AR_AVATAR_ID = spec_tensor(AVATAR_REGISTRY, AVATAR_REGISTRY.outputs, "avatar_id")
AR_FACE_BOX = spec_tensor(AVATAR_REGISTRY, AVATAR_REGISTRY.outputs, "face_box")
AR_MESSAGE = spec_tensor(AVATAR_REGISTRY, AVATAR_REGISTRY.outputs, "message")


def infer_input(spec: ModelSpec, tensor: Tensor, value: Any) -> grpcclient.InferInput:
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


def as_bytes(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, np.ndarray):
        return x.tobytes()
    return bytes(x)


def first_value(arr: np.ndarray | None) -> Any:
    return None if arr is None or arr.size == 0 else arr.reshape(-1)[0]


# ---------------------------------------------------------------- requests (shared by client.sdk and client.aio)

def turn_inputs(*, avatar_id: str, text: str | None = None, audio: np.ndarray | None = None,
                sample_rate: int | None = None, options: Mapping[str, Any] | str | bytes | None = None
                ) -> list[grpcclient.InferInput]:
    """One user turn's request: speech (`audio`, mono float32) or `text`, the avatar, the options (checked here)."""
    from export.contract import media

    if (text is None) == (audio is None):
        raise ValueError("give exactly one of text= or audio=")
    inputs = []
    if audio is not None:
        a = np.asarray(audio, dtype=np.float32)
        if a.ndim != 1:
            if a.ndim == 0 or sorted(a.shape)[-2] != 1:
                raise ValueError(f"audio must be mono (1-D), got shape {a.shape}")
            a = a.reshape(-1)
        rate = media.INPUT_SAMPLE_RATE if sample_rate is None else int(sample_rate)
        inputs += [infer_input(TALKING_HEAD, TH_AUDIO, a), infer_input(TALKING_HEAD, TH_SAMPLE_RATE, [rate])]
    else:
        if sample_rate is not None:
            raise ValueError("sample_rate= goes with audio=, not text=")
        inputs.append(infer_input(TALKING_HEAD, TH_TEXT, [text]))
    inputs.append(infer_input(TALKING_HEAD, TH_AVATAR_ID, [avatar_id]))
    if options is not None:
        if isinstance(options, Mapping):
            options = json.dumps(dict(options), separators=(",", ":"))
        inputs.append(infer_input(TALKING_HEAD, TH_OPTIONS, [options]))
    return inputs


def action_inputs(action: str, avatar_id: str, options: Mapping[str, Any], *, text: str | None = None
                  ) -> list[grpcclient.InferInput]:
    inputs = [infer_input(TALKING_HEAD, TH_AVATAR_ID, [avatar_id]),
              infer_input(TALKING_HEAD, TH_OPTIONS, [json.dumps({**options, "action": action})])]
    if text is not None:
        inputs.append(infer_input(TALKING_HEAD, TH_TEXT, [text]))
    return inputs


def new_session_token() -> str:
    """A client's secret for its sessions: the server binds a session to the token of the request that opened it
    and refuses the session's requests with another one (ensemble/sessions.py)."""
    return secrets.token_urlsafe(24)


def owned(options: Mapping[str, Any] | str | bytes | None, token: str) -> Mapping[str, Any] | str | bytes | None:
    """`options` (a mapping or its JSON text) with `session_token` beside a `session`, unless one is there."""
    if options is None:
        return None
    try:
        data = json.loads(options) if isinstance(options, (str, bytes)) else dict(options)
    except ValueError:
        return options  # not JSON: the server says what is wrong with it
    if isinstance(data, dict) and "session" in data and "session_token" not in data:
        return {**data, "session_token": token}
    return options


def cancel_inputs(session: str, token: str) -> list[grpcclient.InferInput]:
    return [infer_input(TALKING_HEAD, TH_OPTIONS, [json.dumps({"action": "cancel", "session": session,
                                                               "session_token": token})])]


def mic_inputs(chunk: np.ndarray, options: dict, fixed: list, last: bool) -> list[grpcclient.InferInput]:
    """One microphone chunk of a `mic` stream; the last one says end_of_input."""
    opts = {**options, "end_of_input": True} if last else options
    return [infer_input(TALKING_HEAD, TH_AUDIO, chunk), infer_input(TALKING_HEAD, TH_OPTIONS, [json.dumps(opts)]),
            *fixed]


# ---------------------------------------------------------------- errors

class ClientError(Exception):
    """Base class of everything this SDK raises on purpose."""


# The gRPC status codes a turn ends with, and what each means for the caller.
INVALID_ARGUMENT = "INVALID_ARGUMENT"  # the request was refused: `message` names the problem ("invalid input: ...")
UNAVAILABLE = "UNAVAILABLE"  # server busy or shutting down: retry later or elsewhere (client.retry)
CANCELLED = "CANCELLED"  # the turn was cancelled
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # the turn's deadline_s passed
INTERNAL = "INTERNAL"  # a stage failed inside the server
# How the orchestrator words its errors (model_repository/talking_head/1/model.py): the status of an error inside a
# stream. The SDK opens its streams without Triton's `triton_grpc_error` header: with it, every failed turn makes
# Triton 2.51 close the stream with the error's status, and refusals at that rate abort tritonserver (RELIABILITY.md,
# "Overload"); without it the error is the turn's final response and the stream stays open for the next turn.
_STATUS_OF_MESSAGE = (("invalid input:", INVALID_ARGUMENT), ("server busy", UNAVAILABLE),
                      ("server is shutting down", UNAVAILABLE), ("turn cancelled", CANCELLED),
                      ("deadline exceeded", DEADLINE_EXCEEDED), ("internal error:", INTERNAL))


def status_name(status: Any) -> str | None:
    """grpc.StatusCode.UNAVAILABLE, "StatusCode.UNAVAILABLE", "UNAVAILABLE" -> "UNAVAILABLE"; None stays None."""
    if status is None or status == "":
        return None
    name = getattr(status, "name", None) or str(status)
    return name.rsplit(".", 1)[-1].strip().upper() or None


class ServerError(ClientError):
    """The server answered with an error; `message` is the server's text, verbatim.

    `status` is the gRPC status code's name: "INVALID_ARGUMENT" (bad input), "UNAVAILABLE" (busy, shutting
    down), "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL" (a stage failed), ... An RPC's error carries its status;
    an error inside a stream (a failed turn) carries none, so it is read from the orchestrator's wording of the
    message, and None when that says nothing either.
    """

    def __init__(self, message: str, *, status: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status_name(status) or _status_from_message(message)

    @property
    def retryable(self) -> bool:
        """Busy or shutting down: the same turn may succeed later or on another replica."""
        return self.status == UNAVAILABLE


def _status_from_message(message: str) -> str | None:
    low = (message or "").strip().lower()
    return next((status for prefix, status in _STATUS_OF_MESSAGE if low.startswith(prefix) or prefix in low[:80]),
                None)


class ProtocolError(ServerError):
    """A response that does not follow the event protocol (export.contract.events)."""


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


def is_connection_error(exc: InferenceServerException) -> bool:
    status = str(exc.status() or "")
    msg = str(exc.message() or "").lower()
    return status.endswith("UNAVAILABLE") and any(h in msg for h in _CONNECT_HINTS)


def translate_error(exc: InferenceServerException, url: str) -> ClientError:
    if is_connection_error(exc):
        return ConnectionFailed(url, str(exc.message()))
    return ServerError(str(exc.message()), status=exc.status())


# ---------------------------------------------------------------- events with client timestamps

@dataclass
class StreamEvent(Event):
    """An `export.contract.events.Event` as `ask` yields it, stamped with the client's clock."""

    sent_at: float | None = None  # clock() just before this turn's request was sent
    received_at: float | None = None  # clock() when this response arrived (on the gRPC thread)
    request_id: str = ""

    @property
    def latency_s(self) -> float | None:
        """Seconds from sending the request to receiving this event."""
        if self.sent_at is None or self.received_at is None:
            return None
        return self.received_at - self.sent_at

    def typed(self):
        """This event as its dataclass (client.events: TextEvent, AudioEvent, VideoEvent, DoneEvent, ...)."""
        from client.events import typed

        return typed(self)


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The gRPC metadata a call carries: the client's API key for the front door (deploy/front_door), if any."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def is_final_response(result: grpcclient.InferResult) -> bool:
    """Whether Triton flagged this stream response as the last of its request."""
    params = result.get_response().parameters
    return FINAL_RESPONSE_PARAM in params and params[FINAL_RESPONSE_PARAM].bool_param


def answers(result: grpcclient.InferResult, request_id: str) -> bool:
    """Whether a response on a kept stream answers this request (its id, or none given), not a late one of an
    earlier turn on the same stream."""
    return result.get_response().id in ("", request_id)


def event_from_result(result: grpcclient.InferResult, *, sent_at: float | None = None,
                      received_at: float | None = None, request_id: str = "") -> StreamEvent | None:
    """The event of one `talking_head` response, with its audio chunk / JPEG frame attached.

    None for a response without an `event` output (the empty final response) or
    with an event type this client does not know (logged and skipped).
    """
    raw = first_value(result.as_numpy(TH_EVENT.name))
    if raw is None:
        return None
    audio = result.as_numpy(TH_AUDIO_CHUNK.name)
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    frame = result.as_numpy(TH_FRAME.name)
    if frame is not None:
        frame = as_bytes(frame) if frame.dtype != object else as_bytes(first_value(frame))
    try:
        base = Event.from_json(as_bytes(raw), audio=audio, frame=frame)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"malformed event JSON from {TALKING_HEAD.name}: {e}: {as_bytes(raw)[:200]!r}") from None
    except (KeyError, ValueError, TypeError) as e:
        log.warning("skipping an event this client does not understand (%s): %.200r", e, as_bytes(raw))
        return None
    return StreamEvent(base.type, base.data, audio=base.audio, frame=base.frame,
                       sent_at=sent_at, received_at=received_at, request_id=request_id)
