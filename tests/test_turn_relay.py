"""The TURN relay's peer policy (deploy/gateway/turnserver.conf) with the real coturn, and its wiring in Compose:
the credentials a page gets (anyone who loads it gets them) relay media to and from the gateway's address and to
nothing else. With only 0.0.0.0/8 denied (before 2026-12-07) the same credentials relayed UDP into 10.0.0.0/8,
172.16.0.0/12 and 169.254.169.254.

coturn refuses loopback peers by default; here everything listens on loopback, so the test allows loopback peers
(`--allow-loopback-peers`) and lets 127.0.0.2 stand for the gateway and 127.0.0.3 for any other host: what refuses
127.0.0.3 is then the config's deny-all, as it refuses the private, link-local and public addresses below.
"""
from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aioice.turn
import pytest
from manifests import compose

from deploy.gateway.ice import IceSettings, turn_user
from deploy.processes import free_ports

CONF = Path(__file__).resolve().parents[1] / "deploy" / "gateway" / "turnserver.conf"
TURNSERVER = shutil.which("turnserver")
GATEWAY, OTHER = "127.0.0.2", "127.0.0.3"
REFUSED = ["127.0.0.3", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "8.8.8.8"]

needs_coturn = pytest.mark.skipif(TURNSERVER is None, reason="coturn is not installed (`make system-deps` installs it)")


@pytest.fixture
def turn(tmp_path):
    """coturn with the repository's config, as docker-compose.yml runs it (the gateway's address allowed)."""
    port = free_ports(1)[0]
    secret = "a-secret-for-this-test-only"
    proc = subprocess.Popen([TURNSERVER, "-c", str(CONF), f"--listening-port={port}", "--listening-ip=127.0.0.1",
                             "--relay-ip=127.0.0.1", "--external-ip=127.0.0.1", f"--static-auth-secret={secret}",
                             f"--allowed-peer-ip={GATEWAY}", "--allow-loopback-peers",
                             f"--pidfile={tmp_path / 'turn.pid'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:  # its TCP listener is up (UDP comes up with it)
                break
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "no port"
        time.sleep(0.1)
    try:
        yield ("127.0.0.1", port), IceSettings([f"turn:127.0.0.1:{port}"], secret=secret)
    finally:
        proc.terminate()
        proc.wait(10)


class Sink(asyncio.DatagramProtocol):
    def __init__(self):
        self.got: list[tuple[bytes, tuple]] = []
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.got.append((data, addr))


@needs_coturn
def test_a_pages_credentials_relay_to_the_gateway_and_nowhere_else(turn):
    server, ice = turn
    page = ice.servers("page-1", page=True)[0]  # what GET /config hands a page
    assert page["urls"] == [f"turn:{server[0]}:{server[1]}"]

    async def scenario() -> dict[str, str]:
        loop = asyncio.get_running_loop()
        _, gateway = await loop.create_datagram_endpoint(Sink, local_addr=(GATEWAY, 0))
        _, other = await loop.create_datagram_endpoint(Sink, local_addr=(OTHER, 0))
        relay, mine = await aioice.turn.create_turn_endpoint(Sink, server, page["username"], page["credential"])
        outcome = {}
        try:
            relay.sendto(b"media to the gateway", gateway.transport.get_extra_info("sockname"))
            relayed = relay.get_extra_info("sockname")
            for _ in range(50):
                if gateway.got:
                    break
                await asyncio.sleep(0.1)
            if gateway.got:  # the gateway answers the relayed address: it comes back through the relay
                outcome["gateway"] = "relayed"
                gateway.transport.sendto(b"media from the gateway", gateway.got[0][1])
                for _ in range(50):
                    if mine.got:
                        break
                    await asyncio.sleep(0.1)
                outcome["back"] = "relayed" if mine.got and mine.got[0][0] == b"media from the gateway" else "lost"
                assert gateway.got[0][1][0] == relayed[0]
            inner = relay._TurnTransport__inner_protocol  # send_data raises when the server refuses the peer
            for host in REFUSED:
                port = other.transport.get_extra_info("sockname")[1] if host == OTHER else 9
                try:
                    await asyncio.wait_for(inner.send_data(b"x", (host, port)), 5)
                    outcome[host] = "relayed"
                except Exception as e:  # TransactionFailed: 403 Forbidden IP
                    outcome[host] = f"refused: {e}"
            await asyncio.sleep(0.3)
            outcome["other got"] = str(len(other.got))
        finally:
            relay.close()
            gateway.transport.close()
            other.transport.close()
        return outcome

    outcome = asyncio.run(scenario())
    assert outcome["gateway"] == "relayed" and outcome["back"] == "relayed", outcome
    for host in REFUSED:
        assert outcome[host].startswith("refused") and "403" in outcome[host], (host, outcome[host])
    assert outcome["other got"] == "0"


def test_compose_turn_relays_to_the_gateways_media_address_only():
    """Every page gets TURN credentials: coturn denies every peer (turnserver.conf, the test above) but the
    gateway's fixed address on the `media` network, which is also the gateway's one host candidate."""
    doc = compose()
    gateway, coturn = doc["services"]["gateway"], doc["services"]["coturn"]
    address = gateway["networks"]["media"]["ipv4_address"]
    assert f"--allowed-peer-ip={address}" in coturn["command"] and f"--ice-host={address}" in gateway["command"]
    assert coturn["networks"] == ["media"]
    assert not [a for a in gateway["command"] if a.startswith("--ice-server")]  # no relay of its own: it is a peer
    subnet = doc["networks"]["media"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(address.split(":-")[-1].rstrip("}")) in ipaddress.ip_network(
        subnet.split(":-")[-1].rstrip("}"))
    conf = CONF.read_text().splitlines()
    assert {"denied-peer-ip=0.0.0.0-255.255.255.255", "denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"} \
        <= set(conf)


async def allocations(server, username: str, password: str, n: int) -> tuple[list, str]:
    """Up to `n` relays allocated with one credential, each from a new local port (as a client taking every relay
    port would): (the relays, why the next one was refused, or "")."""
    relays = []
    for _ in range(n):
        try:
            relay, _ = await asyncio.wait_for(aioice.turn.create_turn_endpoint(asyncio.DatagramProtocol, server,
                                                                               username, password), 5)
        except Exception as e:  # TransactionFailed: 486 Allocation Quota Reached, 508 Cannot create socket
            return relays, str(e)
        relays.append(relay)
    return relays, ""


@needs_coturn
def test_one_client_holds_at_most_its_quota_of_relays_and_another_client_gets_one(turn):
    """Without `user-quota` one page's credentials took all 41 relay ports and another client's got 508; the quota
    counts the username's part after its expiry, which is the same for every page of one client (ice.turn_user)."""
    server, ice = turn
    mallory, alice = turn_user("203.0.113.66"), turn_user("192.0.2.1")

    async def scenario():
        first, second = ice.servers(mallory, page=True)[0], None
        held, refused = await allocations(server, first["username"], first["credential"], 50)
        await asyncio.sleep(1.1)  # a later page of the same client: another expiry, the same user
        second = ice.servers(mallory, page=True)[0]
        assert second["username"] != first["username"]
        more, refused_again = await allocations(server, second["username"], second["credential"], 5)
        page = ice.servers(alice, page=True)[0]
        hers, hers_refused = await allocations(server, page["username"], page["credential"], 1)
        for relay in held + more + hers:
            relay.close()
        return len(held), refused, len(more), refused_again, len(hers), hers_refused

    held, refused, more, refused_again, hers, hers_refused = asyncio.run(scenario())
    assert (held, more) == (8, 0) and "486" in refused and "486" in refused_again, (held, refused, refused_again)
    assert (hers, hers_refused) == (1, "")


@needs_coturn
def test_a_relay_carries_at_most_its_bandwidth_to_the_gateway(turn):
    """A client sending as fast as it can through its relay to the gateway's address (the one peer allowed): coturn
    passes at most `max-bps` (500000 bytes a second); without it, 20 MB/s reached the gateway's media port here."""
    server, ice = turn
    page = ice.servers(turn_user("203.0.113.66"), page=True)[0]

    async def scenario() -> float:
        _, gateway = await asyncio.get_running_loop().create_datagram_endpoint(Sink, local_addr=(GATEWAY, 0))
        relay, _ = await aioice.turn.create_turn_endpoint(asyncio.DatagramProtocol, server, page["username"],
                                                          page["credential"])
        try:
            target, t0 = gateway.transport.get_extra_info("sockname"), time.monotonic()
            while time.monotonic() - t0 < 3.0:
                for _ in range(50):
                    relay.sendto(b"x" * 1200, target)
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.5)
            return sum(len(data) for data, _ in gateway.got) / (time.monotonic() - t0)
        finally:
            relay.close()
            gateway.transport.close()

    got = asyncio.run(scenario())
    print(f"\nrelayed to the gateway: {got / 1e6:.2f} MB/s")
    assert 0 < got < 1.3 * 500000, f"{got / 1e6:.2f} MB/s reached the gateway"
