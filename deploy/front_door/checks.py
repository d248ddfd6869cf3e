"""The front door's checks of one request before anything goes upstream (deploy/front_door/proxy.py serves them):
the model and API it may reach, its id and shared-memory parameters, the `options` it owns (the caller's
`session_token` set, probe and benchmark options refused) and a microphone chunk's seconds of audio."""
from __future__ import annotations

import json
import math
import struct
from typing import NamedTuple

import grpc
from tritonclient.grpc import service_pb2 as pb

from client.wire import ServerError
from deploy.front_door.quota import Limits
from export.contract import media, spec

TALKING_HEAD = spec.TALKING_HEAD.name
AVATAR_REGISTRY = spec.AVATAR_REGISTRY.name
EXPOSED_MODELS = (TALKING_HEAD, AVATAR_REGISTRY)
FINAL = "triton_final_response"
WANT_FINAL = "triton_enable_empty_final_response"
MAX_OPTIONS_BYTES = 16 * 1024  # parsed here before Triton's orchestrator checks its own 4 kB limit
SHM_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset", "cuda_shared_memory")
CODE = grpc.StatusCode


class Refused(Exception):
    """A request refused by the front door: `code` and the message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message



def status_of(message: str) -> grpc.StatusCode:
    """The status Triton would have closed the stream with, read from the orchestrator's wording (client.wire)."""
    name = ServerError(message).status
    return getattr(CODE, name) if name and hasattr(CODE, name) else CODE.INTERNAL





def one_bytes_element(raw: bytes) -> bytes | None:
    """The one element of a BYTES tensor's raw contents (a 4-byte little-endian length, then that many bytes); None
    when they hold anything else. Constant time: a message of millions of empty elements is not walked."""
    if len(raw) < 4:
        return None
    (n,) = struct.unpack_from("<I", raw)
    return raw[4:] if 4 + n == len(raw) else None


class Owned(NamedTuple):
    """What the door reads of a request's options: its `action` and `session` (None where not given as strings)."""
    action: str | None = None
    session: str | None = None


def own_options(req: pb.ModelInferRequest, token: str) -> Owned:
    """Set `session_token` in the request's `options` JSON (contents or raw contents) to `token`; returns the
    options' action and session (neither without options or when they are not a JSON object, left for Triton to
    refuse)."""
    idx = [i for i, t in enumerate(req.inputs) if t.name == "options"]
    if not idx:
        return Owned()
    if len(idx) > 1:
        raise Refused(CODE.INVALID_ARGUMENT, "input 'options' is given more than once")
    i = idx[0]
    raw = len(req.raw_input_contents) > 0
    if raw:
        elem = one_bytes_element(req.raw_input_contents[i]) if i < len(req.raw_input_contents) else None
    else:
        contents = req.inputs[i].contents.bytes_contents
        elem = contents[0] if len(contents) == 1 else None
    if elem is None:
        raise Refused(CODE.INVALID_ARGUMENT, "input 'options' must be one BYTES element (a JSON object)")
    if len(elem) > MAX_OPTIONS_BYTES:
        raise Refused(CODE.INVALID_ARGUMENT, f"input 'options' is {len(elem)} bytes; the front door's limit is "
                                              f"{MAX_OPTIONS_BYTES}")
    try:  # UTF-8 only, as the orchestrator reads it (json.loads of bytes would also take UTF-16 or a BOM)
        data = json.loads(elem.decode("utf-8"))
    except (ValueError, RecursionError):
        return Owned()  # not JSON: the orchestrator refuses it with its own message
    if not isinstance(data, dict):
        return Owned()
    if data.get("canary", False) is not False:  # a probe's turn is left out of the user latency metrics
        raise Refused(CODE.PERMISSION_DENIED, "option `canary` is for the server's own probes (deploy/canary.py), "
                                              "not for clients: their turns count in the latency metrics")
    if data.get("streaming", True) is not True:  # the door's silence cut would end it, blaming a dead orchestrator
        raise Refused(CODE.PERMISSION_DENIED, "option `streaming` false (the naive benchmark baseline: the whole reply "
                                              "is rendered, then sent at once) is for benchmarks on the server's own "
                                              "port, not for clients")
    data["session_token"] = token
    new = json.dumps(data, separators=(",", ":")).encode()
    if raw:
        req.raw_input_contents[i] = struct.pack("<I", len(new)) + new
    else:
        del req.inputs[i].contents.bytes_contents[:]
        req.inputs[i].contents.bytes_contents.append(new)
    action, session = data.get("action"), data.get("session")
    return Owned(action if isinstance(action, str) else None, session if isinstance(session, str) else None)


def mic_seconds(req: pb.ModelInferRequest) -> float:
    """The seconds of audio a microphone chunk holds, read from its `audio` input's shape (Triton refuses a shape
    its data does not fill), at least one VAD window's: the orchestrator's work per chunk."""
    samples = max((math.prod(t.shape) for t in req.inputs if t.name == "audio"), default=0)
    return max(samples, media.VAD_WINDOW) / media.INPUT_SAMPLE_RATE


def check_request(req: pb.ModelInferRequest, model: str, limits: Limits) -> None:
    if req.model_name != model:
        raise Refused(CODE.PERMISSION_DENIED, f"model {req.model_name!r} is not exposed here for this call "
                                              f"(exposed: {TALKING_HEAD} streaming, {AVATAR_REGISTRY} infer)")
    n = len(req.id.encode())
    if n > limits.max_request_id_bytes:
        raise Refused(CODE.INVALID_ARGUMENT, f"request id has {n} bytes; the limit is {limits.max_request_id_bytes}")
    for t in (*req.inputs, *req.outputs):
        if any(p in t.parameters for p in SHM_PARAMS):
            raise Refused(CODE.PERMISSION_DENIED, f"shared memory is not exposed here (tensor {t.name!r})")
    for t in req.outputs:  # Triton 2.51 dies of `classification` on a BYTES output (SIGFPE; RELIABILITY.md)
        if t.parameters:
            raise Refused(CODE.INVALID_ARGUMENT, f"output {t.name!r}: parameters ({', '.join(sorted(t.parameters))})"
                                                 " are not served here; ask for outputs by name only")
    want = req.parameters.get(WANT_FINAL)
    if want is not None and want.WhichOneof("parameter_choice") != "bool_param":
        raise Refused(CODE.INVALID_ARGUMENT, f"request parameter {WANT_FINAL!r} must be a bool, got "
                                             f"{want.WhichOneof('parameter_choice')}")
