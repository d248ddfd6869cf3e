"""One client stream through the front door and its upstream twin (deploy/front_door/proxy.py opens them).

Both directions are pumped at once: each request checked (checks.py) and counted against its identity's quotas
(quota.py), then sent upstream; responses written back as they come. A failed request follows Triton's own
convention: with `triton_grpc_error: true` the client's stream ends with the error's status, otherwise an
`error_message` response names it and the stream stays open; the door half-closes the upstream stream instead of
having Triton 2.51 close it with a status (RELIABILITY.md, "Overload"). A client that stops reading, or reads slower
than its stream comes (responses not taken for `Limits.max_stall_s` in all, earned back while it keeps up), is cut
off with RESOURCE_EXHAUSTED and its upstream call cancelled. A stream with a turn in flight whose upstream sends
nothing for `Limits.max_upstream_silence_s` is ended (a dead orchestrator), and one with nothing in flight is closed
while upstream's talking_head is not ready (a drain).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2 as pb

from deploy.front_door.checks import (
    CODE,
    FINAL,
    TALKING_HEAD,
    WANT_FINAL,
    Refused,
    check_request,
    mic_seconds,
    own_options,
    status_of,
)
from deploy.front_door.quota import Limits, QuotaExceeded, Usage

HALF_CLOSE_S = 5.0  # how long the door waits for upstream to end a half-closed stream before it cancels it
log = logging.getLogger("deploy.front_door")


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



@dataclass
class InFlight:
    """A request sent upstream, until its final response (or its error)."""
    mic: bool  # a chunk of its session's microphone, which holds one turn slot while any of its chunks is in flight
    session: str | None
    quiet: bool  # a prerender: it sends nothing until it ends (exempt from the silence cut)
    forced: bool  # the door asked for its empty final response, which is dropped here


class Stream:
    """One client stream and its upstream twin: requests pumped up on a task, responses written back here.

    Each request holds one of its identity's turn slots (`Limits.max_turns`) until its final response, except a
    microphone's chunks: those of one session hold one slot together while any is in flight (the turn a chunk ends
    runs in that chunk's request, and a session runs one turn at a time), so a live microphone's 31 chunks a second
    do not each need a slot while the server answers them. A microphone chunk's request id must be its own on the
    stream: responses are matched to requests by id."""

    def __init__(self, limits: Limits, draining: Callable[[], bool], context, usage: Usage, token: str, fatal: bool):
        self.limits, self.draining = limits, draining  # draining(): upstream's talking_head is not ready
        self.context, self.usage, self.token, self.fatal = context, usage, token, fatal
        self.inflight: dict[str, list[InFlight]] = {}  # request id -> its requests in flight, oldest first
        self.mics: dict[str | None, int] = {}  # session -> its microphone chunks in flight
        self.failure: Refused | None = None
        self.heard = time.monotonic()  # the upstream's last response (or the last moment nothing was in flight)
        self.lock = asyncio.Lock()
        # seconds the client may still hold its stream up (a response not taken: its HTTP/2 window full); spent while
        # a write waits on the client, earned back second for second while the door waits on upstream instead
        self.slack = limits.max_stall_s
        self.wrote = time.monotonic()  # when the last write to the client ended

    @property
    def turns(self) -> int:
        """Requests in flight."""
        return sum(map(len, self.inflight.values()))

    @property
    def slots(self) -> int:
        """The identity's turn slots this stream holds (in usage.turns; given back at its end): one a request in
        flight, one a microphone."""
        return sum(not e.mic for held in self.inflight.values() for e in held) + len(self.mics)

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
                        self.failure = Refused(status_of(resp.error_message), resp.error_message)
                        gentle = self.turns == 0  # nothing else in flight: half-close upstream, cancel nothing
                        break
                    async with self.lock:
                        if not await self._write(resp):
                            call.cancel()  # now: the abort below waits until the client reads again
                            self.failure = Refused(CODE.RESOURCE_EXHAUSTED, (
                                f"the client did not keep up with its stream: it left responses untaken for "
                                f"{self.limits.max_stall_s:g} s in all (its stream is full); its turns were "
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
        self.slack = min(self.limits.max_stall_s, self.slack + (start - self.wrote))
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
        silence = self.limits.max_upstream_silence_s  # > 0 (FrontDoorOptions)
        while True:
            await asyncio.sleep(min(1.0, silence / 4))
            if self.failure is not None:  # the stream is ending already (e.g. cut off: its abort waits on the client)
                return
            now = time.monotonic()
            if self.turns == 0 and self.draining():
                self.failure = Refused(CODE.UNAVAILABLE, (
                    f"the server is draining ({TALKING_HEAD} is not ready): this stream had no turn in flight "
                    "and was closed so the server can stop; open a new one (it may reach another replica)"))
                log.info("closed an idle stream: talking_head is not ready upstream")
                call.cancel()
                return
            if all(e.quiet for held in self.inflight.values() for e in held):  # nothing in flight should be talking
                self.heard = now
            elif now - self.heard > silence:
                self.failure = Refused(CODE.UNAVAILABLE, (
                    f"the server sent nothing for {silence:g} s with a turn in flight (its orchestrator may "
                    "have died); the stream was ended and its turns cancelled: retry"))
                log.warning("ended a stream whose upstream fell silent with %d request(s) in flight", self.turns)
                call.cancel()
                return

    def _ended(self, resp: pb.ModelStreamInferResponse) -> bool:
        """Settle a request at its final response (or error); True for an empty final response the client did not
        ask for (dropped)."""
        r = resp.infer_response
        if not resp.error_message and not (FINAL in r.parameters and r.parameters[FINAL].bool_param):
            return False
        held = self.inflight.get(r.id)
        if not held:  # not a request of this stream's (Triton echoes each request's id): passed on as it came
            return False
        entry = held.pop(0)
        if not held:
            del self.inflight[r.id]
        if entry.mic:
            self.mics[entry.session] -= 1
            if not self.mics[entry.session]:
                del self.mics[entry.session]
                self.usage.end_turns()
        else:
            self.usage.end_turns()
        return entry.forced and not resp.error_message and not r.outputs

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
        check_request(req, TALKING_HEAD, self.limits)
        action, session = own_options(req, self.token)
        mic = action == "mic"
        held = self.inflight.get(req.id)
        if held and (mic or held[0].mic):
            raise Refused(CODE.INVALID_ARGUMENT, f"request id {req.id[:32]!r} is in flight on this stream already: a "
                                                 "microphone chunk needs an id of its own (the front door matches "
                                                 "its answer to it)")
        try:
            if mic:  # a live microphone's chunks come faster than `rate`: they spend seconds of audio
                self.usage.hear(mic_seconds(req), f"microphone chunk {req.id[:32]!r}")
            else:
                self.usage.spend(f"request {req.id[:32]!r}")
            if action == "cancel":
                self.usage.turns += 1  # counted until its (quick) final response, like any request; never refused
            elif not (mic and self.mics.get(session)):  # a microphone already in flight holds its slot
                self.usage.start_turn()
        except QuotaExceeded as e:
            raise Refused(CODE.RESOURCE_EXHAUSTED, str(e)) from None
        if mic:
            self.mics[session] = self.mics.get(session, 0) + 1
        want = req.parameters.get(WANT_FINAL)
        forced = want is None or not want.bool_param
        if forced:
            req.parameters[WANT_FINAL].bool_param = True
        # a prerender's turns stream to the answer cache, not to the client: exempt from the silence cut
        self.inflight.setdefault(req.id, []).append(InFlight(mic, session, action == "prerender", forced))
