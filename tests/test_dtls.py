"""DTLS renegotiation refused on a connected session (deploy/gateway/dtls.py), on a real aiortc pair in this process:
the offerer is the DTLS server of the pair, as a browser (or an attacker) is of its gateway session, and asks for
renegotiations; the answerer is the gateway."""
from __future__ import annotations

import asyncio
import contextlib
import time

from OpenSSL import SSL
from webrtc_pair import connected_pair

from deploy.gateway.dtls import refuse_renegotiation
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
