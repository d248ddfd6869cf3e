"""A session's DTLS transports: renegotiation refused on them, and each stopped however its peer left it.

WebRTC never renegotiates DTLS (browsers' stacks refuse it), but OpenSSL, as aiortc 1.16 sets it up, takes a
renegotiation its peer asks for, each a new handshake on the gateway's one event loop, as often as the peer likes
(RELIABILITY.md, "An eighth pass"). Once a session is connected, `refuse_renegotiation` sets SSL_OP_NO_RENEGOTIATION on
its connections: OpenSSL answers a renegotiation request with a no_renegotiation alert (OpenSSL 4.0 on the asking
side takes that as fatal: that session's DTLS is then broken at both ends, its own doing).

A DTLS connection broken by its peer (a fatal alert; the refused renegotiation above) stays "connected" to aiortc,
which reads past the error, and `RTCPeerConnection.close()` then raises `SSL.Error` from its first step (the SCTP
association's ABORT) and stops nothing after it: the session's DTLS and ICE transports, their UDP sockets and
consent checks, would stay for as long as the gateway runs. `stop_transports` stops each of them regardless.
"""
from __future__ import annotations

import contextlib

from aiortc import RTCDtlsTransport, RTCPeerConnection
from OpenSSL import SSL


def dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    """The peer connection's DTLS transports (one when its media are bundled)."""
    found = [t.receiver.transport for t in pc.getTransceivers()] + ([pc.sctp.transport] if pc.sctp else [])
    return list({id(d): d for d in found if d is not None}.values())


def refuse_renegotiation(pc: RTCPeerConnection) -> int:
    """Set SSL_OP_NO_RENEGOTIATION on each connected DTLS transport of `pc`; how many it was set on."""
    done = 0
    for dtls in dtls_transports(pc):
        connection = getattr(dtls, "_ssl", None)  # aiortc creates it when the handshake starts
        if connection is not None:
            connection.set_options(SSL.OP_NO_RENEGOTIATION)
            done += 1
    return done


async def stop_transports(pc: RTCPeerConnection) -> None:
    """Stop each DTLS transport of `pc` and the ICE transport under it, each step whatever the others raise."""
    for dtls in dtls_transports(pc):
        for stop in (dtls.stop, dtls.transport.stop):
            with contextlib.suppress(Exception):  # SSL.Error from a broken connection, ConnectionError
                await stop()
