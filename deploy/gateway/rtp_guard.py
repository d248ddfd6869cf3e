"""What a browser session's RTP and RTCP may make the gateway keep, walk and decode.

The page sends one audio stream (one SSRC, 20 ms Opus packets, 50 a second) and RTCP from a few SSRCs of its own.
After its DTLS handshake a client can send any SRTP its session's keys protect, and aiortc 1.16 takes it on the
gateway's one event loop (RELIABILITY.md, "A ninth pass"):

- libsrtp (through pylibsrtp) keeps a stream for every SSRC it authenticates, for the session's life, in a list it
  walks for every packet: each new SSRC makes every later packet of that session slower (after 40000 SSRCs: ~0.8 ms
  a packet, +10 MiB; `python -m loadtests.srtp_streams`), without bound;
- aiortc's RTP router learns every new SSRC on the microphone's payload type as the microphone's, its receiver keeps
  statistics for each and reports on all of them every second (past 31 the report's count no longer fits its 5
  bits; past about 60 the report no longer fits a packet, aiortc's RTCP task dies, and the session's close() then
  waits for it forever: dtls.py);
- every packet goes to the Opus decoder, a thread fed by a queue without a bound: a packet may hold 120 ms of audio,
  so 2000 small packets a second ask 240 s of decoding a second; the queue grows past what the thread decodes, the
  decoded frames are resampled on the loop, and closing the session (or an RTCP BYE) joins the decoder thread on
  the loop, which first decodes all that is queued.

`KnownSsrcs` sits in front of a session's inbound SRTP: a packet from an SSRC past the first `rtp_ssrcs` it
authenticated (the page uses one to three) is dropped before libsrtp sees it, by the SSRC in its clear header; a
stranger's packets, which fail authentication, learn nothing. `RtpGuard` sits in front of the RTP router: each
packet spends the audio it holds (its Opus table of contents, RFC 6716 section 3.1; at least 20 ms, a browser's
packet) from a budget of `mic_decode_speedup` times real time (bursts of as many seconds), and a packet past it is
dropped before it is decoded. A browser's microphone sends real time; the microphone's own bound (`mic_speedup`, 1.5
times real time, on the decoded audio the server gets) is below this one too.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pylibsrtp
from aiortc import RTCPeerConnection

from deploy.front_door.quota import TokenBucket
from deploy.gateway.dtls import dtls_transports
from deploy.gateway.limits import GatewayLimits

FRAME_MS = (10, 20, 40, 60) * 3 + (10, 20) * 2 + (2.5, 5, 10, 20) * 4  # by the TOC byte's configuration, 0..31
MIN_PACKET_MS = 20.0  # what a packet costs at least (a browser's: 20 ms)
MAX_PACKET_MS = 120.0  # the most one Opus packet may hold (RFC 6716 section 3.2.5)


def opus_ms(payload: bytes) -> float | None:
    """The audio an Opus packet holds, in ms, from its table of contents; None if the TOC is not a valid one."""
    if not payload:
        return None
    frame_ms, code = FRAME_MS[payload[0] >> 3], payload[0] & 3
    if code == 3:
        if len(payload) < 2 or payload[1] & 0x3F == 0:
            return None
        frames = payload[1] & 0x3F
    else:
        frames = 1 if code == 0 else 2
    ms = frame_ms * frames
    return ms if ms <= MAX_PACKET_MS else None


class KnownSsrcs:
    """Stands in for a DTLS transport's inbound SRTP session (`_rx_srtp`): packets from at most `limit` SSRCs, learned
    as packets from them are authenticated, reach it. `counts` gets those dropped (`srtp_packets_past_ssrcs`)."""

    def __init__(self, session: pylibsrtp.Session, limit: int, counts: Counter):
        self.session, self.limit, self.counts, self.known = session, limit, counts, set()

    def unprotect(self, data: bytes) -> bytes:
        return self._unprotect(data, data[8:12], self.session.unprotect)  # RTP: the SSRC after seq and timestamp

    def unprotect_rtcp(self, data: bytes) -> bytes:
        return self._unprotect(data, data[4:8], self.session.unprotect_rtcp)  # RTCP: the sender's SSRC

    def _unprotect(self, data: bytes, ssrc: bytes, unprotect: Callable[[bytes], bytes]) -> bytes:
        if ssrc in self.known:
            return unprotect(data)
        if len(self.known) >= self.limit:
            self.counts["srtp_packets_past_ssrcs"] += 1
            raise pylibsrtp.Error(f"a packet from a new SSRC past the session's {self.limit}: dropped")
        plain = unprotect(data)  # raises unless the packet is the peer's
        self.known.add(ssrc)
        return plain


class RtpGuard:
    """Bounds the audio a session's RTP router passes to its receivers' decoders. `counts` (the gateway's, shared by
    its sessions and shown at /stats) gets the packets dropped (`rtp_audio_past_rate`)."""

    def __init__(self, router, limits: GatewayLimits, counts: Counter | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not hasattr(router, "route_rtp"):
            raise RuntimeError("aiortc's RTP router has no route_rtp: the gateway's RTP guard is written for aiortc "
                               "1.16 (requirements-gateway.txt)")
        per_second = limits.mic_decode_speedup * 1000 / MIN_PACKET_MS  # in packets of MIN_PACKET_MS
        self.audio = TokenBucket(per_second, int(per_second), clock)
        self.counts = Counter() if counts is None else counts
        self._route = router.route_rtp
        router.route_rtp = self._checked  # the DTLS transport calls it through the instance

    def _checked(self, packet):
        receiver = self._route(packet)
        if receiver is None:
            return None
        if not self.audio.take(max(MIN_PACKET_MS, opus_ms(packet.payload) or MIN_PACKET_MS) / MIN_PACKET_MS):
            self.counts["rtp_audio_past_rate"] += 1
            return None
        return receiver


def guard_rtp(pc: RTCPeerConnection, limits: GatewayLimits, counts: Counter | None = None) -> None:
    """Once `pc`'s remote description is set: an `RtpGuard` on the RTP router of each of its DTLS transports (one
    with BUNDLE), and `KnownSsrcs` in front of each one's inbound SRTP as the handshake makes it (the transport
    announces "connected" before it reads a packet)."""
    counts = Counter() if counts is None else counts
    for dtls in dtls_transports(pc):
        if not hasattr(dtls, "_rx_srtp"):
            raise RuntimeError("aiortc's DTLS transport has no _rx_srtp: the gateway's RTP guard is written for "
                               "aiortc 1.16 (requirements-gateway.txt)")
        RtpGuard(dtls._rtp_router, limits, counts)

        def connected(dtls=dtls) -> None:
            if dtls.state == "connected" and not isinstance(dtls._rx_srtp, KnownSsrcs):
                dtls._rx_srtp = KnownSsrcs(dtls._rx_srtp, limits.rtp_ssrcs, counts)
        dtls.on("statechange", connected)
