"""The gateway's SCTP guard (deploy/gateway/sctp_guard.py) on real aiortc associations: two peer connections in this
process, the "gateway" side guarded, the other sending chunks of its own making (loadtests.gateway_transports, the
harness's attacker). Each rule ends the association at its bound and holds nothing more; a conforming peer moving
fragmented messages both ways over a lossy link (gaps, retransmissions, SACK gap blocks) never trips it.
(tests/test_gateway_abuse.py: the same through the real gateway and tritonserver.)"""
from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    SCTP_DATA_UNORDERED,
    WEBRTC_STRING,
    DataChunk,
    SackChunk,
)
from webrtc_pair import connected_pair, until

from deploy.gateway.limits import GatewayLimits
from deploy.gateway.sctp_guard import SctpGuard
from loadtests.gateway_transports import gap_sack, raw_chunks


@contextlib.asynccontextmanager
async def connected(limits: GatewayLimits = GatewayLimits()):
    """(attacker pc, its data channel, gateway pc, the gateway side's guard, reasons it reported), closed after."""
    reasons: list[str] = []
    async with connected_pair(lambda gateway: SctpGuard(gateway.sctp, limits, reasons.append)) as (
            a, channel, b, _, guard):
        yield a, channel, b, guard, reasons


def lose_one_in(dtls, n: int) -> None:
    """Drop every `n`th packet the DTLS transport sends (a lossy link)."""
    send, count = dtls._send_data, [0]

    async def lossy(data):
        count[0] += 1
        if count[0] % n:
            await send(data)
    dtls._send_data = lossy


def held(sctp) -> int:
    return len(sctp._sack_misordered) + sum(len(s.reassembly) for s in sctp._inbound_streams.values())


@pytest.mark.parametrize("size, hole, limits, expect", [
    # 1000 B chunks (what fits a DTLS record here) of one unfinished message: the held-chunk bound comes first at
    # 1024; with it raised, the window's (1 MiB + 64 KiB: ~1114 chunks)
    (1000, False, GatewayLimits(sctp_held_chunks=4096), "bytes past the SCTP receive window"),
    (1000, False, GatewayLimits(), "waiting for a missing TSN or the end of their message (the limit is 1024)"),
    (100, True, GatewayLimits(), "waiting for a missing TSN"),  # after a TSN never sent
    (0, False, GatewayLimits(), "waiting for a missing TSN or the end of their message"),  # no window used
])
def test_data_a_peer_should_not_send_ends_the_association_at_its_bound(size, hole, limits, expect):
    async def scenario():
        async with connected(limits) as (a, channel, b, guard, reasons):
            sent, _ = await raw_chunks(a.sctp, channel.id, 3000, size=size, hole=hole, rate=3000,
                                       stop=lambda: bool(reasons))
            await until(lambda: bool(reasons))
            assert len(reasons) == 1 and expect in reasons[0], reasons
            # one chunk may pass at held = limit - 1, and a chunk past a hole counts twice (both lists aiortc walks)
            assert held(b.sctp) <= limits.sctp_held_chunks + 1
            assert b.sctp._advertised_rwnd >= -limits.sctp_window_overrun_bytes - size
            before = held(b.sctp)
            await raw_chunks(a.sctp, channel.id, 200, size=size, hole=hole, rate=2000)  # after the breach: dropped
            await asyncio.sleep(0.3)
            assert held(b.sctp) == before and len(reasons) == 1
    asyncio.run(scenario())


def test_a_sack_claiming_tsns_never_sent_is_refused_before_it_is_walked():
    async def scenario():
        async with connected() as (a, channel, b, guard, reasons):
            t = time.monotonic()
            await a.sctp._send_chunk(gap_sack(a.sctp, 290))  # 19 million steps in aiortc: seconds of the loop
            await until(lambda: bool(reasons))
            assert time.monotonic() - t < 1.0
            assert "its SACK acknowledges TSNs 1..65535" in reasons[0], reasons
    asyncio.run(scenario())


def test_a_sack_reordered_on_the_way_passes_as_aiortc_drops_it():
    """A SACK older than one already taken is dropped by aiortc unread: its gap blocks are not held against it, even
    when nothing is outstanding any more."""
    async def scenario():
        async with connected() as (a, channel, b, guard, reasons):
            b.sctp._data_channels[channel.id].send(b"hello")
            await until(lambda: not b.sctp._sent_queue)  # acknowledged
            stale = SackChunk()
            stale.cumulative_tsn = (a.sctp._last_received_tsn - 5) % 2**32
            stale.advertised_rwnd, stale.gaps = 1 << 20, [(1, 2)]
            await a.sctp._send_chunk(stale)
            await a.sctp._send_chunk(gap_sack(a.sctp, 1))  # a current one naming TSNs never sent: refused
            await until(lambda: bool(reasons))
            assert len(reasons) == 1 and "its SACK acknowledges TSNs 1..65535" in reasons[0], reasons
    asyncio.run(scenario())


def test_streams_past_the_bound_end_the_association():
    async def scenario():
        async with connected(GatewayLimits(sctp_streams=4)) as (a, channel, b, guard, reasons):
            for sid in range(channel.id, channel.id + 2 * 8, 2):  # the offerer's streams: one parity
                await raw_chunks(a.sctp, sid, 1, size=10, hole=False, rate=100)
            await until(lambda: bool(reasons))
            assert "it used 5 SCTP streams (the limit is 4)" in reasons[0], reasons
            assert len(b.sctp._inbound_streams) <= 4
    asyncio.run(scenario())


def test_a_chunk_aiortc_raises_on_is_a_breach_not_an_exception_in_the_dtls_pump():
    """A whole string message that is not UTF-8: aiortc's decode raised up into the DTLS transport's pump, which
    ended the transport with a traceback."""
    async def scenario():
        async with connected() as (a, channel, b, guard, reasons):
            chunk = DataChunk(flags=SCTP_DATA_FIRST_FRAG | SCTP_DATA_LAST_FRAG | SCTP_DATA_UNORDERED)
            chunk.tsn, chunk.stream_id, chunk.stream_seq = a.sctp._local_tsn, channel.id, 0
            chunk.protocol, chunk.user_data = WEBRTC_STRING, b"\xff\xfe not UTF-8"
            a.sctp._local_tsn = (a.sctp._local_tsn + 1) % 2**32
            await a.sctp._send_chunk(chunk)
            await until(lambda: bool(reasons))
            assert reasons == ["its DataChunk could not be taken: UnicodeDecodeError: 'utf-8' codec can't decode byte "
                               "0xff in position 0: invalid start byte"]
            await asyncio.sleep(0.2)
            assert b.sctp.transport.state == "connected"  # its pump goes on; the gateway ends the session itself
    asyncio.run(scenario())


def test_a_conforming_peer_over_a_lossy_link_never_trips_the_guard():
    """16 KiB messages (the page's largest, 14 chunks) both ways, 1 packet in 15 lost each way: holes, retransmissions
    and SACK gap blocks, all within the rules."""
    async def scenario():
        async with connected() as (a, channel, b, guard, reasons):
            got_a, got_b = [], []
            b_channel = b.sctp._data_channels[channel.id]
            b_channel.on("message", got_b.append)
            channel.on("message", got_a.append)
            for pc in (a, b):
                lose_one_in(pc.sctp.transport, 15)
            gap_sacks, receive = [], guard._receive

            async def seen(chunk):
                if isinstance(chunk, SackChunk) and chunk.gaps:
                    gap_sacks.append(chunk.gaps)
                await receive(chunk)
            guard._receive = seen
            for i in range(60):
                channel.send(bytes([i]) * 16384)
                b_channel.send(bytes([i]) * 16384)
                await asyncio.sleep(0.01)
            await until(lambda: len(got_a) == 60 and len(got_b) == 60, timeout=60)
            assert got_b == [bytes([i]) * 16384 for i in range(60)]
            assert reasons == [] and guard.reason is None
            assert gap_sacks, "no SACK with gap blocks reached the guard: the link lost nothing"
    asyncio.run(scenario())


def test_the_guard_refuses_an_association_it_cannot_read():
    class Unknown:
        _receive_chunk = None

    with pytest.raises(RuntimeError, match="written for aiortc 1.16"):
        SctpGuard(Unknown(), GatewayLimits(), print)
