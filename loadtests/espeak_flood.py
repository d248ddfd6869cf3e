"""A key that floods texts which crash espeak-ng, against the same key flooding ordinary text (issue 15, fifth pass).

    python -m loadtests.espeak_flood [--seconds 20] [--repository build/tiny_repository]

Each crash costs a new espeak-ng child (export/contract/espeak_process.py: ~55 ms of CPU, a new interpreter), and the
orchestrator's calls to espeak-ng take turns, so crashes could slow every client more than the same number of
ordinary turns would. Starts the embedded server and a front door with its default limits (4 turns in flight per
key, 20 requests/s); a victim key loops short text turns all along. Phases of `--seconds` each: none, mallory's 4
turns at a time of an ordinary `say`, of a `say` that crashes espeak-ng, none. Prints the victim's turn times per
phase and mallory's outcomes.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

from client.sdk import TalkingHeadClient
from client.wire import auth_headers, turn_inputs
from deploy.front_door import FrontDoorOptions, FrontDoorThread
from deploy.front_door.quota import ApiKeys, Limits
from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.contract.layout import BUILD
from loadtests.adversarial import KEYS, Victim, stream_once

ORDINARY = "Good morning to you."
CRASHER = "a.m." * 44  # a dotted abbreviation past espeak-ng's 80-byte buffer: SIGSEGV (espeak-ng#2428)
PHASES = (("no attack", None), ("ordinary say x4", ORDINARY), ("crashing say x4", CRASHER), ("no attack, after", None))


def _mallory(url: str, avatar: str, text: str, stop: threading.Event, outcomes: dict) -> None:
    headers = auth_headers(KEYS["mallory"])
    while not stop.is_set():
        try:
            e = stream_once(url, turn_inputs(avatar_id=avatar, text=text, options={"action": "say"}),
                            headers=headers, timeout_s=30)
        except Exception as x:  # the door refused the stream before its request went out (its rate limit)
            e = str(x)
        key = "ok" if e is None else "espeak-ng crashed" if "espeak-ng crashed" in e else \
            "rate limit" if "rate limit" in e or "no longer in valid state" in e else e[:70]
        outcomes[key] = outcomes.get(key, 0) + 1
        if key == "rate limit":
            time.sleep(0.05)  # as a client told to slow down; the door's refusals themselves were measured cheap


def phase(url: str, avatar: str, text: str | None, seconds: float) -> dict:
    stop, outcomes = threading.Event(), {}
    victim = Victim(url, avatar).start()
    mallory = [threading.Thread(target=_mallory, args=(url, avatar, text, stop, outcomes))
               for _ in range(4 if text else 0)]
    for t in mallory:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in mallory:
        t.join(90)
    victim.stop()
    times = victim.times
    return {"victim_turns": len(times), "victim_failed": victim.failed, "failures": victim.errors[:3],
            "p50_s": statistics.median(times) if times else None,
            "p95_s": statistics.quantiles(times, n=20, method="inclusive")[18] if len(times) > 1 else None,
            "max_s": max(times, default=None), "mallory": outcomes, "mallory_per_s": sum(outcomes.values()) / seconds}


def run(repository: Path, seconds: float) -> list[tuple[str, dict]]:
    options = ServerOptions(repository=repository, workdir=BUILD / "espeak_flood", exit_timeout_s=10,
                            **server_ports())
    with EmbeddedServer(options) as server:
        door_options = FrontDoorOptions(upstream=server.options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys(KEYS),
                                        limits=Limits())
        with FrontDoorThread(door_options) as door:
            with TalkingHeadClient(door.url, api_key=KEYS["victim"]) as c:
                avatar = c.register_avatar(demo_avatar_png()).id
            phase(door.url, avatar, None, 8)  # warm-up: every model's first turns
            results = []
            for name, text in PHASES:
                results.append((name, phase(door.url, avatar, text, seconds)))
                print(f"{name}: done", flush=True)
            if server.process.poll() is not None:
                raise SystemExit(f"tritonserver died: see {options.workdir / 'tritonserver.log'}")
    return results


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def table(results: list[tuple[str, dict]]) -> str:
    lines = ["| phase | victim turns (failed) | victim p50 / p95 / max s | mallory per s | mallory's outcomes |",
             "| --- | ---: | ---: | ---: | --- |"]
    for name, r in results:
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(r["mallory"].items(), key=lambda kv: -kv[1])) or "—"
        lines.append(f"| {name} | {r['victim_turns']} ({r['victim_failed']}) | {_s(r['p50_s'])} / {_s(r['p95_s'])} / "
                     f"{_s(r['max_s'])} | {r['mallory_per_s']:.1f} | {outcomes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=BUILD / "tiny_repository",
                    help="model repository (default: the tiny preset's)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    args = ap.parse_args(argv)
    results = run(args.repository, args.seconds)
    print(table(results))
    for name, r in results:
        for f in r["failures"]:
            print(f"  {name}: victim turn failed: {f}")
    return 0 if all(r["victim_failed"] == 0 for _, r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
