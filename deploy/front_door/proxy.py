"""The front door's gRPC service: Triton's GRPCInferenceService, of which only what clients need is passed on.

Forwarded to the upstream Triton: ServerLive and ServerReady (open, for probes), ModelReady and ModelMetadata of
the exposed models, ModelInfer of `avatar_registry` and ModelStreamInfer of `talking_head` (both directions pumped
at once, responses written back as they come). Everything else (the stage models, the repository, config,
statistics, trace, logging and shared-memory APIs, ServerMetadata) is refused with PERMISSION_DENIED.

Every forwarded call but the two health calls needs `authorization: Bearer <key>` (UNAUTHENTICATED otherwise).
Each `talking_head` request's `options` JSON gets the caller's `session_token` (derived from its identity,
overriding what the client sent), so a session belongs to the API key that opened it; the `canary` option (a
probe's turn, left out of the latency metrics) is refused. Quotas per identity
(quota.py) are checked before anything is sent upstream. None of the client's metadata is passed on. A failed
request inside a stream follows Triton's own convention: with `triton_grpc_error: true` the client's stream ends
with the error's status, otherwise an `error_message` response names it and the stream stays open. The door
answers that header itself and never sends it upstream: Triton 2.51 closing a stream with an error status at a
high rate aborts (RELIABILITY.md, "Overload"); the door half-closes the upstream stream instead. A client
that stops reading, or reads slower than its stream comes (it holds the stream up, responses not taken, for
`Limits.max_stall_s` in all, earned back while it keeps up), is cut off with RESOURCE_EXHAUSTED and its upstream
call cancelled, so its unread responses pile up nowhere. Requested outputs carry no parameters (Triton 2.51 dies
of `classification` on a BYTES output). The door keeps one upstream stream open ahead of the next client stream
(a spare, `FrontDoor._upstream_stream`), so a turn on a new stream skips setting one up.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import time

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from client.wire import ServerError
from deploy.front_door.quota import ApiKeys, Limits, QuotaExceeded, Quotas, bearer
from deploy.session_tokens import SessionTokens
from export.contract import media, spec

TALKING_HEAD = spec.TALKING_HEAD.name
AVATAR_REGISTRY = spec.AVATAR_REGISTRY.name
EXPOSED_MODELS = (TALKING_HEAD, AVATAR_REGISTRY)
OPEN_CALLS = ("ServerLive", "ServerReady")  # no key needed: liveness/readiness probes
STATUS_HEADER = "triton_grpc_error"  # answered here, never forwarded
HALF_CLOSE_S = 5.0  # how long the door waits for upstream to end a half-closed stream before it cancels it
SPARE_AFTER_S = 0.05  # a spare upstream stream is opened this long after the last was taken: off that turn's path
FINAL = "triton_final_response"
WANT_FINAL = "triton_enable_empty_final_response"
MAX_OPTIONS_BYTES = 16 * 1024  # parsed here before Triton's orchestrator checks its own 4 kB limit
SHM_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset", "cuda_shared_memory")
CODE = grpc.StatusCode
log = logging.getLogger("deploy.front_door")


def _status_of(message: str) -> grpc.StatusCode:
    """The status Triton would have closed the stream with, read from the orchestrator's wording (client.wire)."""
    name = ServerError(message).status
    return getattr(CODE, name) if name and hasattr(CODE, name) else CODE.INTERNAL


async def _half_close(pump: asyncio.Future, call) -> None:
    """End an upstream stream with nothing in flight the gentle way: no more requests, then wait for Triton to end
    it (cancelling it is what races in Triton 2.51); cancelled after HALF_CLOSE_S."""
    try:
        await asyncio.wait([pump], timeout=1.0)
        await call.done_writing()
        async with asyncio.timeout(HALF_CLOSE_S):
            await call.code()  # the call's end (nothing is in flight, so nothing is left to read)
    except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, TimeoutError):
        pass


class Refused(Exception):
    """A request refused by the front door: `code` and the message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- requests


def one_bytes_element(raw: bytes) -> bytes | None:
    """The one element of a BYTES tensor's raw contents (a 4-byte little-endian length, then that many bytes); None
    when they hold anything else. Constant time: a message of millions of empty elements is not walked."""
    if len(raw) < 4:
        return None
    (n,) = struct.unpack_from("<I", raw)
    return raw[4:] if 4 + n == len(raw) else None


def own_options(req: pb.ModelInferRequest, token: str) -> str | None:
    """Set `session_token` in the request's `options` JSON (contents or raw contents) to `token`; returns the
    options' `action` (None without options or when they are not a JSON object, left for Triton to refuse)."""
    idx = [i for i, t in enumerate(req.inputs) if t.name == "options"]
    if not idx:
        return None
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
        return None  # not JSON: the orchestrator refuses it with its own message
    if not isinstance(data, dict):
        return None
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
    return data.get("action") if isinstance(data.get("action"), str) else None


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


# ---------------------------------------------------------------- the service


class FrontDoor(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, upstream: grpc.aio.Channel, keys: ApiKeys, limits: Limits = Limits(),
                 tokens: SessionTokens | None = None, by_certificate: bool = False):
        self.stub = pb_grpc.GRPCInferenceServiceStub(upstream)
        self.keys = keys
        self.by_certificate = by_certificate  # mutual TLS: the client certificate's CN is the identity
        self.limits = limits
        self.quotas = Quotas(limits)
        self.tokens = tokens or SessionTokens()
        self.draining = False  # upstream said talking_head is not ready (Limits.ready_poll_s)
        self._ready_watch: asyncio.Task | None = None
        self._spare = None  # an upstream ModelStreamInfer opened ahead of the next client stream (_upstream_stream)
        self._refill: asyncio.TimerHandle | None = None

    async def _watch_ready(self) -> None:
        """Poll upstream's ModelReady(talking_head). Only an answer counts: an error (the server down, a stand-in
        without the call) leaves `draining` as it was; the streams hear of a dead server themselves."""
        while True:
            try:
                r = await self.stub.ModelReady(pb.ModelReadyRequest(name=TALKING_HEAD), timeout=5.0)
                if self.draining != (not r.ready):
                    log.info("talking_head %s upstream", "ready again" if r.ready else
                             "not ready: closing streams with no turn in flight")
                self.draining = not r.ready
                if self.draining and self._spare is not None:  # it sent nothing, but keep upstream's streams few
                    self._spare.cancel()
                    self._spare = None
            except grpc.aio.AioRpcError as e:
                log.debug("readiness poll failed: %s", e.code())
            except grpc.aio.UsageError:  # the upstream channel was closed: the door is stopping
                return
            await asyncio.sleep(self.limits.ready_poll_s)

    # -- helpers

    def _upstream_stream(self):
        """The upstream call for a new client stream: the spare opened ahead while it is still open (the turn's first
        request then skips setting up an upstream stream, ~0.1-0.3 ms here; BENCHMARKS.md "A spare upstream
        stream"), else a new one. The next spare is opened SPARE_AFTER_S later, off this turn's path. The client's
        deadline is kept by cancelling upstream when its own call ends (`_Stream.run`), not by the upstream call."""
        call, self._spare = self._spare, None
        if call is None or call.done():
            call = self.stub.ModelStreamInfer()
        if self._refill is None and not self.draining:
            self._refill = asyncio.get_running_loop().call_later(SPARE_AFTER_S, self._open_spare)
        return call

    def _open_spare(self) -> None:
        self._refill = None
        if self._spare is None and not self.draining:
            try:
                self._spare = self.stub.ModelStreamInfer()
            except grpc.aio.UsageError:  # the upstream channel was closed: the door is stopping
                pass

    async def _identify(self, context) -> str:
        if self.by_certificate:  # the TLS handshake verified the certificate against the client CA
            names = (context.auth_context() or {}).get("x509_common_name") or []
            if not names:
                await context.abort(CODE.UNAUTHENTICATED, "the client certificate has no subject CN (the identity)")
            return "cert:" + bytes(names[0]).decode("utf-8", "replace")
        who = self.keys.identify(bearer(context.invocation_metadata()))
        if who is None:
            await context.abort(CODE.UNAUTHENTICATED, "missing or unknown API key: send the metadata "
                                                      "`authorization: Bearer <key>`")
        return who

    @staticmethod
    def _wants_status(context) -> bool:
        return any(k.lower() == STATUS_HEADER and v.lower() == "true" for k, v in context.invocation_metadata() or ())

    async def _unary(self, method, request, context):
        try:
            return await method(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or "")

    async def _admit(self, context, what: str, model: str | None = None) -> str:
        who = await self._identify(context)
        if model is not None and model not in EXPOSED_MODELS:
            await context.abort(CODE.PERMISSION_DENIED, f"model {model!r} is not exposed here (exposed: "
                                                        f"{', '.join(EXPOSED_MODELS)})")
        try:
            self.quotas[who].spend(what)
        except QuotaExceeded as e:
            await context.abort(CODE.RESOURCE_EXHAUSTED, str(e))
        return who

    # -- forwarded

    async def ServerLive(self, request, context):
        return await self._unary(self.stub.ServerLive, request, context)

    async def ServerReady(self, request, context):
        return await self._unary(self.stub.ServerReady, request, context)

    async def ModelReady(self, request, context):
        await self._admit(context, "ModelReady", request.name)
        return await self._unary(self.stub.ModelReady, request, context)

    async def ModelMetadata(self, request, context):
        await self._admit(context, "ModelMetadata", request.name)
        return await self._unary(self.stub.ModelMetadata, request, context)

    async def ModelInfer(self, request, context):
        if request.model_name != AVATAR_REGISTRY:
            await self._identify(context)
            await context.abort(CODE.PERMISSION_DENIED, f"ModelInfer of {request.model_name!r} is not exposed here "
                                                        f"(only {AVATAR_REGISTRY}; {TALKING_HEAD} streams)")
        usage = self.quotas[await self._admit(context, "ModelInfer")]
        try:
            check_request(request, AVATAR_REGISTRY, self.limits)
            usage.register()
            usage.start_call()  # a registration can take a while to decode: at most max_calls of them at once
        except Refused as e:
            await context.abort(e.code, e.message)
        except QuotaExceeded as e:
            await context.abort(CODE.RESOURCE_EXHAUSTED, str(e))
        try:
            return await self._unary(self.stub.ModelInfer, request, context)
        finally:
            usage.end_call()

    async def ModelStreamInfer(self, request_iterator, context):
        who = await self._identify(context)
        usage = self.quotas[who]
        try:
            usage.spend("a new stream")
            usage.open_stream()
        except QuotaExceeded as e:
            await context.abort(CODE.RESOURCE_EXHAUSTED, str(e))
        if self._ready_watch is None and self.limits.ready_poll_s > 0:
            self._ready_watch = asyncio.ensure_future(self._watch_ready())
        stream = _Stream(self, context, usage, self.tokens(who), self._wants_status(context))
        try:
            await stream.run(self._upstream_stream(), request_iterator)
        finally:
            usage.close_stream()
            usage.end_turns(stream.turns)


class _Stream:
    """One client stream and its upstream twin: requests pumped up on a task, responses written back here."""

    def __init__(self, door: FrontDoor, context, usage, token: str, fatal: bool):
        self.door, self.context, self.usage, self.token, self.fatal = door, context, usage, token, fatal
        self.turns = 0  # this stream's requests in flight (counted in usage.turns)
        self.quiet: dict[str, int] = {}  # request id -> prerenders in flight: they send nothing until they end
        self.forced: dict[str, int] = {}  # request id -> requests we asked final responses for (dropped here)
        self.failure: Refused | None = None
        self.heard = time.monotonic()  # the upstream's last response (or the last moment nothing was in flight)
        self.lock = asyncio.Lock()
        # seconds the client may still hold its stream up (a response not taken: its HTTP/2 window full); spent while
        # a write waits on the client, earned back second for second while the door waits on upstream instead
        self.slack = door.limits.max_stall_s
        self.wrote = time.monotonic()  # when the last write to the client ended

    async def run(self, call, request_iterator) -> None:
        pump = asyncio.ensure_future(self._pump(call, request_iterator))
        watch = asyncio.ensure_future(self._watch_upstream(call))
        gentle = False
        try:
            try:
                async for resp in call:  # no task or timer per response: _watch_upstream keeps the silence clock
                    self.heard = time.monotonic()
                    if self._ended(resp):
                        continue
                    if self.fatal and resp.error_message:  # the client asked for the status: its stream ends
                        self.failure = Refused(_status_of(resp.error_message), resp.error_message)
                        gentle = self.turns == 0  # nothing else in flight: half-close upstream, cancel nothing
                        break
                    async with self.lock:
                        if not await self._write(resp):
                            call.cancel()  # now: the abort below waits until the client reads again
                            self.failure = Refused(CODE.RESOURCE_EXHAUSTED, (
                                f"the client did not keep up with its stream: it left responses untaken for "
                                f"{self.door.limits.max_stall_s:g} s in all (its stream is full); its turns were "
                                "cancelled"))
                            log.warning("cut off a stream whose client stopped reading or fell behind")
                            break
            except asyncio.CancelledError:
                if self.failure is None or asyncio.current_task().cancelling():
                    raise  # the client went away
            except grpc.aio.AioRpcError as e:
                if self.failure is None:
                    await self.context.abort(e.code(), e.details() or "")
            if self.failure is not None:
                await self.context.abort(self.failure.code, self.failure.message)
        finally:
            pump.cancel()
            watch.cancel()
            if gentle:
                await _half_close(pump, call)
            call.cancel()

    async def _write(self, resp) -> bool:
        """Write one response to the client; False once the client has held its stream up for max_stall_s in all
        (`slack`): one that stops reading, or one that reads but slower than the stream comes (upstream's backlog
        then grows in tritonserver, so the door never waits on upstream and earns nothing back)."""
        start = time.monotonic()
        self.slack = min(self.door.limits.max_stall_s, self.slack + (start - self.wrote))
        try:
            async with asyncio.timeout(self.slack):
                await self.context.write(resp)
        except TimeoutError:
            return False
        self.wrote = time.monotonic()
        self.slack -= self.wrote - start
        return True

    async def _watch_upstream(self, call) -> None:
        """Cancel the upstream call when it has sent nothing for max_upstream_silence_s while a turn is in flight
        (the clock runs only while one is: an idle stream may wait for its next request as long as it likes), or
        when it has no turn in flight while upstream's talking_head is not ready (FrontDoor.draining)."""
        silence = self.door.limits.max_upstream_silence_s  # > 0 (FrontDoorOptions)
        while True:
            await asyncio.sleep(min(1.0, silence / 4))
            if self.failure is not None:  # the stream is ending already (e.g. cut off: its abort waits on the client)
                return
            now = time.monotonic()
            if self.turns == 0 and self.door.draining:
                self.failure = Refused(CODE.UNAVAILABLE, (
                    f"the server is draining ({TALKING_HEAD} is not ready): this stream had no turn in flight "
                    "and was closed so the server can stop; open a new one (it may reach another replica)"))
                log.info("closed an idle stream: talking_head is not ready upstream")
                call.cancel()
                return
            if self.turns <= sum(self.quiet.values()):  # nothing in flight that should be talking
                self.heard = now
            elif now - self.heard > silence:
                self.failure = Refused(CODE.UNAVAILABLE, (
                    f"the server sent nothing for {silence:g} s with a turn in flight (its orchestrator may "
                    "have died); the stream was ended and its turns cancelled: retry"))
                log.warning("ended a stream whose upstream fell silent with %d request(s) in flight", self.turns)
                call.cancel()
                return

    def _ended(self, resp: pb.ModelStreamInferResponse) -> bool:
        """Count a request's final response; True for an empty final response the client did not ask for."""
        r = resp.infer_response
        final = r.parameters[FINAL].bool_param if FINAL in r.parameters else False
        if (final or resp.error_message) and self.quiet.get(r.id):
            self.quiet[r.id] -= 1
            if not self.quiet[r.id]:
                del self.quiet[r.id]
        if resp.error_message:  # an error ends its request; it is never dropped
            if self.turns:
                self.turns -= 1
                self.usage.end_turns()
            n = self.forced.get(r.id)
            if n:
                self.forced[r.id] = n - 1
            return False
        if not final:
            return False
        if self.turns:
            self.turns -= 1
            self.usage.end_turns()
        n = self.forced.get(r.id)
        if n and not r.outputs:
            if n == 1:
                del self.forced[r.id]
            else:
                self.forced[r.id] = n - 1
            return True
        return False

    async def _pump(self, call, request_iterator) -> None:
        try:
            async for req in request_iterator:
                try:
                    self._admit(req)
                except Refused as e:
                    if self.fatal:
                        self.failure = e
                        call.cancel()
                        return
                    async with self.lock:
                        await self.context.write(pb.ModelStreamInferResponse(
                            error_message=e.message, infer_response=pb.ModelInferResponse(
                                model_name=req.model_name, id=req.id)))
                    continue
                await call.write(req)
            await call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.AbortError, asyncio.InvalidStateError):
            pass  # the upstream call ended: its status reaches the client through run()
        except Exception:
            log.exception("front door: a stream's request pump failed")
            self.failure = Refused(CODE.INTERNAL, "front door: internal error while forwarding the stream")
            call.cancel()

    def _admit(self, req: pb.ModelInferRequest) -> None:
        check_request(req, TALKING_HEAD, self.door.limits)
        action = own_options(req, self.token)
        try:
            if action == "mic":  # a live microphone's chunks come faster than `rate`: they spend seconds of audio
                self.usage.hear(mic_seconds(req), f"microphone chunk {req.id[:32]!r}")
            else:
                self.usage.spend(f"request {req.id[:32]!r}")
        except QuotaExceeded as e:
            raise Refused(CODE.RESOURCE_EXHAUSTED, str(e)) from None
        if action == "prerender":  # its turns stream to the answer cache, not to the client: exempt from the silence cut
            self.quiet[req.id] = self.quiet.get(req.id, 0) + 1
        if action != "cancel":
            try:
                self.usage.start_turn()
            except QuotaExceeded as e:
                raise Refused(CODE.RESOURCE_EXHAUSTED, str(e)) from None
            self.turns += 1
        else:
            self.usage.turns += 1  # counted until its (quick) final response, like any request
            self.turns += 1
        want = req.parameters.get(WANT_FINAL)
        if want is None or not want.bool_param:
            req.parameters[WANT_FINAL].bool_param = True
            self.forced[req.id] = self.forced.get(req.id, 0) + 1


def refuse_everything_else() -> None:
    """Every other RPC of the service: PERMISSION_DENIED, naming it."""
    forwarded = {"ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelInfer", "ModelStreamInfer"}
    for name in dir(pb_grpc.GRPCInferenceServiceServicer):
        if name.startswith("_") or name in forwarded:
            continue

        async def refused(self, request, context, _name=name):
            await context.abort(CODE.PERMISSION_DENIED, f"{_name} is not exposed by the front door (only health, "
                                                        f"{TALKING_HEAD} streaming and {AVATAR_REGISTRY} infer)")
        refused.__name__ = name
        setattr(FrontDoor, name, refused)


refuse_everything_else()
