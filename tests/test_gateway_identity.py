"""Whom the gateway's bounds count (RELIABILITY.md, "A tenth pass"), with the real gateway app and the real embedded
tritonserver: one session token per client, POSTs only from the gateway's own page, loopback host names only on
loopback, avatar uploads leaving nothing behind and registered a few at a time. (`python -m loadtests.gateway_abuse
--cases answer_cache_flush ...` and `python -m loadtests.cross_site`: the same with a connected victim measured.)"""
from __future__ import annotations

import asyncio
import gc
import json

import pytest
from test_gateway_abuse import as_client, post, running
from test_gateway_limits import browser_like_offer

from deploy.gateway import __main__ as gateway_main
from deploy.gateway.limits import LOOPBACK_NAMES, GatewayLimits
from deploy.session_tokens import SessionTokens
from ensemble.avatar import demo_avatar_png

pytestmark = pytest.mark.server


def test_the_sessions_of_one_client_carry_one_session_token_and_another_clients_another(server):
    """The orchestrator bounds what one client holds by its `session_token` (a quarter of the answer cache): with a
    token per session, a client's 4 sessions held all of it and flushed what others had cached (RELIABILITY.md, "A
    tenth pass"). Every session of one client now carries the client's token, another client's another, and none is
    the token the front door would derive for a key of the same name."""
    offer = json.dumps({"type": "offer", "sdp": browser_like_offer()})
    tokens = SessionTokens(b"one secret, 16 bytes or more")

    async def scenario():
        async with running(server, GatewayLimits(), tokens=tokens) as (gw, http):
            for client in ("203.0.113.66", "203.0.113.66", "203.0.113.66", "192.0.2.1"):
                status, text, _ = await post(http, "/offer", client, data=offer)
                assert status == 200, text
            return [(gw.client_of[sid], session.stream.token) for sid, (session, _) in gw.sessions.items()]

    held = asyncio.run(scenario())
    mallory = {token for client, token in held if client == "203.0.113.66"}
    (other,) = {token for client, token in held if client == "192.0.2.1"}
    assert len(held) == 4 and len(mallory) == 1 and other not in mallory, held
    assert tokens("203.0.113.66") not in mallory  # the gateway's clients are named apart from the door's


def test_a_post_from_another_sites_page_is_refused_and_the_page_is_not_framed(server):
    """Browsers name the page that sent a POST (`Origin`): one of another origin is refused before the offer or the
    image is read, and counts against nothing; the gateway's own page (its Host's origin), an origin the operator
    allows (`page_origins`) and a client that is no page (no Origin) are served. Every answer forbids framing."""
    offer = json.dumps({"type": "offer", "sdp": browser_like_offer()})

    async def scenario():
        async with running(server, GatewayLimits(upload_burst=1), page_origins=("https://app.example",)) \
                as (gw, http):
            async with http.get("/") as r:  # the page, and the origin a browser gives it
                own = f"{r.url.scheme}://{r.url.host}:{r.url.port}"
                assert r.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
                assert r.headers["X-Frame-Options"] == "DENY"
            for origin in ("https://evil.example", "null", own.replace("http:", "ftp:"), own + "1", "http://["):
                for path, body in (("/offer", offer), ("/avatar", demo_avatar_png())):
                    status, text, _ = await post(http, path, headers={"Origin": origin}, data=body)
                    assert status == 403 and "another origin" in text and origin[:20] in text, (origin, text)
            assert gw.stats.sessions_started == 0
            for origin in (own, "https://app.example", None):
                status, text, _ = await post(http, "/offer", headers={"Origin": origin} if origin else {}, data=offer)
                assert status == 200, (origin, text)
            status, text, _ = await post(http, "/avatar", headers={"Origin": own}, data=demo_avatar_png())
            assert status == 200, text  # the one upload of its burst: the refused ones took none

    asyncio.run(scenario())


def test_on_loopback_a_request_for_another_host_name_is_refused(server):
    """DNS rebinding: a website that points its name at the gateway's loopback address has a page same-origin with
    the gateway (its Origin matches the Host it sends). A gateway on loopback serves the loopback's names only."""
    offer = json.dumps({"type": "offer", "sdp": browser_like_offer()})
    args = gateway_main.parse_args
    assert gateway_main.allowed_hosts(args([])) == LOOPBACK_NAMES  # --host 127.0.0.1, the default
    assert gateway_main.allowed_hosts(args(["--host", "0.0.0.0"])) == ()  # behind a proxy: its names are the proxy's
    assert gateway_main.allowed_hosts(args(["--host", "::", "--allowed-host", "Talk.Example"])) == ("talk.example",)

    async def scenario():
        async with running(server, GatewayLimits(), allowed_hosts=LOOPBACK_NAMES) as (gw, http):
            async with http.get("/") as r:
                port = r.url.port
            rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
            for path in ("/", "/config"):
                async with http.get(path, headers={**as_client("198.51.100.1"), **rebound}) as r:
                    assert r.status == 403 and "DNS rebinding" in await r.text()
            status, text, _ = await post(http, "/offer", headers=rebound, data=offer)
            assert status == 403 and "evil.example" in text, text
            async with http.get("/", headers={"Host": "["}) as r:  # not a host name at all: refused, not a 500
                assert r.status == 403, await r.text()
            for name in ("localhost", "127.0.0.1", "[::1]"):
                own = {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}"}
                status, text, _ = await post(http, "/offer", headers=own, data=offer)
                assert status == 200, (name, text)

    asyncio.run(scenario())


async def answered_and_held(http, path: str, body: bytes | str, clients: int) -> tuple[list, int]:
    """`clients` POSTs of `body` to `path` at once, each from its own address on its own keep-alive connection: their
    answers, and the bytes of Python objects still allocated once they are answered (tracemalloc, after gc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        answers = await asyncio.gather(*(post(http, path, f"198.51.100.{i + 1}", data=body) for i in range(clients)))
        gc.collect()
        return answers, tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_a_refused_upload_leaves_nothing_with_its_connection(server):
    """aiohttp keeps a keep-alive connection's last request and answer until its next request: the body cached by
    `request.read()` and an answer raised from the registry's error (whose context held every copy of the image)
    stayed with each connection, ~19 MiB of Python objects for each refused 9.5 MiB upload (and more below them):
    40 clients' uploads held 8.7 GiB. With 8 keep-alive connections each just refused, under 2 MiB is still held."""
    import numpy as np

    body = np.random.default_rng(0).integers(0, 256, int(9.5 * 2**20), dtype=np.uint8).tobytes()

    async def scenario():
        async with running(server, GatewayLimits()) as (gw, http):
            answers, held = await answered_and_held(http, "/avatar", body, 8)
            assert [a[0] for a in answers] == [400] * 8, answers  # not an image: the registry's message
            assert held < 2 * 2**20, f"{held / 2**20:.0f} MiB held with the connections"

    asyncio.run(scenario())


def test_a_refused_offer_leaves_nothing_with_its_connection(server):
    """The same for offers: a 400 raised inside the `except` that caught the offer's fault kept that fault's traceback,
    and with it the offer (its bytes, its decoded text and the JSON parsed from it), with each keep-alive connection
    until its next request: 16 clients' 60 KiB offers, refused, held 2.2 MiB; now under 1 MiB (0.36 measured)."""
    bad = json.dumps({"type": "offer", "sdp": 1, "padding": "x" * 60_000})  # an offer whose sdp is no text

    async def scenario():
        async with running(server, GatewayLimits()) as (gw, http):
            answers, held = await answered_and_held(http, "/offer", bad, 16)
            assert [a[0] for a in answers] == [400] * 16 and "expected a JSON object" in answers[0][1], answers
            assert held < 2**20, f"{held / 2**20:.2f} MiB held with the connections"
            print(f"\n16 refused offers: {held / 2**20:.2f} MiB held with their connections")

    asyncio.run(scenario())


def test_avatar_uploads_are_registered_a_few_at_a_time_and_the_rest_wait_unread(server):
    """Each upload in flight holds its body and tritonclient's copies of it: many clients' at once (each within its
    own 2) grew the gateway toward its memory limit. With `uploads_at_once` = 1: an upload whose body is still
    coming holds the one turn, another client's waits, is told 503 after `upload_wait_s`, and counts against
    nothing; once the first is done, uploads are registered again."""
    png = demo_avatar_png()

    async def scenario():
        async with running(server, GatewayLimits(uploads_at_once=1, upload_wait_s=1.0)) as (gw, http):
            async with http.get("/") as r:
                port = r.url.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a body sent slowly: half now
            writer.write(b"POST /avatar HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.66\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(png) + png[: len(png) // 2])
            await writer.drain()
            await asyncio.sleep(0.3)
            status, text, took = await post(http, "/avatar", "192.0.2.10", data=png)
            assert status == 503 and "1 avatar uploads are being registered" in text and took >= 1.0, (status, text)
            writer.write(png[len(png) // 2:])  # the rest: the first is registered
            await writer.drain()
            assert b" 200 " in (await reader.readline()), "the slow upload was not registered"
            writer.close()
            status, text, _ = await post(http, "/avatar", "192.0.2.10", data=png)
            assert status == 200 and json.loads(text)["id"], text  # its waiting upload took none of its budget
            assert gw.uploading.locked() is False

    asyncio.run(scenario())
