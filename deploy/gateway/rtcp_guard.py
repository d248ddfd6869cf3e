"""What a browser session's RTCP feedback may make the gateway send.

aiortc 1.16 answers a generic NACK by retransmitting every packet it names that it still keeps (the last 128 of the
stream), as often as it is named: one NACK of 1200 bytes can name the same 17 packets 297 times over, 5049
retransmissions of ~1 KB each, and nothing bounds how many NACKs come (RELIABILITY.md, "An eighth pass").
`RtcpGuard` sits in front of one sender's RTCP handling: a NACK's packets are taken once each (in the order named),
and retransmissions are spent from a budget of `retransmissions_per_second` (burst: the 128 packets kept), about
what the video itself sends at its highest bitrate; what is past it is not retransmitted. A browser's NACKs name
each lost packet once and ask again only after a round trip, far inside it.

A picture loss indication (PLI, or FIR) makes the next frame a keyframe, several times a delta frame's encoding and
bytes; sent for every frame, the gateway encodes only keyframes for that session (RELIABILITY.md has the figures).
One is passed on per `keyframe_interval_s` (0.5 s), the rest dropped: a browser asks once when it loses a frame, and
the keyframe repairs it.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

from aiortc import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket

from deploy.front_door.quota import TokenBucket
from deploy.gateway.limits import GatewayLimits

HISTORY = 128  # packets aiortc keeps for retransmission (aiortc.rtp.RTP_HISTORY_SIZE)


class RtcpGuard:
    """Bounds the retransmissions and keyframes `sender`'s peer can ask for. `counts` (the gateway's, shared by its
    sessions and shown at /stats) gets the retransmissions not made (`rtcp_retransmissions_refused`) and the keyframe
    requests not passed on (`rtcp_keyframe_requests_dropped`)."""

    def __init__(self, sender: RTCRtpSender, limits: GatewayLimits, counts: Counter | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not hasattr(sender, "_handle_rtcp_packet"):
            raise RuntimeError("aiortc's RTP sender has no _handle_rtcp_packet: the gateway's RTCP guard is written "
                               "for aiortc 1.16 (requirements-gateway.txt)")
        self.budget = TokenBucket(limits.retransmissions_per_second, HISTORY, clock)
        self.counts = Counter() if counts is None else counts
        self.clock, self.keyframe_interval_s = clock, limits.keyframe_interval_s
        self.last_keyframe = -math.inf
        self._handle = sender._handle_rtcp_packet
        sender._handle_rtcp_packet = self._checked  # the DTLS transport routes RTCP to it, through the instance

    async def _checked(self, packet) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            named = list(dict.fromkeys(packet.lost))
            lost = [seq for seq in named if self.budget.take()]
            self.counts["rtcp_retransmissions_refused"] += len(packet.lost) - len(lost)
            if not lost:
                return
            packet = RtcpRtpfbPacket(fmt=packet.fmt, ssrc=packet.ssrc, media_ssrc=packet.media_ssrc, lost=lost)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            now = self.clock()
            if now - self.last_keyframe < self.keyframe_interval_s:
                self.counts["rtcp_keyframe_requests_dropped"] += 1
                return
            self.last_keyframe = now
        await self._handle(packet)
