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

`close()` can also wait forever: an RTP receiver's stop waits for its RTCP task to end, and that task dies (its
exception unread) when one report of the SSRCs its peer sent no longer fits a packet (about 60 SSRCs, 60 tiny
packets: RELIABILITY.md, "A ninth pass"); the close then never returns and stops none of the session's senders or
transports. `close_connection` gives `close()` `CLOSE_TIMEOUT_S`, then stops the transports itself. And since aiortc
says a connection is "closed" only once that close() is done (it starts one itself when its peer closes DTLS),
`on_transport_end` tells the gateway of a closed or failed DTLS transport itself.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiortc import RTCDtlsTransport, RTCPeerConnection
from OpenSSL import SSL

CLOSE_TIMEOUT_S = 5.0  # what aiortc's close() of one session may take (it takes milliseconds)


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


async def close_connection(pc: RTCPeerConnection, timeout_s: float = CLOSE_TIMEOUT_S) -> str | None:
    """Close `pc`; if aiortc's `close()` raises or has not returned in `timeout_s`, stop its transports one by one.
    None, or what went wrong (for the log)."""
    try:
        await asyncio.wait_for(pc.close(), timeout_s)
        return None
    except asyncio.TimeoutError:
        failed = f"close() had not returned after {timeout_s:g} s"
    except Exception as e:  # SSL.Error from a broken DTLS connection
        failed = f"close() raised {type(e).__name__}: {e}"
    await stop_transports(pc)
    return failed


def on_transport_end(pc: RTCPeerConnection, callback: Callable[[], object]) -> None:
    """Call `callback()` when a DTLS transport of `pc` is closed or fails (its peer closed it, or it broke), whether
    or not aiortc's own close() of `pc`, which it then starts, ever returns."""
    for dtls in dtls_transports(pc):
        dtls.on("statechange", lambda dtls=dtls: dtls.state in ("closed", "failed") and callback())
