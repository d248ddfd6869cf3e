"""Overload: 4x the session cap, offered at once; refusals, admitted latency, nothing lost, recovery.

    python -m loadtests.overload [--cap 2] [--factor 4] [--duration 60] [--think 0.2]

Starts the embedded tritonserver (tiny preset, exported first when missing) on ports
19100-19102 and sets talking_head's session cap (its `max_sessions` parameter) to `--cap`
through explicit model control (a config override; the repository is not touched). Then:

  1. baseline: turns one at a time (the unloaded latency);
  2. capacity: `--cap` sessions, turn after turn (the latency at capacity);
  3. overload: `--factor` x `--cap` sessions for `--duration` seconds, each asking a turn
     again `--think` seconds after the last one ended, refused or not;
  4. recovery: once the server reports no active session, `--cap` sessions at once.

It prints the refusals (UNAVAILABLE-class "server busy", before any event) and their
latency p50/p95/max at the client (target <= 50 ms), the admitted turns' time to first
audio chunk (TTFA) p50/p95 beside the baseline and capacity figures, `lost` (turns that
neither completed with `done` nor were refused: must be 0), the server's own refusal
counter, and whether every recovery turn completed; and writes
loadtests/results/overload_<time>.json. Exit status 1 when a turn was lost or recovery failed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from client.retry import is_retryable_refusal
from client.sdk import ClientError, TalkingHeadClient
from deploy import metrics_text
from deploy.drain import active_sessions
from deploy.server import EmbeddedServer, ServerOptions
from ensemble import metrics
from ensemble.avatar import demo_avatar_png
from export.contract import events as ev
from loadtests import stats
from loadtests.bench_cpu import TEXTS, hardware, pct
from loadtests.run import check_ports_free, ensure_exported

RESULTS = Path(__file__).resolve().parent / "results"
TURN_OPTIONS = {"max_reply_tokens": 24}
REFUSAL_TARGET_S = 0.050


@dataclass
class Attempt:
    phase: str
    user: int
    start_s: float  # since the phase began
    outcome: str  # done | refused (UNAVAILABLE-class, no event delivered) | failed (anything else: lost)
    latency_s: float  # done: to the done event; refused/failed: to the error
    ttfa_s: float | None = None
    events: int = 0
    message: str | None = None


def attempt(client: TalkingHeadClient, avatar_id: str, text: str, phase: str, user: int, t0: float,
            options: dict = TURN_OPTIONS) -> Attempt:
    """One turn, classified: completed, refused before any event, or failed."""
    start = time.perf_counter()
    n, ttfa, done = 0, None, False
    try:
        for e in client.ask(avatar_id=avatar_id, text=text, options=options):
            n += 1
            if e.type == ev.AUDIO and ttfa is None:
                ttfa = e.latency_s
            done = done or e.type == ev.DONE
    except ClientError as e:
        message = str(e)
        refused = n == 0 and is_retryable_refusal(message)
        return Attempt(phase, user, start - t0, "refused" if refused else "failed", time.perf_counter() - start,
                       ttfa, n, message[:300])
    return Attempt(phase, user, start - t0, "done" if done else "failed", time.perf_counter() - start, ttfa, n,
                   None if done else "ended without a done event")


def run_users(url: str, avatar_id: str, phase: str, users: int, *, turns: int | None = None,
              duration_s: float | None = None, think_s: float = 0.0) -> list[Attempt]:
    """`users` sessions started together, each asking `turns` turns (or until `duration_s` passed),
    `think_s` apart."""
    results: list[Attempt] = []
    lock = threading.Lock()
    go = threading.Barrier(users)
    t0 = time.perf_counter() + 0.0

    def user(i: int) -> None:
        with TalkingHeadClient(url, turn_timeout_s=120) as client:
            go.wait()
            k = 0
            while (turns is None or k < turns) and (duration_s is None or time.perf_counter() - t0 < duration_s):
                a = attempt(client, avatar_id, TEXTS[(i + k) % len(TEXTS)], phase, i, t0)
                with lock:
                    results.append(a)
                k += 1
                time.sleep(think_s)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def counter(metrics_url: str, name: str, labels: str) -> float:
    """A counter's value on Triton's metrics endpoint (0 when absent), e.g. labels 'reason="overloaded"'."""
    return metrics_text.total(metrics_text.scrape(metrics_url), name, **metrics_text.labels(labels))


def wait_idle(metrics_url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while active_sessions(metrics_url) != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sessions still active after {timeout_s:g} s")
        time.sleep(0.05)


def spread(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "max": max(values)}


def summarize(phases: dict[str, list[Attempt]], cap: int, factor: int, server_refusals: float) -> dict:
    def of(phase: str, outcome: str) -> list[Attempt]:
        return [a for a in phases[phase] if a.outcome == outcome]

    over = phases["overload"]
    refused = of("overload", "refused")
    lost = [a for p in phases.values() for a in p if a.outcome == "failed"]
    return {
        "cap": cap, "factor": factor, "users_offered": cap * factor,
        "baseline_ttfa_s": spread([a.ttfa_s for a in of("baseline", "done") if a.ttfa_s is not None]),
        "capacity_ttfa_s": spread([a.ttfa_s for a in of("capacity", "done") if a.ttfa_s is not None]),
        "overload_attempts": len(over),
        "overload_completed": len(of("overload", "done")),
        "overload_refused": len(refused),
        "refusal_latency_s": spread([a.latency_s for a in refused]),
        "refusals_within_target": sum(a.latency_s <= REFUSAL_TARGET_S for a in refused),
        "refusal_messages": sorted({a.message.split(":")[0] for a in refused if a.message}),
        "refusal_example": refused[0].message if refused else None,
        "admitted_ttfa_s": spread([a.ttfa_s for a in of("overload", "done") if a.ttfa_s is not None]),
        "server_refusals_counted": server_refusals,
        "lost": len(lost),
        "lost_examples": [a.message for a in lost[:5]],
        "recovery_completed": len(of("recovery", "done")),
        "recovery_offered": len(phases["recovery"]),
        "recovery_ttfa_s": spread([a.ttfa_s for a in of("recovery", "done") if a.ttfa_s is not None]),
    }


def raw_figures(phases: dict[str, list[Attempt]]) -> dict:
    """What the percentiles came from: per phase, the TTFA of completed turns and the latency of
    refusals (seconds, in order); every lost turn in full."""
    return {phase: {"ttfa_s": [a.ttfa_s for a in attempts if a.outcome == "done"],
                    "refusal_latency_s": [a.latency_s for a in attempts if a.outcome == "refused"],
                    "lost": [asdict(a) for a in attempts if a.outcome == "failed"]}
            for phase, attempts in phases.items()}


def report(r: dict) -> str:
    ms = lambda v: "-" if v is None else f"{v * 1000:.0f} ms"  # noqa: E731

    def line(label: str, s: dict) -> str:
        return f"  {label:<34} p50 {ms(s['p50']):>8}  p95 {ms(s['p95']):>8}  max {ms(s['max']):>8}  ({s['n']})"

    return "\n".join([
        f"\nOverload: session cap {r['cap']}, {r['users_offered']} sessions offered ({r['factor']}x); {r['hardware']}",
        line("TTFA unloaded (one at a time)", r["baseline_ttfa_s"]),
        line(f"TTFA at capacity ({r['cap']} sessions)", r["capacity_ttfa_s"]),
        f"  overload: {r['overload_attempts']} turns asked, {r['overload_completed']} completed, "
        f"{r['overload_refused']} refused ({r['server_refusals_counted']:.0f} counted by the server)",
        line("refusal latency at the client", r["refusal_latency_s"]),
        f"  {'refusals within 50 ms':<34} {r['refusals_within_target']} of {r['overload_refused']}; "
        f"message: {r['refusal_example']!r}",
        line("TTFA of admitted turns", r["admitted_ttfa_s"]),
        f"  lost (neither done nor refused)    {r['lost']}" + "".join(f"\n    {m}" for m in r["lost_examples"]),
        f"  recovery: {r['recovery_completed']} of {r['recovery_offered']} turns completed; "
        + line("TTFA", r["recovery_ttfa_s"]).strip(),
    ])


def add_load_arguments(ap: argparse.ArgumentParser) -> None:
    """--cap, --factor, --duration and --think: the overload this harness offers (loadtests.keepers offers it too)."""
    ap.add_argument("--cap", type=int, default=2, help="talking_head's session cap, max_sessions (default 2)")
    ap.add_argument("--factor", type=int, default=4, help="sessions offered per admitted one (default 4)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of overload (default 60)")
    ap.add_argument("--think", type=float, default=0.2, help="seconds between a session's turns (default 0.2)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_arguments(ap)
    ap.add_argument("--baseline-turns", type=int, default=10, help="turns one at a time (default 10)")
    ap.add_argument("--capacity-turns", type=int, default=8, help="turns per session at capacity (default 8)")
    ap.add_argument("--preset", default="tiny", help="preset exported when the repository has none (default tiny)")
    ap.add_argument("--grpc-port", type=int, default=19101, help="HTTP is one below, metrics one above (default 19101)")
    ap.add_argument("--json", type=Path, default=None, help="default loadtests/results/overload_<UTC time>.json")
    args = ap.parse_args(argv)

    ensure_exported(args.preset)
    ports = (args.grpc_port - 1, args.grpc_port, args.grpc_port + 1)
    check_ports_free(*ports)
    workdir = Path(tempfile.mkdtemp(prefix="overload-"))
    options = ServerOptions(workdir=workdir, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
    metrics_url = f"http://localhost:{ports[2]}/metrics"
    refused_label = 'reason="overloaded"'
    print(f"== overload: starting the embedded tritonserver (gRPC {options.grpc_url})", flush=True)
    with EmbeddedServer(options) as server, TalkingHeadClient(options.grpc_url) as client:
        took = server.set_parameters("talking_head", {"max_sessions": args.cap})
        print(f"   ready in {server.started_s:.1f} s; talking_head reloaded with max_sessions={args.cap} in {took:.1f} s",
              flush=True)
        avatar = client.register_avatar(demo_avatar_png()).id
        url = options.grpc_url
        run_users(url, avatar, "warm-up", args.cap, turns=2)
        phases = {"baseline": run_users(url, avatar, "baseline", 1, turns=args.baseline_turns)}
        phases["capacity"] = run_users(url, avatar, "capacity", args.cap, turns=args.capacity_turns)
        wait_idle(metrics_url)
        before = counter(metrics_url, metrics.REJECTED.name, refused_label)
        print(f"   overload: {args.cap * args.factor} sessions for {args.duration:g} s", flush=True)
        phases["overload"] = run_users(url, avatar, "overload", args.cap * args.factor, duration_s=args.duration,
                                       think_s=args.think)
        server_refusals = counter(metrics_url, metrics.REJECTED.name, refused_label) - before
        wait_idle(metrics_url)
        phases["recovery"] = run_users(url, avatar, "recovery", args.cap, turns=1)
    shutil.rmtree(workdir, ignore_errors=True)
    result = {"command": f"python -m loadtests.overload --cap {args.cap} --factor {args.factor} --duration "
                         f"{args.duration:g} --think {args.think:g}",
              "hardware": hardware(), "preset": args.preset,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "turn_options": TURN_OPTIONS, **summarize(phases, args.cap, args.factor, server_refusals),
              "raw": raw_figures(phases)}
    print(report(result))
    path = args.json or RESULTS / f"overload_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats.rounded(result), indent=1))
    print(f"  figures: {path}")
    return 1 if result["lost"] or result["recovery_completed"] < result["recovery_offered"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
