"""The media the gateway receives: a connected peer whose microphone sends RTP no browser sends, cases of
`python -m loadtests.gateway_abuse` (RELIABILITY.md, "A ninth pass").

The page sends one audio stream: one SSRC, 20 ms Opus packets, 50 a second. A client need not: after its DTLS
handshake, any SRTP packet it protects with its session's keys reaches aiortc's RTP router, which learns every new
SSRC on the microphone's payload type as the microphone's, and its receiver, which keeps statistics for each SSRC and
hands each packet to its Opus decoder (a thread of its own, fed by a queue without a bound). The attacker here is
aiortc, connected as the page is, its microphone silent, sending RTP packets of its own making on the microphone's
line.
"""
from __future__ import annotations

import asyncio
import fractions
import random
import time
from collections import Counter

import av
import numpy as np
import psutil
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription

from loadtests.gateway_peer import Peer, short
from loadtests.gateway_transports import closed, ended

SILENCE_20MS = b"\xf8\xff\xfe"  # an Opus packet of 20 ms of silence (CELT, fullband): what a muted browser sends


class SilentMicrophone(MediaStreamTrack):
    """A microphone that never yields a frame: aiortc sends nothing of its own, the case sends what it makes."""

    kind = "audio"

    async def recv(self):
        await asyncio.Event().wait()


def opus_packet(ms: float, kbps: int = 24) -> bytes:
    """One Opus packet of `ms` ms of noise (120 ms is the longest a packet may hold), as libopus encodes it."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate, codec.format, codec.layout, codec.sample_rate = kbps * 1000, "s16", "mono", 48000
    codec.time_base = fractions.Fraction(1, 48000)
    codec.options = {"frame_duration": f"{ms:g}", "application": "audio"}
    noise = (np.random.default_rng(0).standard_normal((1, int(48 * ms))) * 8000).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(noise, format="s16", layout="mono")
    frame.sample_rate, frame.pts = 48000, 0
    return bytes((codec.encode(frame) + codec.encode(None))[0])


class RawMicrophone:
    """A connected peer's microphone line, sending RTP packets of the caller's making (SRTP-protected with the
    peer's own session keys, as its sender would)."""

    def __init__(self, pc: RTCPeerConnection):
        audio = next(m for m in SessionDescription.parse(pc.remoteDescription.sdp).media if m.kind == "audio")
        self.payload_type = next(c.payloadType for c in audio.rtp.codecs if c.mimeType.lower() == "audio/opus")
        self.transport = next(t.sender.transport for t in pc.getTransceivers() if t.kind == "audio")
        self.sent = 0

    async def send(self, ssrc: int, timestamp: int, payload: bytes) -> int:
        """Send one packet; its size in bytes."""
        data = RtpPacket(payload_type=self.payload_type, sequence_number=self.sent % 65536,
                         timestamp=timestamp % 2**32, ssrc=ssrc, payload=payload).serialize()
        await self.transport._send_rtp(data)
        self.sent += 1
        return len(data)

    def fresh_srtp(self) -> None:
        """Make the peer's own SRTP session again, the same keys: its libsrtp walks a list of every SSRC it
        protected, as the gateway's does, and an attacker with SRTP of its own would not."""
        self.transport._setup_srtp()


async def stats(http) -> dict:
    """The gateway's /stats (the harness serves it beside the page: `--stats-port` equal to `--port`)."""
    async with http.get("/stats") as r:
        return await r.json()


async def refused_counts(http) -> Counter:
    return Counter((await stats(http)).get("refused", {}))


async def rtp_flood(http, make, seconds: float, per_second: float, fresh_srtp_every: int = 0) -> str:
    """Connect an attacker with a silent microphone, then send `make(n)` -> (ssrc, timestamp, payload) as RTP on the
    microphone's line, `per_second` packets a second for `seconds` (a fresh SRTP session of its own every
    `fresh_srtp_every` packets). Says what the gateway's /stats counted as refused meanwhile."""
    peer = Peer(mic=SilentMicrophone())
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    mic, refused = RawMicrophone(peer.pc), await refused_counts(http)
    t0, size = time.monotonic(), 0
    while time.monotonic() - t0 < seconds and not closed(peer):
        if fresh_srtp_every and mic.sent % fresh_srtp_every == 0:
            mic.fresh_srtp()
        size = await mic.send(*make(mic.sent))
        if mic.sent % 10 == 0:
            await asyncio.sleep(max(0.0, t0 + mic.sent / per_second - time.monotonic()))
    took = time.monotonic() - t0
    outcome = ended(peer)
    await peer.pc.close()
    refused = await refused_counts(http) - refused
    return (f"{mic.sent} RTP packets of {size} bytes in {took:.1f} s ({mic.sent / took:.0f} a second); {outcome}"
            + "".join(f"; {n} {kind}" for kind, n in sorted(refused.items())))


async def rtp_new_ssrcs(http, victim, seconds: float = 20.0, per_second: float = 5000.0) -> str:
    """Each packet from a new SSRC (20 ms of silence on the microphone's payload type), 5000 a second: libsrtp keeps
    a stream for each and walks them all for every packet; aiortc's router learns each as the microphone's, its
    receiver keeps statistics for each and reports on all of them every second."""
    first = random.getrandbits(31)
    return await rtp_flood(http, lambda n: (first + n, n * 960, SILENCE_20MS), seconds, per_second,
                           fresh_srtp_every=1000)


async def rtp_long_packets(http, victim, seconds: float = 20.0, per_second: float = 2000.0) -> str:
    """One SSRC, each packet 120 ms of Opus (the longest one may hold; 24 kbit/s, ~360 bytes), 2000 a second: 240 s of
    audio a second for the decoder, six times what the same packets of 20 ms would ask."""
    payload, ssrc = opus_packet(120), random.getrandbits(32)
    return await rtp_flood(http, lambda n: (ssrc, n * 5760, payload), seconds, per_second)


async def rtp_undecodable(http, victim, seconds: float = 20.0, per_second: float = 150.0) -> str:
    """150 packets a second whose Opus table of contents is valid (two frames of 20 ms) and whose frames are not
    (the first claims 250 bytes of a 13-byte packet): each fails in the decoder, which aiortc logs as a warning."""
    ssrc, payload = random.getrandbits(32), bytes([0xFB, 0x82, 250]) + b"x" * 10
    return await rtp_flood(http, lambda n: (ssrc, n * 1920, payload), seconds, per_second)


def gateway_process(http) -> psutil.Process:
    """The gateway serving `http` (`python -m deploy.gateway ... --port PORT`)."""
    port = str(http._base_url.port)
    return next(p for p in psutil.process_iter(["cmdline"]) if "deploy.gateway" in (p.info["cmdline"] or [])
                and port in p.info["cmdline"])


async def rtp_ssrcs_then_close(http, victim, sessions: int = 6, ssrcs: int = 70) -> str:
    """`sessions` sessions one after the other, each sending one packet from each of `ssrcs` SSRCs, then closed by
    its client 2.5 s later: aiortc's receiver report of 70 SSRCs is past a packet's size, its RTCP task dies, and its
    close() then waits forever for that task."""
    gateway, before = gateway_process(http), await stats(http)
    fds, done, refused = gateway.num_fds(), 0, ""
    for _ in range(sessions):
        peer = Peer(mic=SilentMicrophone())
        status, text = await peer.connect(http)
        if status != 200:
            await peer.pc.close()
            refused = f"; the next offer: {short(status, text)}"
            break
        mic = RawMicrophone(peer.pc)
        for n in range(ssrcs):
            await mic.send(random.getrandbits(32), n * 960, SILENCE_20MS)
        await asyncio.sleep(2.5)
        await peer.pc.close()
        done += 1
    await asyncio.sleep(8.0)
    after = await stats(http)
    return (f"{done} sessions of {ssrcs} SSRCs each, closed by the client; the gateway ended "
            f"{after['sessions_ended'] - before['sessions_ended']} of them 8 s later, {gateway.num_fds() - fds:+d} "
            f"open files{refused}")


CASES = (rtp_new_ssrcs, rtp_long_packets, rtp_ssrcs_then_close, rtp_undecodable)
