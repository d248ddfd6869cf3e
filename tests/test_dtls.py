"""DTLS renegotiation refused on a connected session, and a session closed whatever aiortc's close() does
(deploy/gateway/dtls.py), on a real aiortc pair in this process: the offerer is the DTLS server of the pair, as a
browser (or an attacker) is of its gateway session, and asks for renegotiations; the answerer is the gateway."""
from __future__ import annotations

import asyncio
import contextlib
import time

from OpenSSL import SSL
from webrtc_pair import connected_pair

from deploy.gateway.dtls import close_connection, dtls_transports, on_transport_end, refuse_renegotiation
from loadtests.gateway_rtp import SILENCE_20MS, RawMicrophone, SilentMicrophone
from loadtests.gateway_transports import ask_renegotiation


async def renegotiations(refuse: bool, n: int = 20) -> tuple[int, list]:
    """(renegotiations the client completed of `n` asked, what the gateway then got on the data channel when
    renegotiation was not refused)."""
    async with connected_pair() as (client, channel, gateway, got, _):
        if refuse:
            assert refuse_renegotiation(gateway) == 1  # bundled: one transport
        dtls, completed = client.sctp.transport, 0
        for _ in range(n):
            with contextlib.suppress(SSL.Error):  # refused, on the gateway's alert
                await ask_renegotiation(dtls)
            t = time.monotonic()
            while dtls._ssl.renegotiate_pending() and time.monotonic() - t < 0.3:
                await asyncio.sleep(0.005)
            completed += not dtls._ssl.renegotiate_pending()
        if not refuse:
            channel.send("still here")
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return completed, got


def test_without_the_option_openssl_renegotiates_each_time_asked():
    completed, got = asyncio.run(renegotiations(refuse=False))
    assert completed == 20 and got == ["still here"]


def test_a_connected_session_refuses_renegotiation():
    """The gateway answers with a no_renegotiation alert; the asking side's OpenSSL takes the refusal as fatal (that
    session's DTLS is then broken: it asked for what WebRTC never does)."""
    completed, _ = asyncio.run(renegotiations(refuse=True))
    assert completed == 0


def test_a_close_that_never_returns_is_given_up_and_the_transports_stopped():
    """70 SSRCs on an unguarded gateway's microphone line: the report of them all is past a packet's size, aiortc's
    RTCP task dies, and its close() waits for that task for ever (without the timeout this test would hang; its own
    wait_for fails it instead). The client's close is seen on the DTLS transport, where aiortc never reports it."""
    async def scenario():
        async with connected_pair(mic=SilentMicrophone()) as (client, channel, gateway, got, _):
            mic = RawMicrophone(client)
            for n in range(70):
                await mic.send(5000 + n, n * 960, SILENCE_20MS)
            (receiver,) = [t.receiver for t in gateway.getTransceivers() if t.kind == "audio"]
            rtcp = receiver._RTCRtpReceiver__rtcp_task
            deadline = time.monotonic() + 5
            while not rtcp.done() and time.monotonic() < deadline:  # its first report: 0.5 to 1.5 s
                await asyncio.sleep(0.05)
            assert rtcp.done() and isinstance(rtcp.exception(), ValueError)  # "packet is too long"
            ice, ended = [d.transport for d in dtls_transports(gateway)], []
            on_transport_end(gateway, lambda: ended.append(time.monotonic()))
            await client.close()  # its DTLS close_notify: aiortc starts a close() of its own, which never returns
            await asyncio.sleep(1.0)
            assert ended and gateway.connectionState == "connected"  # aiortc never says "closed"; the transport did
            t = time.monotonic()
            failed = await asyncio.wait_for(close_connection(gateway, timeout_s=1.0), 10)
            assert failed == "close() had not returned after 1 s" and time.monotonic() - t < 3
            assert [i.state for i in ice] == ["closed"] * len(ice)
    asyncio.run(scenario())
