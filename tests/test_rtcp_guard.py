"""The gateway's RTCP guard (deploy/gateway/rtcp_guard.py) on a real aiortc video stream: two peer connections in this
process, the "gateway" sending video through a guarded sender, the other asking for retransmissions with NACKs of
its own making and keyframe requests (loadtests.gateway_transports.VideoSeen, the harness's attacker)."""
from __future__ import annotations

import asyncio
import contextlib
import time

from aiortc import RTCPeerConnection, VideoStreamTrack

from deploy.gateway.limits import GatewayLimits
from deploy.gateway.rtcp_guard import HISTORY, RtcpGuard
from loadtests.gateway_transports import VideoSeen


@contextlib.asynccontextmanager
async def streaming(limits: GatewayLimits = GatewayLimits()):
    """(the receiver's view of the video, the guard, what the sender was asked for), closed after."""
    gateway, client = RTCPeerConnection(), RTCPeerConnection()
    sender = gateway.addTrack(VideoStreamTrack())
    asked: list = []  # retransmissions the sender was asked for; "keyframe" for each keyframe request
    retransmit, keyframe = sender._retransmit, sender._send_keyframe

    async def counted(seq):
        asked.append(seq)
        await retransmit(seq)

    def keyframe_counted():
        asked.append("keyframe")
        keyframe()
    sender._retransmit, sender._send_keyframe = counted, keyframe_counted
    guard = RtcpGuard(sender, limits)
    client.addTransceiver("video", direction="recvonly")
    try:
        await client.setLocalDescription(await client.createOffer())
        await gateway.setRemoteDescription(client.localDescription)
        await gateway.setLocalDescription(await gateway.createAnswer())
        await client.setRemoteDescription(gateway.localDescription)
        video = VideoSeen(client)
        deadline = time.monotonic() + 20
        while video.packets < 20:
            assert time.monotonic() < deadline, "no video"
            await asyncio.sleep(0.05)
        yield video, guard, asked
    finally:
        await client.close()
        await gateway.close()


def test_a_nack_flood_gets_the_retransmission_budget_and_no_more():
    limits = GatewayLimits()

    async def scenario():
        async with streaming(limits) as (video, guard, asked):
            t = time.monotonic()
            for _ in range(20):  # 20 x 5049 retransmissions asked: aiortc alone would make them all
                await video.transport._send_rtp(video.nack(297))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            allowed = HISTORY + limits.retransmissions_per_second * (time.monotonic() - t)
            assert 0 < len(asked) <= allowed, (len(asked), allowed)
            # of the NACKs that arrived (UDP: not always all 20)
            assert guard.counts["rtcp_retransmissions_refused"] > 5 * 5049
    asyncio.run(scenario())


def test_a_browser_like_nack_is_answered_whole():
    async def scenario():
        async with streaming() as (video, guard, asked):
            lost = [(video.seq - k) % 65536 for k in (9, 5, 2)]  # each named once, as a browser does
            await video.transport._send_rtp(video.nack_of([(seq, 0) for seq in lost]))
            await asyncio.sleep(0.5)
            assert [a for a in asked if a != "keyframe"] == lost and guard.counts["rtcp_retransmissions_refused"] == 0
    asyncio.run(scenario())


def test_keyframe_requests_are_passed_on_twice_a_second_at_most():
    async def scenario():
        async with streaming() as (video, guard, asked):
            t = time.monotonic()
            for _ in range(50):  # 50 PLIs in 1 s: aiortc alone makes every frame a keyframe
                await video.transport._send_rtp(video.pli())
                await asyncio.sleep(0.02)
            keyframes = asked.count("keyframe")
            assert 1 <= keyframes <= 1 + (time.monotonic() - t) / GatewayLimits().keyframe_interval_s, keyframes
            assert guard.counts["rtcp_keyframe_requests_dropped"] >= 40
    asyncio.run(scenario())
