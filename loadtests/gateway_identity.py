"""Who the orchestrator thinks a browser is: cases of `python -m loadtests.gateway_abuse` (RELIABILITY.md, "A tenth
pass").

The orchestrator bounds some things per client, and knows a client by its `session_token`: behind the front door an
API key's (the door writes HMAC(identity) into every request), from the gateway whatever the gateway sends. Its
answer cache lets each client hold a quarter of it, so that no client can flush what others cached (the fourth
pass). The attacker here is a browser-like peer that opens the sessions its gateway limits allow, each with render
options of its own (every seed is a new cache entry), and asks for the cached phrases; the victim, another client,
had its "hello" cached before and asks again after.
"""
from __future__ import annotations

import asyncio
import json
import time

from loadtests.gateway_peer import ATTACKER, Peer, short

# answers as large as one client may cache (a quarter of the 256 MiB cache: one of 96 tokens, 111 MiB on the tiny
# preset at this quality, is never cached): every frame at the best JPEG quality, a reply of fixed length (~47 MiB)
FLUSH_OPTIONS = {"ignore_eos": True, "max_reply_tokens": 40, "jpeg_quality": 95, "frame_stride": 1}


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


async def open_sessions(http, n: int, options: list[dict], wait_s: float = 60.0) -> list[Peer]:
    """`n` connected sessions of the attacker, each with its own options (offers the gateway refuses for its rate
    are sent again 5 s later)."""
    peers: list[Peer] = []
    deadline = time.monotonic() + wait_s
    while len(peers) < n:
        peer = Peer()
        status, text = await peer.connect(http, ATTACKER, options=options[len(peers)])
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
    first = await typed_turn(victim, "hello")
    again = await typed_turn(victim, "hello")
    if not replayed(again):
        return f"the victim's 'hello' was not cached to begin with: {first.get('type')}, then {again}"
    answered, t0 = 0, time.monotonic()
    for r in range(rounds):  # each round new sessions with new seeds: a new cache entry each
        try:
            peers = await open_sessions(http, sessions, [{**FLUSH_OPTIONS, "seed": 100 * r + i}
                                                         for i in range(sessions)])
        except RuntimeError as e:
            return f"{answered} answers rendered, then {e}"
        done = await asyncio.gather(*(typed_turn(p, "hello") for p in peers))
        answered += sum(d.get("type") == "done" for d in done)
        await asyncio.gather(*(p.pc.close() for p in peers))
    after = await typed_turn(victim, "hello")
    took = after.get("timings_ms", {}).get("total")
    return (f"{answered} answers of {sessions} sessions at a time rendered in {time.monotonic() - t0:.0f} s; then "
            f"the victim's 'hello' {'replayed from the cache' if replayed(after) else 'rendered again'} in "
            f"{took} ms")


CASES = (answer_cache_flush,)
