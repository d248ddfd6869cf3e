"""What one client of the gateway may use, and who a client is (issue 15: the gateway is a public endpoint too).

The gateway reaches Triton on its own port, not through the front door, so it bounds its browsers itself:

- a client is its address (an IPv6 address by its /64, what one host is usually given), or, behind a proxy that
  says who the client is (`--client-header X-Forwarded-For`, or an authenticating proxy's user header), that
  header's last value; a request without it is refused, since it did not come through that proxy;
- a POST from another site's page (its `Origin`) is refused, and on loopback a request for a host name other than
  the loopback's (DNS rebinding): a website's visitors are not clients of their own;
- per client: sessions open at once, offers per minute, avatar uploads in flight and per hour (the avatar store is
  shared and bounded: one client uploading without pause would push other clients' avatars out);
- per offer: its size and line counts, checked before aiortc parses it (aiortc's parser is quadratic in `a=ssrc`
  lines: 2.8 MB of them held the gateway's one event loop, and every session's media, for 107 s: RELIABILITY.md);
- per session: data-channel messages per second and their size, microphone audio at most `mic_speedup` times real
  time (a client may send RTP as fast as it likes; every 32 ms chunk is a request to the orchestrator), and the
  WebRTC connection must come up within `connect_timeout_s` (an offer that never connects held its slot, and its
  idle motion, for good); below the data channel, what its SCTP association may hold (sctp_guard.py), what its RTCP
  feedback may ask for (rtcp_guard.py), the checks its ICE connection answers and learns from (ice.py
  `ReceivedChecks`) and the RTP its microphone line passes to aiortc's decoder (rtp_guard.py).

Refusals say which bound and its value (HTTP 429 for quotas, 413 for sizes, 400 for malformed offers).
"""
from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from deploy.front_door.quota import Limits as DoorLimits
from deploy.front_door.quota import TokenBucket
from deploy.gateway.media import MIC_CHUNK
from export.contract import media as C


@dataclass(frozen=True)
class GatewayLimits:
    max_offer_bytes: int = 64 * 1024  # POST /offer's body (a Chromium offer with its candidates: 7.3 KB, 220 lines)
    max_offer_lines: int = 1000  # lines of its SDP
    max_media_sections: int = 8  # m= lines (the page: audio, video, data)
    max_candidates: int = 64  # a=candidate lines (Chromium: 6)
    sessions_per_client: int = 4  # browser sessions one client holds at once
    offers_per_minute: float = 12.0  # new sessions a client may start, sustained ...
    offer_burst: int = 6  # ... and at once
    uploads_in_flight: int = 2  # avatar uploads of one client at once
    # avatar uploads read and registered at once, all clients together (each holds its body, up to 10 MiB, and the
    # copies tritonclient and gRPC make of it: 80 at once, each within its client's bounds, took the gateway to
    # 2.9 GiB); more wait for a turn, at most upload_wait_s, their bodies unread
    uploads_at_once: int = 4
    upload_wait_s: float = 10.0
    uploads_per_hour: float = DoorLimits.registrations_per_hour  # the front door's registration budget, per client
    upload_burst: int = DoorLimits.registration_burst
    messages_per_second: float = 20.0  # data-channel messages of a session, sustained ...
    message_burst: int = 40  # ... and at once
    max_message_bytes: int = 16 * 1024  # one data-channel message (a typed turn: 2000 characters)
    # the gateway's data-channel messages a session's client has not taken (aiortc queues them without bound while the
    # client acknowledges nothing): past it the session is ended (a page takes them as they come: a few KB queued)
    max_unread_bytes: int = 1024 * 1024
    mic_speedup: float = 1.5  # microphone audio of a session at most this many times real time (2 s bursts)
    connect_timeout_s: float = 20.0  # from the answer to a connected WebRTC session
    # an HTTP connection without a whole request for this long is closed, before its first request as between two
    # (aiohttp's keep-alive timeout; its default, 3630 s, let half-sent requests hold connections for an hour), and
    # one whose client takes none of its responses for this long (TCP_USER_TIMEOUT: app.unread_responses_closed)
    idle_connection_s: float = 15.0
    # a session's SCTP association (its data channel's transport; sctp_guard.py: aiortc keeps whatever its peer sends):
    sctp_window_overrun_bytes: int = 64 * 1024  # DATA past the advertised receive window (a packet in flight)
    sctp_held_chunks: int = 1024  # DATA chunks held past a missing TSN or of unfinished messages
    sctp_streams: int = 16  # inbound streams (data channels; the page opens one)
    # retransmissions a session's NACKs may ask of each outgoing stream (rtcp_guard.py; 1.5 Mbit/s video: ~156/s)
    retransmissions_per_second: float = 150.0
    keyframe_interval_s: float = 0.5  # keyframe requests (PLI, FIR) of a session passed on at most this often
    # the connectivity checks a session's ICE connection receives (ice.ReceivedChecks): peer-reflexive candidates it
    # learns from them, and its own client's checks answered a second (twice as many at once)
    ice_learned_candidates: int = 8
    ice_checks_per_second: float = 50.0
    # a session's SRTP and RTP (rtp_guard.py): SSRCs it takes packets from (the page uses one to three: its
    # microphone's and those it sends RTCP from), and the audio its packets hold, decoded at most this many times
    # real time (bursts of as many seconds; mic_speedup, on what reaches the server, is below it)
    rtp_ssrcs: int = 8
    mic_decode_speedup: float = 3.0


class Refused(Exception):
    """A client went past a bound: `status` (HTTP) and a message naming the bound."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def client_key(address: str | None) -> str:
    """A client's address as the gateway counts it: IPv4 whole, IPv6 by its /64 network, a port some proxies append
    (`203.0.113.7:51234`, `[2001:db8::1]:443`) dropped, anything else as given."""
    text = (address or "").strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return (address or "unknown").strip()[:128] or "unknown"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def client_identity(remote: str | None, headers, header: str | None) -> str:
    """Who sent a request: the last value of `header` when the gateway is told to trust one (the proxy in front
    appends it), else the peer's address."""
    if not header:
        return client_key(remote)
    value = headers.get(header)
    if not value:
        raise Refused(403, f"no {header} header: this gateway is reached through a proxy that sets it")
    return client_key(value.split(",")[-1])


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # the host names of a gateway that listens on loopback


def check_host(host: str | None, allowed: Collection[str]) -> None:
    """A request for a host name the gateway does not serve is refused (403), when it is told which it serves (on
    loopback: LOOPBACK_NAMES). DNS rebinding: a website points its own name at the gateway's address once its page
    is loaded, and that page is then same-origin with the gateway, reading `/config` and the offers' answers as the
    gateway's own page does, and the `Origin` it sends matches the `Host`. The name it must use is its own."""
    if not allowed:
        return
    try:
        name = urlsplit(f"//{host or ''}").hostname or ""
    except ValueError:  # not a host name ("[", a bracket left open)
        name = ""
    if name not in allowed:
        raise Refused(403, f"a request for host {(host or '')[:80]!r} is refused: this gateway serves "
                           f"{', '.join(allowed)} (a website's name pointed at this address, DNS rebinding, is "
                           "not; --allowed-host adds names)")


def check_origin(origin: str | None, host: str | None, allowed: Collection[str] = ()) -> None:
    """A POST from a page of another site is refused (403). A browser names the page that sent a POST in `Origin`:
    any website can make its visitors' browsers POST offers and avatars to the gateway (`fetch` in no-cors mode
    sends them without asking), and each visitor is a client of its own, so the per-client bounds never add up (a
    few visitors' offers fill every session). The gateway's own page is the origin of the request's `Host`;
    `allowed` names others (`--page-origin`, a page served elsewhere). A request without `Origin` is not a page's
    (a browser sends one with every POST): its sender is bounded as the client it is."""
    if origin is None or origin in allowed:
        return
    try:
        parts = urlsplit(origin)
    except ValueError:  # not a URL ("http://[")
        parts = None
    if parts and parts.scheme in ("http", "https") and host and parts.netloc.lower() == host.lower():
        return
    raise Refused(403, f"a request from a page of another origin ({origin[:80]!r}) is refused: this gateway takes "
                       "offers and avatars from its own page")


def check_offer(sdp: str, limits: GatewayLimits) -> None:
    """The offer's size and shape, before any parsing: ValueError naming the bound it breaks."""
    if not sdp.startswith("v=0"):
        raise ValueError("the offer's sdp is not a session description (one starts with v=0)")
    lines = sdp.count("\n") + 1
    if lines > limits.max_offer_lines:
        raise ValueError(f"the offer has {lines} lines; the limit is {limits.max_offer_lines} (a browser's has ~200)")
    media = sdp.count("\nm=")
    if media == 0:
        raise ValueError("the offer has no media section (m= line)")
    if media > limits.max_media_sections:
        raise ValueError(f"the offer has {media} media sections; the limit is {limits.max_media_sections}")
    candidates = sdp.count("\na=candidate:")
    if candidates > limits.max_candidates:
        raise ValueError(f"the offer has {candidates} ICE candidates; the limit is {limits.max_candidates}")


@dataclass
class ClientUsage:
    limits: GatewayLimits
    clock: Callable[[], float]
    sessions: set[str] = field(default_factory=set)
    uploads: int = 0
    offers: TokenBucket = field(init=False)
    registrations: TokenBucket = field(init=False)

    def __post_init__(self):
        self.offers = TokenBucket(self.limits.offers_per_minute / 60, self.limits.offer_burst, self.clock)
        self.registrations = TokenBucket(self.limits.uploads_per_hour / 3600, self.limits.upload_burst, self.clock)

    def holds(self) -> bool:
        """A session open or an upload in flight."""
        return bool(self.sessions or self.uploads)


class Clients:
    """Usage by client, the `keep` most recently seen at most (and every client that holds something). Everything
    runs on the gateway's one event loop: no locks.

    A new client past `keep` makes the least recently seen ones that hold nothing be forgotten, their rate budgets
    with them: a client must then have been away while `keep` others came, and whoever has that many addresses has
    their budgets anyway. This takes O(1) for each new client (plus the few that hold something: a session or an
    upload, bounded by the gateway's sessions). Each new client past 4096 used to scan them all: requests from new
    addresses, 180 a second, took the gateway's loop and froze a victim's video 35 s (RELIABILITY.md, "A tenth
    pass")."""

    def __init__(self, limits: GatewayLimits, clock: Callable[[], float] = time.monotonic, keep: int = 4096):
        self.limits, self.clock, self.keep = limits, clock, keep
        self._usage: OrderedDict[str, ClientUsage] = OrderedDict()  # least recently seen first

    def __getitem__(self, client: str) -> ClientUsage:
        u = self._usage.get(client)
        if u is not None:
            self._usage.move_to_end(client)
            return u
        if len(self._usage) >= self.keep:
            stale = []
            for key, usage in self._usage.items():
                if not usage.holds():
                    stale.append(key)
                    if len(self._usage) - len(stale) < self.keep:
                        break
            for key in stale:
                del self._usage[key]
        u = self._usage[client] = ClientUsage(self.limits, self.clock)
        return u

    def __len__(self) -> int:
        return len(self._usage)

    def open_session(self, client: str, sid: str) -> None:
        u, lim = self[client], self.limits
        if len(u.sessions) >= lim.sessions_per_client:
            raise Refused(429, f"this client ({client}) has {len(u.sessions)} sessions open (limit "
                               f"{lim.sessions_per_client}); close one first")
        if not u.offers.take():
            raise Refused(429, f"this client ({client}) started more than {lim.offers_per_minute:g} sessions a "
                               f"minute (burst {lim.offer_burst}); retry later")
        u.sessions.add(sid)

    def close_session(self, client: str, sid: str) -> None:
        self[client].sessions.discard(sid)

    def start_upload(self, client: str) -> None:
        u, lim = self[client], self.limits
        if u.uploads >= lim.uploads_in_flight:
            raise Refused(429, f"this client ({client}) has {u.uploads} avatar uploads in flight (limit "
                               f"{lim.uploads_in_flight}); wait for one to finish")
        if not u.registrations.take():
            raise Refused(429, f"too many avatar uploads: more than {lim.uploads_per_hour:g} an hour (burst "
                               f"{lim.upload_burst}) from this client ({client}); the avatar store is shared by "
                               "every client, so one may not cycle it; retry later")
        u.uploads += 1

    def end_upload(self, client: str) -> None:
        self[client].uploads -= 1


@dataclass(frozen=True)
class Refusal:
    kind: str  # what was refused: "messages", "message size", "microphone"
    text: str  # what the page is told


class SessionBudget:
    """A session's data-channel messages and microphone audio: `message(raw)` and `mic()` say whether to take
    one (None) or why not; a kind of refusal is told to the page at most once a second (`tell`)."""

    def __init__(self, limits: GatewayLimits, clock: Callable[[], float] = time.monotonic):
        self.limits, self.clock = limits, clock
        self._messages = TokenBucket(limits.messages_per_second, limits.message_burst, clock)
        chunks_per_s = limits.mic_speedup * C.INPUT_SAMPLE_RATE / MIC_CHUNK
        self._mic = TokenBucket(chunks_per_s, int(2.0 * chunks_per_s), clock)
        self._told: dict[str, float] = {}

    def message(self, raw) -> Refusal | None:
        """Every message spends from the rate, whatever its size: a flood of oversized ones is a flood too."""
        if not self._messages.take():
            return Refusal("messages", f"data-channel messages dropped: more than {self.limits.messages_per_second:g}"
                                       f" a second (burst {self.limits.message_burst})")
        if len(raw) > self.limits.max_message_bytes:
            return Refusal("message size", f"a data-channel message of {len(raw)} bytes was dropped; the limit is "
                                           f"{self.limits.max_message_bytes}")
        return None

    def mic(self) -> Refusal | None:
        if self._mic.take():
            return None
        return Refusal("microphone", f"microphone audio dropped: it arrives faster than {self.limits.mic_speedup:g} "
                                     "times real time (a sender not pacing its RTP)")

    def tell(self, refusal: Refusal) -> bool:
        """Whether to tell the page about this refusal now (once a second per kind of refusal)."""
        now = self.clock()
        if now - self._told.get(refusal.kind, -1e9) < 1.0:
            return False
        self._told[refusal.kind] = now
        return True
