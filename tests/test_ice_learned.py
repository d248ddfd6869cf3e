"""The candidates a gateway session learns from the connectivity checks it receives (deploy/gateway/ice.py
`LearnedCandidates`), on a real aiortc/aioice pair in this process: the other side sends valid checks for its own
session from new source ports (loadtests.gateway_transports.binding_request, the harness's attacker)."""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.sdp import SessionDescription

from deploy.gateway.ice import LearnedCandidates, ice_connections
from loadtests.gateway_transports import binding_request


async def learn_from(n: int, networks: list[str], limit: int = 8):
    """Connect a pair, the answerer bounded; send `n` checks from new ports. (bound, remote candidates before and
    after, whether a data-channel message still goes through afterwards)."""
    client, gateway = RTCPeerConnection(), RTCPeerConnection()
    channel = client.createDataChannel("events")
    got: list = []
    gateway.on("datachannel", lambda ch: ch.on("message", got.append))
    try:
        await client.setLocalDescription(await client.createOffer())
        await gateway.setRemoteDescription(client.localDescription)
        (connection,) = ice_connections(gateway)
        bound = LearnedCandidates(connection, networks, limit)
        await gateway.setLocalDescription(await gateway.createAnswer())
        await client.setRemoteDescription(gateway.localDescription)
        deadline = time.monotonic() + 20
        while channel.readyState != "open":
            assert time.monotonic() < deadline, "not connected"
            await asyncio.sleep(0.05)
        before = len(connection._remote_candidates)
        answer = SessionDescription.parse(gateway.localDescription.sdp).media[0]
        offer = SessionDescription.parse(client.localDescription.sdp).media[0]
        target = next((c.ip, c.port) for c in answer.ice_candidates if c.type == "host" and ":" not in c.ip)
        data = binding_request(answer.ice.usernameFragment, offer.ice.usernameFragment, answer.ice.password)
        for _ in range(n):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(data, target)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        after = len(connection._remote_candidates)
        channel.send("still here")
        while not got and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.05)
        return bound, before, after, got
    finally:
        await client.close()
        await gateway.close()


def test_a_session_learns_a_few_candidates_from_checks_and_the_rest_nothing():
    bound, before, after, got = asyncio.run(learn_from(50, []))
    assert bound.learned == 8 and bound.refused == 42, (bound.learned, bound.refused)
    assert after == before + 8
    assert got == ["still here"]


def test_a_check_from_outside_the_remote_networks_learns_nothing():
    ours = [ipaddress.ip_address(a) for a in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)]
    outside = next(n for n in ("198.51.100.0/24", "203.0.113.0/24")  # documentation networks none of ours is in
                   if not any(a in ipaddress.ip_network(n) for a in ours))
    bound, before, after, got = asyncio.run(learn_from(5, [outside]))
    assert (bound.learned, bound.refused, after) == (0, 5, before)
    assert got == ["still here"]
