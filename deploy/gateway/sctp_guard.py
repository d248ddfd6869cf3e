"""What a browser session's SCTP association (its data channel's transport) may make the gateway hold or walk.

aiortc 1.16's association trusts its peer. A browser's SCTP stack keeps the rules, but after its DTLS handshake any
client can send chunks of its own making, and aiortc takes them on the gateway's one event loop:

- DATA past the receive window it advertised (1 MiB) is kept anyway, for as long as its message is unfinished or a
  TSN before it is missing, and for each new chunk aiortc sorts the TSNs held past the hole and scans the unfinished
  message again: memory without bound and CPU growing with what is held (RELIABILITY.md, "An eighth pass");
- DATA chunks without data use no window at all, and each is held the same way;
- a SACK's gap blocks are walked TSN by TSN, up to 65535 each, whether or not the gateway sent those TSNs: one packet
  of 290 blocks is 19 million steps;
- DATA and FORWARD-TSN chunks open inbound streams by naming them (65535 possible).

`SctpGuard` sees each chunk before aiortc does. The first that breaks a rule below ends the session
(`on_breach(reason)`; the gateway closes the peer connection) and the chunks after it are dropped:

- DATA: at most `sctp_window_overrun_bytes` past the advertised window (what a conforming sender may have in flight
  when the window closes), at most `sctp_held_chunks` chunks held (past a hole or of unfinished messages; the page's
  largest message, 16 KiB, is 14), at most `sctp_streams` inbound streams (the page opens one);
- SACK: gap blocks only over TSNs the gateway sent and has not seen acknowledged, never more of them in all;
- FORWARD-TSN: at most `sctp_streams` streams, counting those already open;
- any chunk aiortc raises on (a string message that is not UTF-8).

The guard reads aiortc's own state (`_advertised_rwnd`, `_sack_misordered`, `_inbound_streams`, `_sent_queue`,
`_last_sacked_tsn`); `requirements-gateway.txt` pins aiortc and the guard refuses to start on an association without
them, so an upgrade that renames them fails tests/test_sctp_guard.py instead of leaving the gateway unguarded.
"""
from __future__ import annotations

from collections.abc import Callable

from aiortc.rtcsctptransport import DataChunk, ForwardTsnChunk, RTCSctpTransport, SackChunk
from aiortc.utils import uint32_gt

from deploy.gateway.limits import GatewayLimits

TSN_MODULO = 2**32
STATE = ("_receive_chunk", "_advertised_rwnd", "_sack_misordered", "_inbound_streams", "_sent_queue",
         "_last_sacked_tsn")


def breach(sctp: RTCSctpTransport, chunk, limits: GatewayLimits) -> str | None:
    """Why `chunk` may not reach the association, or None."""
    if isinstance(chunk, DataChunk):
        return data_breach(sctp, chunk, limits)
    if isinstance(chunk, SackChunk) and chunk.gaps:
        return sack_breach(sctp, chunk)
    if isinstance(chunk, ForwardTsnChunk):
        return streams_breach(sctp, {sid for sid, _ in chunk.streams}, limits)
    return None


def data_breach(sctp: RTCSctpTransport, chunk: DataChunk, limits: GatewayLimits) -> str | None:
    over = len(chunk.user_data) - sctp._advertised_rwnd
    if over > limits.sctp_window_overrun_bytes:
        return (f"it sent {over} bytes past the SCTP receive window it was given (at most "
                f"{limits.sctp_window_overrun_bytes} may be in flight when the window closes)")
    held = len(sctp._sack_misordered) + sum(len(s.reassembly) for s in sctp._inbound_streams.values())
    if held >= limits.sctp_held_chunks:
        return (f"it left {held} SCTP DATA chunks waiting for a missing TSN or the end of their message (the limit "
                f"is {limits.sctp_held_chunks})")
    return streams_breach(sctp, {chunk.stream_id}, limits)


def streams_breach(sctp: RTCSctpTransport, named: set[int], limits: GatewayLimits) -> str | None:
    streams = len(named | sctp._inbound_streams.keys())
    if streams > limits.sctp_streams:
        return f"it used {streams} SCTP streams (the limit is {limits.sctp_streams})"
    return None


def sack_breach(sctp: RTCSctpTransport, chunk: SackChunk) -> str | None:
    if uint32_gt(sctp._last_sacked_tsn, chunk.cumulative_tsn):
        return None  # older than one already taken (reordered on the way): aiortc drops it unread
    queue = sctp._sent_queue
    outstanding = (queue[-1].tsn - chunk.cumulative_tsn) % TSN_MODULO if queue else 0
    if outstanding >= TSN_MODULO // 2:  # the SACK is past the last TSN sent: no gap can be valid
        outstanding = 0
    span = 0
    for start, end in chunk.gaps:
        if not 1 <= start <= end <= outstanding:
            return (f"its SACK acknowledges TSNs {start}..{end} past its cumulative TSN; the gateway has "
                    f"{outstanding} outstanding")
        span += end - start + 1
    if span > outstanding:
        return f"its SACK's gap blocks cover {span} TSNs; the gateway has {outstanding} outstanding"
    return None


class SctpGuard:
    """Checks each chunk of `sctp`'s peer before aiortc takes it; `reason` is set at the first breach."""

    def __init__(self, sctp: RTCSctpTransport, limits: GatewayLimits, on_breach: Callable[[str], None]):
        missing = [name for name in STATE if not hasattr(sctp, name)]
        if missing:
            raise RuntimeError(f"aiortc's SCTP association has no {', '.join(missing)}: the gateway's SCTP guard is "
                               "written for aiortc 1.16 (requirements-gateway.txt)")
        self.sctp, self.limits, self.on_breach = sctp, limits, on_breach
        self.reason: str | None = None
        self._receive = sctp._receive_chunk
        sctp._receive_chunk = self._checked  # _handle_data calls it per chunk, through the instance

    async def _checked(self, chunk) -> None:
        if self.reason is not None:
            return
        self.reason = breach(self.sctp, chunk, self.limits)
        if self.reason is None:
            try:
                await self._receive(chunk)
                return
            except Exception as e:  # raised on what the peer sent (aiortc decodes a string message as UTF-8): up
                # in aiortc's DTLS pump it would end the transport with a traceback, the session none the wiser
                self.reason = f"its {type(chunk).__name__} could not be taken: {type(e).__name__}: {e}"[:200]
        self.on_breach(self.reason)
