"""ICE settings of the gateway: which addresses it offers, which browser candidates it tries, STUN/TURN servers.

- `--ice-host ADDR` (repeatable): the host candidates the gateway gathers. aioice offers every address of every
  interface except 127.0.0.1; a gateway behind a load balancer or in a container usually wants exactly one (the
  address browsers can reach), and the tests and benchmarks want only 127.0.0.1. aioice has no setting for it, so
  `restrict_host_addresses` replaces its address lookup (one function, `aioice.ice.get_host_addresses`).
- `--remote-network CIDR` (repeatable): browser candidates outside these networks are removed from the offer
  before aiortc sees them, so the gateway never sends a connectivity check anywhere else (tests: 127.0.0.0/8); the
  candidates a session learns from the checks it receives (peer-reflexive) are held to them too, and to a few
  (`ReceivedChecks`, which also bounds how many of its own checks a session's client gets answered).
- `--ice-server URL` with `--turn-username/--turn-password`, or `--turn-secret` (coturn's `use-auth-secret`: a
  short-lived username `expiry:session` and password base64(HMAC-SHA1(secret, username)) per page load), used by
  the gateway itself and handed to the page (`/config`), unless `--page-ice-server` names what the page uses (the
  same TURN server by its public name, when the gateway reaches it by an internal one, e.g. `turn:coturn:3478` in
  docker-compose). Without `--ice-server` there is none at all: aiortc's default (a public STUN server) is never
  used.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from deploy.front_door.quota import TokenBucket
from deploy.gateway.dtls import dtls_transports

log = logging.getLogger(__name__)


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Gather host candidates on these addresses only (process-wide: aioice reads it at each gathering)."""
    chosen = [str(ipaddress.ip_address(a)) for a in addresses]
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [
        a for a in chosen if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)]


def filter_candidates(sdp: str, networks: Sequence[str]) -> tuple[str, int]:
    """The SDP without `a=candidate` lines whose address is outside `networks` (hostnames, e.g. mDNS `.local`
    names, are outside every network); the number removed. No networks: the SDP as it is."""
    if not networks:
        return sdp, 0
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]
    kept, removed = [], 0
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) < 5 or not in_networks(parts[4], nets):
                removed += 1
                continue
        kept.append(line)
    return "".join(kept), removed


def in_networks(host: str, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether `host` is an address inside one of `nets` (a hostname is inside none)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address.version == n.version and address in n for n in nets)


def ice_connections(pc: RTCPeerConnection) -> list[aioice.Connection]:
    """The aioice connections of a peer connection's transports (one when its media are bundled)."""
    found = {id(c): c for c in (d.transport.iceGatherer._connection for d in dtls_transports(pc))}
    return list(found.values())


class ReceivedChecks:
    """What the connectivity checks one ICE connection receives may make it do. A client holds its own session's
    credentials (the offer and answer carry them), so it can send valid checks as fast as it likes, from as many
    ports as it likes or from addresses it spoofs (RELIABILITY.md, "An eighth pass"):

    - a check from an address the offer did not name makes aioice add a remote candidate, a candidate pair and checks
      of its own to that address, each new pair sorted into a list it walks for every check, without bound; and
      `filter_candidates` never sees it. At most `learn` are learned, each inside `networks` when they are given (as
      filter_candidates keeps the offer's). A check from any other address gets no answer: answered, it would tell
      the browser that path works, and a browser may then nominate a pair this side never formed (Chromium checks
      from each of its interfaces, and a connection that nominated its eth0 path to a loopback-only gateway never
      came up);
    - aioice verifies and answers each check (its integrity, then an answer with its own), on the gateway's one loop.
      Checks naming this session's username are answered at most `checks_per_second` (bursts of twice as many; a
      browser checks a few pairs every 50 ms while connecting, then its consent every few seconds); the rest are
      dropped unread. Checks naming no username of this session pass to aioice as before (it refuses them), so a
      stranger cannot spend a session's budget.

    `counts` (the gateway's, shared by its sessions and shown at /stats) gets the checks dropped: past the rate
    (`ice_checks_past_rate`), from outside the networks (`ice_checks_outside_networks`: a browser checks from each of
    its interfaces, so this one counts ordinary use too), from a new address past the limit
    (`ice_checks_past_learned_limit`); `learned` is this connection's own count."""

    def __init__(self, connection: aioice.Connection, networks: Sequence[str], learn: int, checks_per_second: float,
                 counts: Counter | None = None):
        missing = [a for a in ("request_received", "check_incoming", "_remote_candidates", "local_username")
                   if not hasattr(connection, a)]
        if missing:
            raise RuntimeError(f"aioice's Connection has no {', '.join(missing)}: the gateway's ICE bounds are "
                               "written for aioice 0.13 (requirements-gateway.txt)")
        self.connection, self.learn = connection, learn
        self.nets = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.answers = TokenBucket(checks_per_second, int(2 * checks_per_second))
        self.learned, self.counts, self._told = 0, Counter() if counts is None else counts, False
        self._request, self._check = connection.request_received, connection.check_incoming
        # aioice's protocol calls request_received, and request_received check_incoming, through the instance
        connection.request_received, connection.check_incoming = self._requested, self._checked

    def _known(self, addr: tuple[str, int]) -> bool:
        """Whether `addr` is one of the connection's remote candidates (aioice's own test in check_incoming)."""
        return any(c._network_host == addr[0] and c.port == addr[1] for c in self.connection._remote_candidates)

    def _refusal(self, addr: tuple[str, int]) -> str | None:
        """Why a check from `addr` is dropped unanswered, or None."""
        if self._known(addr):
            return None
        if self.nets and not in_networks(addr[0], self.nets):
            return "ice_checks_outside_networks"
        if self.learned >= self.learn:
            return "ice_checks_past_learned_limit"
        return None

    def _requested(self, message, addr: tuple[str, int], protocol) -> None:
        if message.attributes.get("USERNAME", "").startswith(self.connection.local_username + ":"):
            refusal = self._refusal(addr) or (None if self.answers.take() else "ice_checks_past_rate")
            if refusal is not None:
                self.counts[refusal] += 1
                if not self._told and refusal != "ice_checks_past_rate":  # once per connection; the rest counted
                    self._told = True
                    log.info("ICE: checks from %s:%d get no answer (%s)", addr[0], addr[1],
                             "outside --remote-network" if refusal == "ice_checks_outside_networks" else
                             f"{self.learn} addresses learned already")
                return
        self._request(message, addr, protocol)

    def _checked(self, message, addr: tuple[str, int], protocol) -> None:
        """A verified check (now or, for one that came before the answer was set, later): a new address is learned,
        within the limit (early checks are checked again here)."""
        refusal = self._refusal(addr)
        if refusal is not None:
            self.counts[refusal] += 1
            return
        if not self._known(addr):
            self.learned += 1
        self._check(message, addr, protocol)


def turn_user(client: str) -> str:
    """The TURN username's part after the expiry for a page of `client` (limits.client_identity): the same for every
    page of one client, so coturn's `user-quota` (which counts that part: RELIABILITY.md, "A ninth pass") bounds the
    relays one client holds, however many credentials it asks for. A hash: no address in a username."""
    return "c-" + hashlib.sha256(client.encode()).hexdigest()[:16]


def turn_credentials(secret: str, user: str, ttl_s: int = 3600, now: float | None = None) -> tuple[str, str]:
    """coturn's REST-API credentials (`use-auth-secret` + `static-auth-secret=secret`): valid for ttl_s."""
    username = f"{int((time.time() if now is None else now) + ttl_s)}:{user}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password


class IceSettings:
    """The STUN/TURN servers of the gateway and of its pages."""

    def __init__(self, urls: Sequence[str] = (), username: str | None = None, password: str | None = None,
                 secret: str | None = None, remote_networks: Sequence[str] = (), page_urls: Sequence[str] = ()):
        for u in [*urls, *page_urls]:
            if not u.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"ICE server {u!r}: expected stun:, turn: or turns:")
        self.urls, self.page_urls = list(urls), list(page_urls or urls)
        self.username, self.password, self.secret = username, password, secret
        self.remote_networks = [str(ipaddress.ip_network(n, strict=False)) for n in remote_networks]

    def servers(self, user: str = "gateway", page: bool = False) -> list[dict]:
        """The iceServers list (RTCConfiguration's JSON shape) of the gateway, or of a page (`user`: `turn_user` of its
        client): TURN URLs carry credentials."""
        urls = self.page_urls if page else self.urls
        if not urls:
            return []
        name, password = self.username, self.password
        if self.secret:
            name, password = turn_credentials(self.secret, user)
        stun = [u for u in urls if u.startswith("stun:")]
        out = [{"urls": stun}] if stun else []
        turn = [u for u in urls if not u.startswith("stun:")]
        if turn:
            out.append({"urls": turn, "username": name or "", "credential": password or ""})
        return out

    def configuration(self, user: str = "gateway") -> RTCConfiguration:
        """aiortc's configuration for one of the gateway's sessions (`user`: its own TURN user, so that coturn's
        user-quota, meant for each client's pages, never caps how many sessions the gateway relays): these servers,
        or an explicitly empty list (never aiortc's public default)."""
        return RTCConfiguration(iceServers=[RTCIceServer(**s) for s in self.servers(user)])
