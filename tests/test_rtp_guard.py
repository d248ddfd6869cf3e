"""The gateway's RTP guard (deploy/gateway/rtp_guard.py): the Opus table of contents it charges by, its SSRC bound on
a real libsrtp session, and both on a real aiortc pair in this process, the client's microphone line sending RTP of
its own making (loadtests.gateway_rtp.RawMicrophone, the harness's attacker) or aiortc's own paced microphone."""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter

import pylibsrtp
import pytest
from aiortc import AudioStreamTrack
from aiortc.rtp import RtpPacket
from webrtc_pair import connected_pair, until

from deploy.gateway.limits import GatewayLimits
from deploy.gateway.rtp_guard import KnownSsrcs, guard_rtp, opus_ms
from loadtests.gateway_rtp import SILENCE_20MS, RawMicrophone, SilentMicrophone, opus_packet


@pytest.mark.parametrize("ms", [2.5, 10, 20, 40, 60, 100, 120])
def test_the_audio_a_packet_holds_is_read_from_its_table_of_contents(ms):
    assert opus_ms(opus_packet(ms)) == ms  # libopus's own packets: one frame, or several (code 3) past 60 ms


def test_a_table_of_contents_that_is_not_a_valid_one_is_none():
    assert opus_ms(SILENCE_20MS) == 20
    assert opus_ms(b"") is None
    assert opus_ms(bytes([0x03])) is None  # code 3 without its frame count
    assert opus_ms(bytes([0x03, 0x00])) is None  # no frames
    assert opus_ms(bytes([0xFB, 7])) is None  # 7 frames of 20 ms: past the 120 ms a packet may hold


def srtp_pair() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    key = os.urandom(30)
    return (pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)),
            pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)))


def rtp(ssrc: int, seq: int = 1) -> bytes:
    return RtpPacket(payload_type=111, sequence_number=seq, timestamp=0, ssrc=ssrc, payload=SILENCE_20MS).serialize()


def test_packets_from_ssrcs_past_the_bound_never_reach_libsrtp_and_a_strangers_take_no_place():
    tx, rx = srtp_pair()
    counts: Counter = Counter()
    known = KnownSsrcs(rx, 3, counts)
    stranger, _ = srtp_pair()  # other keys: its packets fail authentication
    for ssrc in range(100, 110):
        with pytest.raises(pylibsrtp.Error):
            known.unprotect(stranger.protect(rtp(ssrc)))
    assert known.known == set() and counts == Counter()
    assert [known.unprotect(tx.protect(rtp(ssrc))) == rtp(ssrc) for ssrc in (1, 2, 3)] == [True] * 3
    for ssrc in range(4, 54):
        with pytest.raises(pylibsrtp.Error, match="past the session's 3"):
            known.unprotect(tx.protect(rtp(ssrc)))
    assert counts == Counter(srtp_packets_past_ssrcs=50)
    assert known.unprotect(tx.protect(rtp(2, seq=2))) == rtp(2, seq=2)  # a known SSRC's later packets pass


@contextlib.asynccontextmanager
async def guarded(mic, limits: GatewayLimits = GatewayLimits()):
    """A connected pair whose client sends `mic`, the gateway guarded: (the client, the gateway, the refused counts,
    the seconds of audio the gateway decoded so far: a one-element list)."""
    counts: Counter = Counter()
    decoded = [0.0]

    def bounded(gateway):
        guard_rtp(gateway, limits, counts)
        track = next(t.receiver.track for t in gateway.getTransceivers() if t.kind == "audio")

        async def pull():
            with contextlib.suppress(Exception):
                while True:
                    decoded[0] += (await track.recv()).samples / 48000
        return asyncio.ensure_future(pull())

    async with connected_pair(bounded, mic=mic) as (client, channel, gateway, got, puller):
        try:
            yield client, gateway, counts, decoded
        finally:
            puller.cancel()


def test_a_client_sending_from_many_ssrcs_is_taken_from_the_first_few_only():
    async def scenario():
        limits = GatewayLimits()
        async with guarded(SilentMicrophone(), limits) as (client, gateway, counts, decoded):
            mic = RawMicrophone(client)
            for n in range(60):  # each from a new SSRC; 20 ms of audio each
                await mic.send(1000 + n, n * 960, SILENCE_20MS)
                await asyncio.sleep(0.002)
            await until(lambda: counts["srtp_packets_past_ssrcs"] >= 60 - limits.rtp_ssrcs, 5)
            (transceiver,) = [t for t in gateway.getTransceivers() if t.kind == "audio"]
            router = transceiver.receiver.transport._rtp_router
            assert len(router.ssrc_table) <= limits.rtp_ssrcs + 1  # and the offer's own; aiortc alone learned all 60
            assert len(transceiver.receiver.transport._rx_srtp.known) == limits.rtp_ssrcs
            for n in range(60, 110):  # the first SSRC goes on being heard
                await mic.send(1000, n * 960, SILENCE_20MS)
                await asyncio.sleep(0.02)
            await until(lambda: decoded[0] > 0.5, 5)
    asyncio.run(scenario())


def test_long_packets_are_decoded_at_the_bound_and_no_faster():
    async def scenario():
        limits = GatewayLimits()
        async with guarded(SilentMicrophone(), limits) as (client, gateway, counts, decoded):
            mic, payload = RawMicrophone(client), opus_packet(120)
            t = time.monotonic()
            for n in range(400):  # 48 s of audio in about 2 s
                await mic.send(7, n * 5760, payload)
                await asyncio.sleep(0.005)
            took = time.monotonic() - t
            await asyncio.sleep(0.5)
            bound = limits.mic_decode_speedup * (1 + took + 0.5)  # its burst, and its rate since
            assert 0 < decoded[0] <= bound + 0.2, (decoded[0], bound)  # aiortc alone decoded all 48 s
            assert counts["rtp_audio_past_rate"] >= 400 - bound / 0.12
    asyncio.run(scenario())


def test_a_microphone_paced_as_a_browsers_is_decoded_whole():
    async def scenario():
        async with guarded(AudioStreamTrack()) as (client, gateway, counts, decoded):
            t = time.monotonic()
            await asyncio.sleep(3.0)
            assert decoded[0] >= time.monotonic() - t - 1.0  # aiortc's silent track: 20 ms packets in real time
            assert counts == Counter()
    asyncio.run(scenario())
