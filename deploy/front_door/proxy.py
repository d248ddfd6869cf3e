"""The front door's gRPC service: Triton's GRPCInferenceService, of which only what clients need is passed on.

Forwarded to the upstream Triton: ServerLive and ServerReady (open, for probes; one upstream answer serves every
caller for HEALTH_TTL_S), ModelReady and ModelMetadata of
the exposed models, ModelInfer of `avatar_registry` and ModelStreamInfer of `talking_head` (both directions pumped
at once, responses written back as they come: stream.py). Everything else (the stage models, the repository, config,
statistics, trace, logging and shared-memory APIs, ServerMetadata) is refused with PERMISSION_DENIED.

Every forwarded call but the two health calls needs `authorization: Bearer <key>` (UNAUTHENTICATED otherwise).
Each `talking_head` request's `options` JSON gets the caller's `session_token` (derived from its identity,
overriding what the client sent), so a session belongs to the API key that opened it; the `canary` option (a
probe's turn, left out of the latency metrics) is refused (checks.py). Quotas per identity (quota.py) are checked
before anything is sent upstream. None of the client's metadata is passed on. The `triton_grpc_error` header is
answered by the door itself and never sent upstream (stream.py). Requested outputs carry no parameters (Triton 2.51
dies of `classification` on a BYTES output). The door keeps one upstream stream open ahead of the next client stream
(a spare, `FrontDoor._upstream_stream`), so a turn on a new stream skips setting one up.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deploy.front_door.checks import AVATAR_REGISTRY, CODE, EXPOSED_MODELS, TALKING_HEAD, Refused, check_request
from deploy.front_door.quota import ApiKeys, Limits, QuotaExceeded, Quotas, bearer
from deploy.front_door.stream import Stream
from deploy.session_tokens import SessionTokens

STATUS_HEADER = "triton_grpc_error"  # answered here, never forwarded
HEALTH_TTL_S = 0.5  # upstream's answer to ServerLive/ServerReady is given again for this long (Shared)
HEALTH_TIMEOUT_S = 5.0
SPARE_AFTER_S = 0.05  # a spare upstream stream is opened this long after the last was taken: off that turn's path
log = logging.getLogger("deploy.front_door")


class Shared:
    """One upstream call answers every caller that asks while it is in flight or within `ttl_s` after it: the keyless
    health calls, which anyone may send as fast as they like, reach Triton at most about 1 / ttl_s times a second
    (before 2026-12-07 each was forwarded: 492 a second from one flooding client). An error is not kept."""

    def __init__(self, call: Callable[[], Awaitable], ttl_s: float = HEALTH_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.call, self.ttl_s, self.clock = call, ttl_s, clock
        self._answer, self._at = None, -math.inf
        self._flight: asyncio.Future | None = None

    async def __call__(self):
        if self._answer is not None and self.clock() - self._at < self.ttl_s:
            return self._answer
        if self._flight is None:
            self._flight = asyncio.ensure_future(self._ask())
            self._flight.add_done_callback(lambda f: f.cancelled() or f.exception())  # no waiter left: not logged
        return await asyncio.shield(self._flight)  # a caller that goes away leaves the call to the others

    async def _ask(self):
        try:
            answer = await self.call()
            self._answer, self._at = answer, self.clock()
            return answer
        finally:
            self._flight = None


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
        self._live = Shared(lambda: self.stub.ServerLive(pb.ServerLiveRequest(), timeout=HEALTH_TIMEOUT_S))
        self._ready = Shared(lambda: self.stub.ServerReady(pb.ServerReadyRequest(), timeout=HEALTH_TIMEOUT_S))

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
        return await self._health(self._live, context)

    async def ServerReady(self, request, context):
        return await self._health(self._ready, context)

    async def _health(self, shared: Shared, context):
        try:
            return await shared()
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or "")

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
        stream = Stream(self.limits, lambda: self.draining, context, usage, self.tokens(who),
                        self._wants_status(context))
        try:
            await stream.run(self._upstream_stream(), request_iterator)
        finally:
            usage.close_stream()
            usage.end_turns(stream.slots)


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
