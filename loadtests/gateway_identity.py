"""Who the orchestrator thinks a browser is: cases of `python -m loadtests.gateway_abuse` (RELIABILITY.md, "A tenth
pass").

The orchestrator bounds some things per client, and knows a client by its `session_token`: behind the front door an
API key's (the door writes HMAC(identity) into every request), from the gateway whatever the gateway sends. Its
answer cache lets each client hold a quarter of it, so that no client can flush what others cached (the fourth
pass). The attacker here is a browser-like peer that opens the sessions its gateway limits allow, each with render
options of its own (every seed is a new cache entry), and asks for "hello" in each; the victim, another client,
had its "hello" cached before and asks again after. And the many-addresses cases: requests from ever new addresses
(each a client to the gateway's per-client bounds), and many clients' avatar uploads at once, each within its own
bounds.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import numpy as np

from ensemble.avatar import demo_avatar_png
from loadtests.gateway_peer import ATTACKER, NEWCOMER, Peer, sent_by, short

# large answers, each within what one client may cache (a quarter of the 256 MiB cache: one of 96 tokens, 111 MiB on
# the tiny preset at this quality, is never cached): every frame at the best JPEG quality, a reply of fixed length
# (~1.16 MiB a token)
FLUSH_OPTIONS = {"ignore_eos": True, "jpeg_quality": 95, "frame_stride": 1}


async def typed_turn(peer: Peer, text: str, timeout_s: float = 120.0) -> dict:
    """Type `text` on the peer's data channel and return the reply's `done` (or `error`) message."""
    seen = len(peer.messages)
    peer.channel.send(json.dumps({"type": "text", "text": text}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in peer.messages[seen:]:
            if m.get("type") in ("done", "error"):
                return m
        await asyncio.sleep(0.05)
    return {"type": "error", "message": f"no reply within {timeout_s:.0f} s"}


def replayed(done: dict) -> bool:
    """A reply from the answer cache: the orchestrator called no stage for it."""
    return done.get("type") == "done" and not done.get("stage_calls")


async def open_sessions(http, clients: list[str], options: list[dict], wait_s: float = 60.0) -> list[Peer]:
    """A connected session for each of `clients` (an address, as the proxy's header names it), each with its own
    options (offers the gateway refuses for its rate are sent again 5 s later)."""
    peers: list[Peer] = []
    deadline = time.monotonic() + wait_s
    while len(peers) < len(clients):
        peer = Peer()
        status, text = await peer.connect(http, clients[len(peers)], options=options[len(peers)])
        if status == 200:
            peers.append(peer)
            continue
        await peer.pc.close()
        if status != 429 or time.monotonic() > deadline:
            await asyncio.gather(*(p.pc.close() for p in peers))
            raise RuntimeError(f"refused: {short(status, text)}")
        await asyncio.sleep(5)
    return peers


async def answer_cache_flush(http, victim: Peer, sessions: int = 4, rounds: int = 3) -> str:
    """One client's 4 sessions at a time, 3 times over, answers of 40 tokens (~47 MiB)."""
    return await flush(http, victim, [[ATTACKER] * sessions] * rounds, tokens=40)


async def answer_cache_flush_by_clients(http, victim: Peer, clients: int = 6, at_once: int = 2) -> str:
    """6 clients (addresses) with a session each, 2 at a time (more at once degrade every turn on this machine,
    theirs too: smaller answers), each at its share of the cache (an answer of 50 tokens, ~58 MiB, more than the
    victim's ~26 MiB)."""
    names = [f"203.0.113.{100 + c}" for c in range(clients)]
    return await flush(http, victim, [names[i:i + at_once] for i in range(0, clients, at_once)], tokens=50)


async def flush(http, victim: Peer, rounds: list[list[str]], tokens: int) -> str:
    """Each round: a session for each client named, with new seeds (a new cache entry each), asking "hello"."""
    first = await typed_turn(victim, "hello")
    again = await typed_turn(victim, "hello")
    if not replayed(again):
        return f"the victim's 'hello' was not cached to begin with: {first.get('type')}, then {again}"
    answered, lighter, t0 = 0, 0, time.monotonic()
    for r, clients in enumerate(rounds):
        try:
            options = [{**FLUSH_OPTIONS, "max_reply_tokens": tokens, "seed": 100 * r + i} for i in range(len(clients))]
            peers = await open_sessions(http, clients, options)
        except RuntimeError as e:
            return f"{answered} answers rendered, then {e}"
        done = await asyncio.gather(*(typed_turn(p, "hello") for p in peers))
        answered += sum(d.get("type") == "done" for d in done)
        lighter += sum(d.get("frame_stride", 1) > 1 for d in done)  # degraded: a smaller answer than asked for
        await asyncio.gather(*(p.pc.close() for p in peers))
    # the load may have left the server degraded (ensemble/governor.py: lighter turns, another cache key, until
    # recent turns drop no frames): its degraded turns are no answer to the question, and let it recover
    for degraded in range(15):
        after = await typed_turn(victim, "hello")
        if replayed(after) or after.get("frame_stride", 1) == 1:
            break
    took = after.get("timings_ms", {}).get("total")
    how = "replayed from the cache" if replayed(after) else "rendered again"
    return (f"{answered} answers rendered ({lighter} degraded) in {time.monotonic() - t0:.0f} s; then "
            f"the victim's 'hello' {how} in {took} ms" + (f" (after {degraded} degraded turns)" if degraded else ""))


async def new_addresses(http, victim: Peer, per_second: int = 300, seconds: float = 30.0) -> str:
    """Requests from ever new addresses (as the proxy's header names them: an IPv6 /48 holds 65536 /64s, each a
    client), each an empty avatar upload (refused 400, after the gateway has looked up its client)."""
    statuses: Counter = Counter()
    t0, n = time.monotonic(), 0

    async def one(i: int) -> None:
        async with http.post("/avatar", data=b"", headers=sent_by(f"2001:db8:{i // 65536:x}:{i % 65536:x}::1")) as r:
            statuses[r.status] += 1

    pending: set[asyncio.Task] = set()
    while (elapsed := time.monotonic() - t0) < seconds:
        while n < elapsed * per_second:
            pending.add(asyncio.ensure_future(one(n)))
            n += 1
        pending = {t for t in pending if not t.done()}
        await asyncio.sleep(0.01)
    await asyncio.gather(*pending, return_exceptions=True)
    took = time.monotonic() - t0
    return f"{n} requests from {n} addresses in {took:.0f} s ({n / took:.0f} a second): {dict(statuses)}"


async def uploads_from_many(http, victim: Peer, clients: int = 40, at_once: int = 2, rounds: int = 3,
                            mib: float = 9.5) -> str:
    """40 clients, each with its 2 uploads in flight (its own bound), 3 times over: bodies just under the 10 MiB
    limit (random bytes: the registry refuses them once it has them). Then a newcomer uploads the demo portrait."""
    body = np.random.default_rng(0).integers(0, 256, int(mib * 2**20), dtype=np.uint8).tobytes()
    statuses: Counter = Counter()

    async def upload(client: str, data: bytes) -> tuple[int, str]:
        async with http.post("/avatar", data=data, headers=sent_by(client)) as r:
            return r.status, await r.text()

    async def one_client(c: int) -> None:
        for _ in range(rounds):
            for status, _ in await asyncio.gather(*(upload(f"198.51.100.{c + 1}", body) for _ in range(at_once))):
                statuses[status] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    took = time.monotonic() - t0
    status, text = await upload(NEWCOMER, demo_avatar_png())
    return (f"{sum(statuses.values())} uploads of {mib:g} MiB, {clients * at_once} at a time, in {took:.0f} s: "
            f"{dict(statuses)}; then a newcomer's upload: {short(status, text)}")


CASES = (answer_cache_flush, answer_cache_flush_by_clients, new_addresses, uploads_from_many)
