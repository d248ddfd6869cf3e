"""The connectivity checks a gateway session's ICE connection receives (deploy/gateway/ice.py `ReceivedChecks`), on a
real aiortc/aioice pair in this process: the other side sends valid checks for its own session from new source ports
(loadtests.gateway_transports.binding_request, the harness's attacker), or checks of a stranger."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time

import aioice.ice
from aiortc.sdp import SessionDescription
from webrtc_pair import connected_pair

from deploy.gateway.ice import ReceivedChecks, ice_connections
from loadtests.gateway_transports import binding_request


@contextlib.asynccontextmanager
async def paired(networks: list[str] = (), learn: int = 8, per_second: float = 50.0):
    """A connected pair, the gateway bounded: (its bound, its aioice connection, the client's data channel and what the
    gateway got on it, the gateway's host candidate, a valid check of the client's)."""
    def bounded(gateway):
        (connection,) = ice_connections(gateway)
        return ReceivedChecks(connection, networks, learn, per_second)

    async with connected_pair(bounded) as (client, channel, gateway, got, bound):
        answer = SessionDescription.parse(gateway.localDescription.sdp).media[0]
        offer = SessionDescription.parse(client.localDescription.sdp).media[0]
        target = next((c.ip, c.port) for c in answer.ice_candidates if c.type == "host" and ":" not in c.ip)
        check = binding_request(answer.ice.usernameFragment, offer.ice.usernameFragment, answer.ice.password)
        yield bound, bound.connection, (channel, got), target, check


async def from_new_ports(n: int, check: bytes, target) -> None:
    for _ in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(check, target)
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.5)


async def still_carries(channel, got: list) -> bool:
    channel.send("still here")
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return got == ["still here"]


def test_a_session_learns_a_few_candidates_from_checks_and_the_rest_nothing():
    async def scenario():
        async with paired() as (bound, connection, (channel, got), target, check):
            before = len(connection._remote_candidates)
            await from_new_ports(50, check, target)
            assert (bound.learned, bound.counts["ice_checks_past_learned_limit"]) == (8, 42)
            assert len(connection._remote_candidates) == before + 8
            assert await still_carries(channel, got)
    asyncio.run(scenario())


def test_a_check_from_outside_the_remote_networks_learns_nothing():
    ours = [ipaddress.ip_address(a) for a in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)]
    outside = next(n for n in ("198.51.100.0/24", "203.0.113.0/24")  # documentation networks none of ours is in
                   if not any(a in ipaddress.ip_network(n) for a in ours))

    async def scenario():
        async with paired([outside]) as (bound, connection, (channel, got), target, check):
            before = len(connection._remote_candidates)
            await from_new_ports(5, check, target)
            not_learned = bound.counts["ice_checks_outside_networks"]
            assert (bound.learned, not_learned, len(connection._remote_candidates)) == (0, 5, before)
            assert await still_carries(channel, got)
    asyncio.run(scenario())


def test_a_clients_own_checks_are_answered_at_the_budget_and_a_strangers_spend_none_of_it():
    async def scenario():
        async with paired(per_second=50.0) as (bound, connection, (channel, got), target, check):
            stranger = binding_request("nobody", "else", "x" * 22)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                for _ in range(300):
                    sock.sendto(stranger, target)  # answered 401 by aioice, the budget untouched
                await asyncio.sleep(0.3)
                assert bound.counts["ice_checks_past_rate"] == 0
                t = time.monotonic()
                for _ in range(300):
                    sock.sendto(check, target)
                await asyncio.sleep(0.5)
                allowed = 100 + 50 * (time.monotonic() - t)  # the burst, then 50 a second
                dropped = bound.counts["ice_checks_past_rate"]
                assert 300 - allowed <= dropped < 300, dropped
            assert await still_carries(channel, got)
    asyncio.run(scenario())
