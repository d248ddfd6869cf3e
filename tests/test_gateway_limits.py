"""The gateway's per-client bounds (deploy/gateway/limits.py), without a server: who a client is, the offer's shape
checked before aiortc parses it, sessions / offers / uploads per client, and a session's data-channel and
microphone budget. (tests/test_gateway_abuse.py: the same bounds through the real gateway and tritonserver.)"""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.sdp import SessionDescription
from page import Channel
from test_gateway_session import FakeStream

from deploy.gateway.limits import (
    Clients,
    ClientUsage,
    GatewayLimits,
    Refused,
    SessionBudget,
    check_offer,
    client_identity,
    client_key,
)
from deploy.gateway.session import Session
from deploy.gateway.stats import GatewayStats


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def browser_like_offer() -> str:
    async def make() -> str:
        pc = RTCPeerConnection()
        pc.createDataChannel("events")
        pc.addTransceiver("audio", direction="sendrecv")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


def test_a_client_is_its_address_and_an_ipv6_host_its_64():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::5") != client_key("2001:db8:1:2::5")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key(None) == "unknown"
    # a proxy that appends the client's port: one client whatever port it comes from
    assert client_key("192.0.2.7:51234") == client_key("192.0.2.7:1") == "192.0.2.7"
    assert client_key("[2001:db8:1:2::5]:443") == "2001:db8:1:2::/64"


def test_behind_a_proxy_the_header_names_the_client_and_its_absence_is_refused():
    headers = {"X-Forwarded-For": "198.51.100.9, 203.0.113.4"}  # a client-supplied value, then the proxy's own
    assert client_identity("10.0.0.2", headers, "X-Forwarded-For") == "203.0.113.4"
    assert client_identity("10.0.0.2", headers, None) == "10.0.0.2"
    with pytest.raises(Refused, match="no X-Forwarded-For header") as e:
        client_identity("10.0.0.2", {}, "X-Forwarded-For")
    assert e.value.status == 403


def test_an_offer_is_checked_before_parsing():
    limits = GatewayLimits()
    sdp = browser_like_offer()
    check_offer(sdp, limits)  # what a browser sends passes
    ssrc = "".join(f"a=ssrc:{1000 + i} cname:x\r\n" for i in range(limits.max_offer_lines))
    with pytest.raises(ValueError, match=r"the offer has \d+ lines; the limit is 1000"):
        check_offer(sdp + ssrc, limits)
    more = 65 - sdp.count("a=candidate:")  # aiortc's own host candidates are in its offer already
    candidates = "".join(f"a=candidate:1 1 udp 1 10.0.0.1 {2000 + i} typ host\r\n" for i in range(more))
    with pytest.raises(ValueError, match="65 ICE candidates; the limit is 64"):
        check_offer(sdp + candidates, limits)
    with pytest.raises(ValueError, match="9 media sections; the limit is 8"):
        check_offer(sdp + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n" * 6, limits)
    with pytest.raises(ValueError, match="no media section"):
        check_offer("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n", limits)
    with pytest.raises(ValueError, match="not a session description"):
        check_offer("hello", limits)
    # what the bounds leave is cheap to parse: the worst case of distinct ssrc lines (quadratic in aiortc)
    worst = sdp + "".join(f"a=ssrc:{1000 + i} cname:x\r\n" for i in range(limits.max_offer_lines - 100))
    check_offer(worst, limits)
    assert len(worst) < limits.max_offer_bytes
    t = time.process_time()
    SessionDescription.parse(worst)
    assert time.process_time() - t < 0.2  # ~0.01 s here; 120,000 such lines took 45 s


def test_sessions_and_offers_are_bounded_per_client_not_for_everyone():
    clock = Clock()
    clients = Clients(GatewayLimits(sessions_per_client=2, offers_per_minute=6, offer_burst=3), clock)
    clients.open_session("a", "s1")
    clients.open_session("a", "s2")
    with pytest.raises(Refused, match=r"this client \(a\) has 2 sessions open \(limit 2\)") as e:
        clients.open_session("a", "s3")
    assert e.value.status == 429
    clients.open_session("b", "s4")  # another client is not held back by a's
    clients.close_session("a", "s1")
    clients.open_session("a", "s5")  # the third offer: the burst of 3 is spent
    clients.close_session("a", "s5")
    with pytest.raises(Refused, match="more than 6 sessions a minute"):
        clients.open_session("a", "s6")
    clock.t += 10.0  # 6 a minute: one more after 10 s
    clients.open_session("a", "s6")


def test_avatar_uploads_are_bounded_in_flight_and_per_hour():
    clock = Clock()
    clients = Clients(GatewayLimits(uploads_in_flight=1, uploads_per_hour=60, upload_burst=2), clock)
    clients.start_upload("a")
    with pytest.raises(Refused, match=r"1 avatar uploads in flight \(limit 1\)"):
        clients.start_upload("a")
    clients.start_upload("b")
    clients.end_upload("a")
    clients.start_upload("a")
    clients.end_upload("a")
    with pytest.raises(Refused, match="more than 60 an hour"):
        clients.start_upload("a")
    clock.t += 60.0
    clients.start_upload("a")


def test_clients_that_hold_nothing_are_forgotten_when_there_are_many():
    clock = Clock()
    clients = Clients(GatewayLimits(), clock, keep=8)
    clients.open_session("holder", "s1")
    for i in range(7):
        clients.open_session(f"once-{i}", f"x{i}")
        clients.close_session(f"once-{i}", f"x{i}")
    seen_again = clients["once-0"]  # now the most recently seen
    clients["newcomer"]  # the least recently seen that holds nothing goes: once-1
    assert len(clients) == 8 and clients["once-0"] is seen_again and clients["holder"].sessions == {"s1"}
    clients.start_upload("uploader")
    for i in range(20):
        clients[f"later-{i}"]
    assert len(clients) == 8 and clients["holder"].sessions == {"s1"} and clients["uploader"].uploads == 1


def test_a_new_client_past_the_kept_ones_looks_at_few_of_them(monkeypatch):
    """Each new client past 4096 used to look at every kept one (8 ms each here, on the gateway's loop): requests
    from new addresses froze a victim's video 35 s. Now the least recently seen go, looked at one at a time."""
    clients = Clients(GatewayLimits(), Clock(), keep=4096)
    for i in range(4096):
        clients.start_upload(f"a{i}")
        clients.end_upload(f"a{i}")  # each has spent from its upload budget (the old scan forgot none of them)
    looked = []
    holds = ClientUsage.holds
    monkeypatch.setattr(ClientUsage, "holds", lambda self: looked.append(self) or holds(self))
    for i in range(100):
        clients[f"b{i}"]
    assert len(clients) == 4096 and len(looked) == 100


def test_a_sessions_messages_and_microphone_have_a_budget():
    clock = Clock()
    budget = SessionBudget(GatewayLimits(messages_per_second=5, message_burst=5, max_message_bytes=100), clock)
    assert budget.message("x" * 101).text.startswith("a data-channel message of 101 bytes was dropped")
    assert [budget.message("{}") for _ in range(4)] == [None] * 4  # the oversized one spent from the rate too
    assert "more than 5 a second" in budget.message("{}").text
    assert "more than 5 a second" in budget.message("x" * 101).text  # oversized floods are rate-bound as well
    clock.t += 1.0
    assert budget.message("{}") is None
    # microphone: real time passes for ever, 10x real time is cut to 1.5x after a 2 s burst
    taken = 0
    for _ in range(int(10 / 0.032)):  # 10 s of chunks at real time
        clock.t += 0.032
        taken += budget.mic() is None
    assert taken == int(10 / 0.032)
    taken = 0
    for _ in range(int(10 / 0.0032)):  # 10 s of chunks sent 10x faster
        clock.t += 0.0032
        taken += budget.mic() is None
    assert 10 * 1.5 / 0.032 < taken < (10 * 1.5 + 2 * 1.5 + 0.1) / 0.032
    why = budget.mic()
    assert "faster than 1.5 times real time" in why.text and budget.tell(why) and not budget.tell(why)
    assert budget.tell(budget.message("x" * 101))  # another kind is told at once


def test_a_flood_on_the_data_channel_reaches_the_server_as_its_budget_only():
    async def run():
        stream = FakeStream()
        s = Session("web-flood", stream, GatewayStats(), SessionBudget(GatewayLimits(message_burst=10)))
        s.attach(Channel())
        s.start()
        for i in range(500):
            s.channel.handler(json.dumps({"type": "text", "text": f"hello {i}"}))
        for _ in range(500):
            s.mic_chunk(np.zeros(512, np.float32))
        await s.close()
        return stream, s.channel

    stream, page = asyncio.run(run())
    assert sum(c[0] == "text" for c in stream.calls) == 10  # the burst; the rest dropped here, not sent upstream
    assert 90 <= sum(c[0] == "mic" for c in stream.calls) <= 95  # 2 s of audio at 1.5x: 93 chunks
    errors = [m["message"] for m in page.sent if m["type"] == "error"]
    assert len(errors) == 2, errors  # told once for the messages, once for the microphone
    assert "data-channel messages dropped" in errors[0] and "microphone audio dropped" in errors[1]
