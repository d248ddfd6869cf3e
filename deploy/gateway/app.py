"""The gateway's HTTP side (aiohttp): the page, WebRTC signalling and avatar uploads. Every request is handled
here, in `Gateway`'s handlers behind `make_app`'s middlewares (authentication in front of the page, e.g. a login,
is one more middleware in that list).

    GET  /              the page (static/index.html; static/app.js, static/style.css under /static/)
    GET  /config        {"default_avatar", "ice_servers", "options"}: what the page needs
    POST /avatar        an image (its bytes as the body, <= 10 MB) -> avatar_registry -> {"id", "face_box", "message"}
    POST /offer         {"sdp", "type": "offer", "avatar_id"?, "options"?} -> {"sdp", "type": "answer", "session"}
    GET  /stats         sessions, replies' latencies at the gateway (p50/p95), process CPU time (?recent=N replies);
                        on the operator's listener (make_stats_runner), not the page's
    GET  /healthz       200 when Triton's orchestrator is ready (the readiness poll's last answer), else 503

Each client's use is bounded (limits.py: sessions, offers, avatar uploads, data-channel messages, microphone rate,
the offer's size); a session whose WebRTC connection is not up `connect_timeout_s` after its answer is ended.

Every `ready_poll_s` the gateway asks Triton whether `talking_head` is ready. When it is not (a drain unloads it
first; a watchdog reload unloads and loads it), every session ends its stream as soon as no reply plays, so that
the unload can finish (Triton 2.51 waits for every stream that used the model), and new sessions get 503; when it
is ready again, the sessions open new streams and go on (session.py: `drain`, `resume`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from collections.abc import Collection
from pathlib import Path

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from tritonclient.utils import InferenceServerException

from deploy.gateway import triton
from deploy.gateway.dtls import close_connection, on_transport_end, refuse_renegotiation
from deploy.gateway.ice import IceSettings, ReceivedChecks, filter_candidates, ice_connections, turn_user
from deploy.gateway.limits import (
    Clients,
    GatewayLimits,
    Refused,
    SessionBudget,
    check_host,
    check_offer,
    check_origin,
    client_identity,
)
from deploy.gateway.rtcp_guard import RtcpGuard
from deploy.gateway.rtp_guard import guard_rtp
from deploy.gateway.sctp_guard import SctpGuard
from deploy.gateway.session import AVATAR_ID, Session
from deploy.gateway.stats import GatewayStats
from deploy.gateway.tracks import read_microphone
from deploy.session_tokens import SessionTokens
from ensemble.errors import InputError
from ensemble.options import TurnOptions
from export.contract.spec import TALKING_HEAD

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # the registry's own limit (README, input limits)
# Per-turn options a page may set for its session's turns (ensemble/options.py checks their values).
PAGE_OPTIONS = frozenset({"max_reply_tokens", "temperature", "top_k", "seed", "ignore_eos", "speed", "pitch",
                          "energy", "jpeg_quality", "frame_stride", "lipsync_batch", "min_silence_ms", "deadline_s"})


def page_options(raw: object) -> dict:
    """The session options a page sent: a JSON object of PAGE_OPTIONS with values the orchestrator takes
    (ValueError naming the option otherwise, at the offer rather than at each turn)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("options must be a JSON object")
    unknown = sorted(set(raw) - PAGE_OPTIONS)
    if unknown:
        raise ValueError(f"options the page may not set: {', '.join(unknown)} "
                         f"(allowed: {', '.join(sorted(PAGE_OPTIONS))})")
    if not all(isinstance(v, (bool, int, float)) for v in raw.values()):
        raise ValueError("option values are numbers or booleans")
    try:
        TurnOptions(**raw).check()
    except InputError as e:
        raise ValueError(str(e)) from None
    return dict(raw)


def receive_only_the_microphone(pc: RTCPeerConnection) -> None:
    """What the answer lets the browser send: the microphone on the audio line the session's voice goes out on,
    nothing else. Video is sent only (aiortc decodes every received frame into a queue that nobody here reads, without
    bound: a client sending 1280x720 video grew the gateway 182 -> 862 MiB in 20 s), and any other media line is
    inactive (a transceiver that is not receiving starts no receiver, so RTP sent to it anyway is dropped)."""
    for t in pc.getTransceivers():
        if t.sender.track is None:
            t.direction = "inactive"
        elif t.kind == "video":
            t.direction = "sendonly"


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The request's body, refused (413) past `limit` bytes before it is all read."""
    too_large = f"the request body is over {limit} bytes (the limit of {request.path})"
    if request.content_length is not None and request.content_length > limit:
        raise Refused(413, too_large)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise Refused(413, too_large)
    return bytes(body)


def refusal(e: Refused) -> web.Response:
    return web.Response(status=e.status, text=str(e))


class Gateway:
    def __init__(self, triton_url: str, ice: IceSettings | None = None, *, max_sessions: int = 32,
                 root_cert: str | None = None, default_avatar: bytes | None = None, ready_poll_s: float = 1.0,
                 limits: GatewayLimits = GatewayLimits(), client_header: str | None = None,
                 tokens: SessionTokens | None = None, page_origins: tuple[str, ...] = (),
                 allowed_hosts: tuple[str, ...] = ()):
        self.triton_url, self.root_cert = triton_url, root_cert
        self.limits, self.client_header = limits, client_header
        # one session_token per client, not per session: the orchestrator's per-client bounds (its share of the
        # answer cache) see a client however many sessions it opens
        self.tokens = tokens or SessionTokens()
        self.page_origins = page_origins  # origins besides the gateway's own whose pages may POST offers and avatars
        self.allowed_hosts = allowed_hosts  # the host names it serves (none: any)
        self.clients = Clients(limits)
        self.uploading = asyncio.Semaphore(limits.uploads_at_once)  # avatar bodies read and registered at once
        self.client_of: dict[str, str] = {}  # session id -> the client that opened it
        self.ice = ice or IceSettings()
        self.max_sessions = max_sessions
        self.default_image = default_avatar
        self.default_avatar: str | None = None
        self.client = None
        self.sessions: dict[str, tuple[Session, RTCPeerConnection]] = {}
        self.stats = GatewayStats()
        self.ready_poll_s = ready_poll_s
        self.upstream_ready = True  # the last answer of the readiness poll
        self.healthy = True  # the last poll answered, and ready (/healthz)
        self._ready_watch: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifetime
    async def startup(self, app: web.Application) -> None:
        self.client = triton.connect(self.triton_url, self.root_cert)
        await triton.wait_ready(self.client)
        if self.default_image is None:
            from ensemble.avatar import demo_avatar_png  # scikit-image: only when no avatar file is given

            self.default_image = demo_avatar_png()
        self.default_avatar = (await triton.register_avatar(self.client, self.default_image))["id"]
        if self.ready_poll_s > 0:
            self._ready_watch = asyncio.ensure_future(self._watch_ready())

    async def _watch_ready(self) -> None:
        """Poll talking_head's readiness; drain the sessions while it is not ready, resume them once it is. Only an
        answer counts: an error (Triton unreachable) leaves the state as it was; the streams see a dead server."""
        while True:
            await asyncio.sleep(self.ready_poll_s)
            try:
                ready = bool(await self.client.is_model_ready(TALKING_HEAD.name, client_timeout=5.0))
            except Exception as e:  # InferenceServerException, a closed channel
                log.debug("readiness poll failed: %s", e)
                self.healthy = False
                continue
            self.healthy = ready
            if ready != self.upstream_ready:
                log.info("talking_head %s", "ready again: sessions resume" if ready else
                         "not ready: sessions end their streams once no reply plays")
            self.upstream_ready = ready
            for session, _ in list(self.sessions.values()):
                if ready:
                    session.resume()
                else:
                    session.drain()

    async def shutdown(self, app: web.Application) -> None:
        if self._ready_watch is not None:
            self._ready_watch.cancel()
        await asyncio.gather(*(self.end(sid) for sid in list(self.sessions)), return_exceptions=True)
        if self.client is not None:
            await self.client.close()

    async def end(self, sid: str) -> None:
        entry = self.sessions.pop(sid, None)
        if entry is None:
            return
        session, pc = entry
        self.clients.close_session(self.client_of.pop(sid, ""), sid)
        await session.close()
        failed = await close_connection(pc)  # aiortc's close() may raise, or never return (dtls.py)
        if failed:
            log.warning("session %s: its connection's %s; its transports were stopped one by one", sid, failed)
        self.stats.active = len(self.sessions)
        self.stats.sessions_ended += 1
        log.info("session %s ended (%d active)", sid, len(self.sessions))

    # ------------------------------------------------------------------ handlers
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def config(self, request: web.Request) -> web.Response:
        try:  # the page's TURN credentials are its client's: coturn's user-quota bounds the relays of each client
            client = client_identity(request.remote, request.headers, self.client_header)
        except Refused as e:
            return refusal(e)
        return web.json_response({"default_avatar": self.default_avatar, "options": sorted(PAGE_OPTIONS),
                                  "ice_servers": self.ice.servers(turn_user(client), page=True)})

    async def avatar(self, request: web.Request) -> web.Response:
        try:
            client = client_identity(request.remote, request.headers, self.client_header)
            self.clients.start_upload(client)
        except Refused as e:
            return refusal(e)
        # Nothing of an upload may outlive its answer: aiohttp keeps a connection's last request and answer until
        # its next request, so a body read with `request.read()` (cached in the request) and an answer raised from
        # the registry's error (its context: every copy of the image) stayed with each keep-alive connection
        # (RELIABILITY.md, "A tenth pass": 40 clients' uploads held 8.7 GiB)
        try:
            try:
                async with asyncio.timeout(self.limits.upload_wait_s):
                    await self.uploading.acquire()  # the body stays unread (in the socket) until its turn
            except TimeoutError:
                return web.Response(status=503, text=f"{self.limits.uploads_at_once} avatar uploads are being "
                                                     "registered and more are waiting; retry in a moment")
            try:
                image = await read_bounded(request, MAX_IMAGE_BYTES)
                if not image:
                    return web.Response(status=400, text="send the image file as the request body")
                info = await triton.register_avatar(self.client, image)
            except Refused as e:
                return refusal(e)
            except InferenceServerException as e:  # the registry's message says what is wrong with the image
                refused = str(e.message())
            else:
                return web.json_response(info)
            finally:
                self.uploading.release()
        finally:
            self.clients.end_upload(client)
        return web.Response(status=400, text=refused)

    async def offer(self, request: web.Request) -> web.Response:
        try:
            client = client_identity(request.remote, request.headers, self.client_header)
            raw = await read_bounded(request, self.limits.max_offer_bytes)
        except Refused as e:
            return refusal(e)
        try:
            body = json.loads(raw)
            if not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
                raise ValueError("expected a JSON object {\"sdp\": ..., \"type\": \"offer\"}")
            check_offer(body["sdp"], self.limits)
            options = page_options(body.get("options"))
            avatar_id = str(body.get("avatar_id") or self.default_avatar)
            if not AVATAR_ID.fullmatch(avatar_id):
                raise ValueError("bad avatar_id")
        except (ValueError, RecursionError) as e:  # json.JSONDecodeError and UnicodeDecodeError too
            # answered, not raised: an answer raised here keeps this fault (its traceback: the offer) with the
            # keep-alive connection until its next request (the avatar handler's comment)
            return web.Response(status=400, text=str(e) if isinstance(e, ValueError) else
                                "the offer is nested too deeply")
        if not self.upstream_ready:
            raise web.HTTPServiceUnavailable(text="the server is restarting the conversation model; try again in a "
                                                  "moment")
        if len(self.sessions) >= self.max_sessions:
            raise web.HTTPServiceUnavailable(text=f"gateway full ({self.max_sessions} sessions); try again later")
        sid = f"web-{uuid.uuid4().hex[:16]}"
        try:
            self.clients.open_session(client, sid)
        except Refused as e:
            return refusal(e)
        sdp, removed = filter_candidates(body["sdp"], self.ice.remote_networks)
        stream = triton.OrchestratorStream(self.client, sid, avatar_id, options, token=self.tokens(f"web:{client}"))
        session = Session(sid, stream, self.stats, SessionBudget(self.limits),
                          lambda reason: self._breach(sid, client, reason, "unread"))
        pc = RTCPeerConnection(configuration=self.ice.configuration(f"gateway-{sid}"))
        self.sessions[sid] = (session, pc)
        self.client_of[sid] = client
        self.stats.active = len(self.sessions)
        self.stats.sessions_started += 1
        pc.on("datachannel", session.attach)

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                session.add_task(read_microphone(track, session.mic_chunk))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.end(sid)
            elif pc.connectionState == "connected":
                refuse_renegotiation(pc)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if pc.sctp is not None:  # the offer has a data channel
                SctpGuard(pc.sctp, self.limits, lambda reason: self._breach(sid, client, reason, "broke_sctp"))
            for connection in ice_connections(pc):
                ReceivedChecks(connection, self.ice.remote_networks, self.limits.ice_learned_candidates,
                               self.limits.ice_checks_per_second, self.stats.refused)
            for track in (session.audio, session.video):
                RtcpGuard(pc.addTrack(track), self.limits, self.stats.refused)
            receive_only_the_microphone(pc)
            guard_rtp(pc, self.limits, self.stats.refused)
            on_transport_end(pc, lambda: asyncio.ensure_future(self.end(sid)))  # aiortc may never say "closed"
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            failed = f"cannot answer this offer: {e}"
        else:
            failed = None
        if failed is not None:  # ended and answered outside the `except`: nothing of the session kept with its fault
            await self.end(sid)
            return web.Response(status=400, text=failed)
        session.start()
        asyncio.get_running_loop().call_later(self.limits.connect_timeout_s, self._connect_deadline, sid, pc)
        log.info("session %s started (%d active; %d remote candidates filtered)", sid, len(self.sessions), removed)
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session": sid})

    def _connect_deadline(self, sid: str, pc: RTCPeerConnection) -> None:
        """A session whose WebRTC connection never came up is ended (an offer alone held a slot and idle motion)."""
        entry = self.sessions.get(sid)
        if entry is not None and entry[1] is pc and pc.connectionState in ("new", "connecting"):
            log.info("session %s: not connected %g s after its answer: ended", sid, self.limits.connect_timeout_s)
            self.stats.sessions_unconnected += 1
            asyncio.ensure_future(self.end(sid))

    def _breach(self, sid: str, client: str, reason: str, kind: str) -> None:
        """A session's peer broke a rule of its SCTP association (sctp_guard.py: `kind` "broke_sctp") or took none of
        its data-channel messages ("unread"): the session is ended, counted in /stats as sessions_<kind>."""
        log.warning("session %s of client %s ended: %s", sid, client, reason)
        setattr(self.stats, f"sessions_{kind}", getattr(self.stats, f"sessions_{kind}") + 1)
        asyncio.ensure_future(self.end(sid))

    async def stats_handler(self, request: web.Request) -> web.Response:
        try:
            recent = min(self.stats.keep, max(0, int(request.query.get("recent", "20"))))
        except ValueError:
            raise web.HTTPBadRequest(text="recent: a number of replies") from None
        unread = [s.channel.bufferedAmount for s, _ in self.sessions.values() if s.channel is not None]
        # data-channel bytes queued for clients that have not taken them: all sessions', and the largest one's
        return web.json_response({**self.stats.summary(recent), "unread_bytes": sum(unread),
                                  "unread_bytes_largest": max(unread, default=0)})

    async def healthz(self, request: web.Request) -> web.Response:
        """The readiness poll's last answer: a caller (keyless, on the page's port) makes no call to Triton (64
        callers asking back to back made one each: RELIABILITY.md, "An eleventh pass"). Without the poll, Triton is
        asked."""
        if self.ready_poll_s > 0:
            ready = self.healthy
        else:
            try:
                ready = self.client is not None and await self.client.is_model_ready(TALKING_HEAD.name)
            except Exception:
                ready = False
        return web.Response(status=200 if ready else 503, text="ok" if ready else "orchestrator not ready")


@web.middleware
async def security_headers(request: web.Request, handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    # no other site frames the page (it asks for the microphone): clickjacking
    response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def own_pages(origins: Collection[str], hosts: Collection[str]):
    """A request for a host name the gateway does not serve, and a POST sent by another site's page, are refused
    (`limits.check_host`, `limits.check_origin`; RELIABILITY.md, "A tenth pass")."""
    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        try:
            check_host(request.headers.get("Host"), hosts)
            if request.method == "POST":
                check_origin(request.headers.get("Origin"), request.headers.get("Host"), origins)
        except Refused as e:
            return refusal(e)
        return await handler(request)
    return middleware


@web.middleware
async def identity_bodies(request: web.Request, handler) -> web.StreamResponse:
    """A compressed request body is refused: the runner does not decompress (a browser sends none; aiohttp inflated
    1 MB of gzip toward 1000 MB on the gateway's one loop before the 10 MiB bound refused it: every browser's video
    stopped for 1.26 s, RELIABILITY.md "A seventh pass")."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        return web.Response(status=415, text=f"Content-Encoding {encoding[:40]!r} is not accepted: send the body "
                                             "uncompressed")
    return await handler(request)


def unread_responses_closed(after_s: float):
    """Middleware: a connection whose client takes none of its responses for `after_s` is closed by the kernel
    (TCP_USER_TIMEOUT covers data left unsent behind a zero window). aiohttp has no write timeout: a client that
    pipelined requests and never read the answers held its connection past the idle bound, indefinitely, each with
    its unsent responses (RELIABILITY.md, "A seventh pass")."""
    ms = int(after_s * 1000)

    @web.middleware
    async def bound(request: web.Request, handler) -> web.StreamResponse:
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, ms)
        return await handler(request)
    return bound


def make_runner(gateway: Gateway, stats: bool = False) -> web.AppRunner:
    """The application's runner (`stats`: /stats beside the page, see `make_app`): a connection without a whole
    request for `idle_connection_s` is closed; request bodies are taken as sent, never decompressed
    (`identity_bodies`)."""
    return web.AppRunner(make_app(gateway, stats=stats), access_log=None,
                         keepalive_timeout=gateway.limits.idle_connection_s, auto_decompress=False)


def make_app(gateway: Gateway, middlewares: tuple = (), stats: bool = False) -> web.Application:
    """The aiohttp application the browsers reach; `middlewares` run before every handler (the place for
    authentication). /stats (every recent reply's session, turn and latencies, what the bounds refused) is the
    operator's: on its own listener (`make_stats_runner`), here only with `stats` (a benchmark on one machine)."""
    checks = [unread_responses_closed(gateway.limits.idle_connection_s),
              own_pages(gateway.page_origins, gateway.allowed_hosts), identity_bodies]
    app = web.Application(middlewares=[*checks, *middlewares, security_headers], client_max_size=MAX_IMAGE_BYTES + 1024)
    app.on_startup.append(gateway.startup)
    app.on_shutdown.append(gateway.shutdown)
    app.router.add_get("/", gateway.index)
    app.router.add_get("/config", gateway.config)
    app.router.add_post("/avatar", gateway.avatar)
    app.router.add_post("/offer", gateway.offer)
    if stats:
        app.router.add_get("/stats", gateway.stats_handler)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_static("/static/", STATIC, show_index=False)
    return app


def make_stats_runner(gateway: Gateway) -> web.AppRunner:
    """The operator's listener: GET /stats and /healthz only (RELIABILITY.md, "A ninth pass": /stats on the page's
    port told anyone every recent reply's session id and timing, and what the bounds had refused)."""
    app = web.Application(middlewares=[security_headers])
    app.router.add_get("/stats", gateway.stats_handler)
    app.router.add_get("/healthz", gateway.healthz)
    return web.AppRunner(app, access_log=None, keepalive_timeout=gateway.limits.idle_connection_s)
