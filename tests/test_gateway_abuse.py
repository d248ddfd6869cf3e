"""The WebRTC gateway against a hostile client (issue 15's classes on the browser endpoint), with the real gateway
app and the real embedded tritonserver: malformed and oversized offers refused before parsing with errors that
name the problem, options checked at the offer, one client's sessions and avatar uploads bounded while another
client is served, and offers that never connect ending on their own. (tests/test_gateway_limits.py: the bounds
alone; `python -m loadtests.gateway_abuse`: the same attacks with a connected victim's media measured.)"""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
import zlib

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection
from aiortc.sdp import SessionDescription
from OpenSSL import SSL
from test_gateway_limits import browser_like_offer
from webrtc_pair import until

from deploy.gateway.app import Gateway, make_runner, make_stats_runner
from deploy.gateway.dtls import dtls_transports
from deploy.gateway.ice import IceSettings
from deploy.gateway.limits import GatewayLimits
from deploy.session_tokens import SessionTokens
from ensemble.avatar import demo_avatar_png
from loadtests.gateway_connections import UnreadPipeline, address
from loadtests.gateway_peer import Peer
from loadtests.gateway_rtp import SILENCE_20MS, RawMicrophone, SilentMicrophone, opus_packet
from loadtests.gateway_transports import VideoSeen, ask_renegotiation, closed, gap_sack

pytestmark = pytest.mark.server


@contextlib.asynccontextmanager
async def running(server, limits: GatewayLimits, ice: IceSettings | None = None,
                  tokens: SessionTokens | None = None, page_origins: tuple[str, ...] = (),
                  allowed_hosts: tuple[str, ...] = ()):
    """The gateway app on a free loopback port, clients named by X-Forwarded-For (two clients from one host)."""
    gw = Gateway(server.options.grpc_url, ice, ready_poll_s=0, limits=limits, client_header="X-Forwarded-For",
                 tokens=tokens, page_origins=page_origins, allowed_hosts=allowed_hosts)
    runner = make_runner(gw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            yield gw, http
    finally:
        await runner.cleanup()


def as_client(name: str) -> dict:
    return {"X-Forwarded-For": name}


async def post(http, path: str, client: str = "198.51.100.1", headers: dict | None = None,
               **kw) -> tuple[int, str, float]:
    t = time.monotonic()
    async with http.post(path, headers={**as_client(client), **(headers or {})}, **kw) as r:
        return r.status, await r.text(), time.monotonic() - t


def test_malformed_and_oversized_offers_are_refused_before_parsing(server):
    sdp = browser_like_offer()

    async def scenario():
        async with running(server, GatewayLimits()) as (gw, http):
            for body in (b"[1]", b"null", b'"offer"'):
                status, text, _ = await post(http, "/offer", data=body)
                assert (status, text) == (400, 'expected a JSON object {"sdp": ..., "type": "offer"}'), body
            status, text, _ = await post(http, "/offer", data=b"[" * 30_000)
            assert status == 400 and "nested too deeply" in text
            status, text, _ = await post(http, "/offer", data=json.dumps({"type": "offer", "sdp": "v=0"}))
            assert (status, text) == (400, "the offer has no media section (m= line)")
            # 2.8 MB of distinct ssrc lines: aiortc's parser held the loop for 45 s before the bound
            bomb = sdp + "".join(f"a=ssrc:{1000 + i} cname:x\r\n" for i in range(120_000))
            status, text, took = await post(http, "/offer", data=json.dumps({"type": "offer", "sdp": bomb}))
            assert status == 413 and "over 65536 bytes" in text and took < 2.0, (status, text, took)
            chunked = post(http, "/offer", data=_chunks(json.dumps({"type": "offer", "sdp": bomb}).encode()))
            status, text, _ = await chunked  # no Content-Length: counted as it comes
            assert status == 413, (status, text)
            lines = sdp + "".join(f"a=ssrc:{1000 + i} cname:x\r\n" for i in range(1000))
            status, text, _ = await post(http, "/offer", data=json.dumps({"type": "offer", "sdp": lines}))
            assert status == 400 and "lines; the limit is 1000" in text
            for options, needle in (({"seed": 1.5}, "option seed=1.5 must be an integer"),
                                    ({"lipsync_batch": 100000}, "option lipsync_batch=100000 is out of range 1..64"),
                                    ({"deadline_s": 1e9}, "option deadline_s=1000000000.0 is out of range")):
                status, text, _ = await post(http, "/offer", data=json.dumps({"type": "offer", "sdp": sdp,
                                                                             "options": options}))
                assert status == 400 and needle in text, (options, status, text)
            assert not gw.sessions  # nothing of these was started

    asyncio.run(scenario())


async def _chunks(data: bytes):
    for i in range(0, len(data), 65536):
        yield data[i:i + 65536]


def test_one_clients_offers_are_bounded_and_unconnected_sessions_end(server):
    sdp = browser_like_offer()
    limits = GatewayLimits(sessions_per_client=3, connect_timeout_s=2.0)

    async def scenario():
        async with running(server, limits) as (gw, http):
            offer = json.dumps({"type": "offer", "sdp": sdp})
            answers = [await post(http, "/offer", "203.0.113.66", data=offer) for _ in range(5)]
            assert [a[0] for a in answers] == [200, 200, 200, 429, 429], answers
            assert "this client (203.0.113.66) has 3 sessions open (limit 3)" in answers[3][1]
            status, text, _ = await post(http, "/offer", "192.0.2.10", data=offer)  # another client: served
            assert status == 200, text
            assert len(gw.sessions) == 4
            deadline = time.monotonic() + 15
            while gw.sessions and time.monotonic() < deadline:  # never connected: ended after 2 s
                await asyncio.sleep(0.2)
            assert not gw.sessions and gw.stats.sessions_unconnected == 4
            status, text, _ = await post(http, "/offer", "203.0.113.66", data=offer)
            assert status == 200, text  # its slots came back
            assert gw.stats.summary()["sessions_unconnected"] == 4

    asyncio.run(scenario())


def test_one_clients_avatar_uploads_are_bounded_and_another_client_uploads(server):
    png = demo_avatar_png()
    face = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)

    def image(k: int) -> bytes:
        a = face.copy()
        a[0, 0] = (k, 0, 0)  # another image, another avatar id
        return cv2.imencode(".png", a)[1].tobytes()

    async def scenario():
        async with running(server, GatewayLimits(upload_burst=2, uploads_per_hour=1)) as (gw, http):
            first = [await post(http, "/avatar", "203.0.113.66", data=image(k)) for k in range(3)]
            assert [s for s, _, _ in first] == [200, 200, 429], first
            assert "more than 1 an hour (burst 2) from this client (203.0.113.66)" in first[2][1]
            status, text, _ = await post(http, "/avatar", "192.0.2.10", data=image(9))
            assert status == 200 and len(json.loads(text)["id"]) == 16, text
            status, text, _ = await post(http, "/avatar", "192.0.2.10", data=b"not an image")
            assert status == 400 and "image" in text, text  # the registry's own message

    asyncio.run(scenario())


def test_a_compressed_body_is_refused_unread(server):
    """1 MB of gzip that inflates to 256 MiB: 415 naming the encoding, for the avatar and the offer alike (before:
    aiohttp inflated it on the gateway's loop until the 10 MiB bound refused it, 413); the same image uncompressed
    registers."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(z.compress(bytes(1 << 20)) for _ in range(256)) + z.flush()
    png = demo_avatar_png()

    async def scenario():
        async with running(server, GatewayLimits()) as (gw, http):
            for path in ("/avatar", "/offer"):
                status, text, _ = await post(http, path, data=bomb, headers={"Content-Encoding": "gzip"})
                assert status == 415 and "Content-Encoding 'gzip' is not accepted" in text, (path, status, text)
            status, text, _ = await post(http, "/avatar", data=gzip.compress(png),
                                         headers={"Content-Encoding": "GZIP "})
            assert status == 415, text
            status, text, _ = await post(http, "/avatar", data=png, headers={"Content-Encoding": "identity"})
            assert status == 200 and len(json.loads(text)["id"]) == 16, text

    asyncio.run(scenario())


def test_a_client_that_never_reads_its_responses_is_closed(server):
    """2000 page requests pipelined on one connection whose client reads nothing (a 4 KiB receive buffer): the
    gateway's end is closed once its responses have waited the idle bound (1 s here). Before, it was held for as long
    as the client liked."""
    async def scenario():
        async with running(server, GatewayLimits(idle_connection_s=1)) as (gw, http):
            pipe = await UnreadPipeline.connect(*await address(http), 2000)
            try:
                assert pipe.held()
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    pipe.push()
                    await asyncio.sleep(0.1)
                    if not pipe.pending and not pipe.held():
                        break
                assert not pipe.pending and not pipe.held(), "the gateway still holds the connection 15 s later"
            finally:
                pipe.sock.close()

    asyncio.run(scenario())


def test_the_answer_lets_a_browser_send_its_microphone_and_nothing_else(server):
    """A client offering to send video (aiortc would decode it into a queue nobody reads: 182 -> 862 MiB in 20 s of
    1280x720) and a second audio line gets an answer that receives the first audio line only."""
    async def offer_all() -> str:
        pc = RTCPeerConnection()
        pc.createDataChannel("events")
        for kind in ("audio", "audio", "video"):
            pc.addTransceiver(kind, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    async def scenario():
        async with running(server, GatewayLimits()) as (gw, http):
            status, text, _ = await post(http, "/offer", data=json.dumps({"type": "offer", "sdp": await offer_all()}))
            assert status == 200, text
            answer = SessionDescription.parse(json.loads(text)["sdp"])
            directions = [(m.kind, m.direction) for m in answer.media if m.kind != "application"]
            assert directions == [("audio", "sendrecv"), ("audio", "inactive"), ("video", "sendonly")], directions
            for sid in list(gw.sessions):
                await gw.end(sid)

    asyncio.run(scenario())


def test_a_half_sent_request_is_closed_after_the_idle_bound(server):
    """A connection that never finishes its request (slowloris) is closed after `idle_connection_s` (aiohttp's own
    default held it for 3630 s: 3000 of them from one client held +40 MiB of the gateway for the hour)."""
    async def scenario():
        async with running(server, GatewayLimits(idle_connection_s=1.0)) as (gw, http):
            host, port = await address(http)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-Slow: ")
            t = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # the gateway closed it
            took = time.monotonic() - t
            writer.close()
            assert 0.9 < took < 5, took

    asyncio.run(scenario())


def test_a_peer_breaking_sctp_is_ended_and_another_session_keeps_its_media(server):
    """A connected client's NACKs past the retransmission budget are not acted on, and its SACK naming 19 million
    TSNs the gateway never sent (20 of them, 23 KB, froze every session's video 21 s and dropped them before
    sctp_guard.py) ends its session at once; another session's video goes on; /stats counts both."""
    async def scenario():
        async with running(server, GatewayLimits()) as (gw, http):
            victim, attacker = Peer(), Peer()
            assert (await victim.connect(http, "192.0.2.1"))[0] == 200
            assert (await attacker.connect(http, "203.0.113.66"))[0] == 200
            video = VideoSeen(attacker.pc)
            await until(lambda: victim.receiving() and video.packets > 0, 20)
            t = time.monotonic()
            await video.transport._send_rtp(video.nack(297))  # 5049 retransmissions asked, 128 made at most
            for _ in range(3):
                await attacker.pc.sctp._send_chunk(gap_sack(attacker.pc.sctp, 290))
            await until(lambda: closed(attacker) and len(gw.sessions) == 1, 10)
            await asyncio.sleep(1.0)
            assert victim.receiving() and victim.largest_gap(t, time.monotonic()) < 0.5
            stats = gw.stats.summary()
            assert stats["sessions_broke_sctp"] == 1
            assert stats["refused"]["rtcp_retransmissions_refused"] >= 5049 - 128, stats["refused"]
            for peer in (victim, attacker):
                await peer.pc.close()

    asyncio.run(scenario())


def test_a_microphone_line_from_many_ssrcs_and_of_long_packets_is_bounded_and_its_session_ends(server):
    """A connected client's microphone line sends from 70 SSRCs, then 120 ms packets 100 times faster than real time:
    packets past the session's 8 SSRCs never reach libsrtp and aiortc, audio past 3 times real time is not decoded
    (/stats counts both); when the client closes, its session ends (before rtp_guard.py, aiortc's report of 70 SSRCs
    was past a packet's size, its RTCP task died and the session's close() waited for it forever); another
    session's video goes on."""
    async def scenario():
        async with running(server, GatewayLimits()) as (gw, http):
            victim, attacker = Peer(), Peer(mic=SilentMicrophone())
            assert (await victim.connect(http, "192.0.2.1"))[0] == 200
            assert (await attacker.connect(http, "203.0.113.66"))[0] == 200
            await until(lambda: victim.receiving(), 20)
            mic, payload, t = RawMicrophone(attacker.pc), opus_packet(120), time.monotonic()
            for n in range(70):
                await mic.send(9000 + n, n * 960, SILENCE_20MS)
            for n in range(100):  # 12 s of audio in about 0.15 s
                await mic.send(9000, (70 + n) * 5760, payload)
                await asyncio.sleep(0.001)
            await asyncio.sleep(2.0)  # a receiver report or two (every 0.5 to 1.5 s)
            refused = gw.stats.summary()["refused"]
            assert refused["srtp_packets_past_ssrcs"] >= 70 - GatewayLimits().rtp_ssrcs, refused
            assert refused["rtp_audio_past_rate"] >= 100 - 3 * 3.5 / 0.12 - 1, refused
            await attacker.pc.close()
            await until(lambda: len(gw.sessions) == 1 and gw.stats.sessions_ended == 1, 10)
            assert victim.receiving() and victim.largest_gap(t, time.monotonic()) < 0.5
            await victim.pc.close()

    asyncio.run(scenario())


def test_a_client_that_acknowledges_nothing_is_ended_once_its_messages_pile_up(server):
    """A client whose SCTP stack sends no SACK and asks for typed turns: aiortc queues every event of every reply for
    it without bound; past `max_unread_bytes` (here 4 KiB) the session is ended and /stats counts it."""
    async def scenario():
        async with running(server, GatewayLimits(max_unread_bytes=4096)) as (gw, http):
            attacker = Peer()
            status, sid = await attacker.connect(http, "203.0.113.66")
            assert status == 200

            async def no_sack() -> None:
                return None
            attacker.pc.sctp._send_sack = no_sack
            deadline = time.monotonic() + 60
            while sid in gw.sessions:
                assert time.monotonic() < deadline, "never ended"
                attacker.channel.send(json.dumps({"type": "text", "text": "Tell me something long."}))
                await asyncio.sleep(1.0)
            await until(lambda: gw.stats.sessions_ended == 1, 10)
            assert gw.stats.summary()["sessions_unread"] == 1
            await attacker.pc.close()

    asyncio.run(scenario())


def test_the_pages_of_one_client_get_one_turn_user_and_another_clients_another(server):
    """coturn's user-quota counts the username's part after its expiry: every page of one client gets the same part
    (a hash, not the address), another client another; a request without the proxy's header gets no credentials."""
    ice = IceSettings(["turn:turn.example.com:3478"], secret="s3cret")

    async def scenario():
        async with running(server, GatewayLimits(), ice) as (gw, http):
            users = []
            for client in ("203.0.113.66", "203.0.113.66", "192.0.2.1"):
                async with http.get("/config", headers=as_client(client)) as r:
                    (turn,) = (await r.json())["ice_servers"]
                    users.append(turn["username"].split(":", 1)[1])
            async with http.get("/config") as r:
                assert r.status == 403
            return users

    users = asyncio.run(scenario())
    assert users[0] == users[1] != users[2] and "203.0.113" not in users[0], users


def test_stats_are_the_operators_listeners_not_the_pages(server):
    """/stats names every recent reply's session and timing and what the bounds refused: the page's listener does
    not serve it (404), the operator's does, and serves nothing of the page's."""
    async def scenario():
        async with running(server, GatewayLimits()) as (gw, http):
            async with http.get("/stats") as r:
                assert r.status == 404
            runner = make_stats_runner(gw)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            try:
                async with aiohttp.ClientSession(f"http://127.0.0.1:{runner.addresses[0][1]}") as operator:
                    async with operator.get("/stats") as r:
                        figures = await r.json()
                        assert r.status == 200 and figures["active_sessions"] == 0 and figures["unread_bytes"] == 0
                    async with operator.post("/offer", data=b"{}") as r:
                        assert r.status in (404, 405)
            finally:
                await runner.cleanup()

    asyncio.run(scenario())


def test_a_session_whose_dtls_its_peer_broke_is_ended_with_its_transports_stopped(server):
    """A client asking to renegotiate DTLS is refused, which leaves its session's DTLS broken at both ends; aiortc's
    close() then raises and stops nothing after its first step, so the gateway stops the transports itself: the
    session's ICE transport (its UDP socket, its consent checks) closed, the gateway serving on."""
    offer = json.dumps({"type": "offer", "sdp": browser_like_offer()})

    async def scenario():
        async with running(server, GatewayLimits()) as (gw, http):
            attacker = Peer()
            status, sid = await attacker.connect(http, "203.0.113.66")
            assert status == 200
            _, pc = gw.sessions[sid]
            await until(lambda: pc.connectionState == "connected", 10)
            dtls = attacker.pc.sctp.transport
            await ask_renegotiation(dtls)
            await asyncio.sleep(0.5)
            assert dtls._ssl.renegotiate_pending()  # refused: never completed
            ice = [d.transport for d in dtls_transports(pc)]
            await gw.end(sid)  # raised SSL.Error from aiortc's close() and left the transports running
            assert sid not in gw.sessions and [t.state for t in ice] == ["closed"] * len(ice)
            with contextlib.suppress(SSL.Error):
                await attacker.pc.close()
            status, _, _ = await post(http, "/offer", "192.0.2.10", data=offer)
            assert status == 200

    asyncio.run(scenario())
