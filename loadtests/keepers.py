"""The server's own keepers under load, after it and at a drain: the liveness canary, the watchdog and its readiness,
the load governor.

Kubernetes runs `python -m deploy.canary` as the Triton container's liveness probe (every 30 s; three failures in a
row restart the container, every session on it lost) and `python -m deploy.watchdog` as a sidecar (a canary round
every 15 s; it reloads the model a failed round names, and its ready file is the pod's readiness). Compose runs the
same watchdog. This harness serves them what a busy day serves them and counts what they do:

  1. load: `--cap` x `--factor` sessions asking turns back to back for `--duration` s against a session cap of
     `--cap` (a config override, as loadtests.overload), while the liveness command runs every `--probe-every` s and
     the watchdog every `--interval` s;
  2. after: with `--burst S`, first as many long turns at once, their clients hanging up after S s (the load ends
     at its heaviest); the server quiet for `--quiet` s, then one user's turns: the load governor's level at each
     (degraded turns stream half the frames, shorter replies, lower JPEG quality);
  3. drain: a long turn in flight, then `python -m deploy.drain --unload` (the preStop hook) while the watchdog runs;
     is `talking_head` loaded again before or after the drain ends?

    python -m loadtests.keepers [--duration 60] [--tree WORKTREE] [--out FILE]

`--tree`: run the canary, the watchdog and the drain from another checkout (a before-run); the server is this one's.
Prints and writes the liveness results (failures, the longest run of them: 3 restart a Kubernetes container), the
watchdog's rounds and reloads, the users' turns (done, refused as busy, failed: what a reload cost them), the turns
degraded after the load, and the drain.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from client.sdk import TalkingHeadClient
from deploy import metrics_text
from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from ensemble import metrics
from ensemble.avatar import demo_avatar_png
from export.contract.layout import ROOT
from loadtests import stats
from loadtests.bench_cpu import hardware
from loadtests.overload import add_load_arguments, attempt, run_users, wait_idle
from loadtests.run import checkout_commit, ensure_exported

RESULTS = Path(__file__).resolve().parent / "results"
LONG_TURN = {"max_reply_tokens": 160, "ignore_eos": True}
RESTART_AFTER = 3  # the Triton container's livenessProbe failureThreshold (deploy/k8s/base/deployment.yaml)


class Keeper:
    """A keeper command run from `tree`: once (`probe`) or as a long-lived process whose lines are kept."""

    def __init__(self, tree: Path, env: dict[str, str]):
        self.tree, self.env = tree, {**os.environ, **env, "PYTHONPATH": str(tree)}

    def probe(self, module: str, *args: str, timeout_s: float = 25.0) -> dict:
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", module, *args], cwd=self.tree, env=self.env,
                               capture_output=True, text=True, timeout=timeout_s)
            rc, text = p.returncode, (p.stderr.strip() or p.stdout.strip())
        except subprocess.TimeoutExpired:
            rc, text = 124, f"no answer within {timeout_s:g} s (the probe's timeoutSeconds)"
        return {"t_s": round(t0, 3), "rc": rc, "s": round(time.perf_counter() - t0, 2), "line": text.splitlines()[-1:]}

    def start(self, module: str, *args: str) -> tuple[subprocess.Popen, list[str]]:
        lines: list[str] = []
        p = subprocess.Popen([sys.executable, "-u", "-m", module, *args], cwd=self.tree, env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: [lines.append(f"{time.perf_counter():.3f} {line.rstrip()}")
                                         for line in p.stdout], daemon=True).start()
        return p, lines


def longest_run(flags: list[bool]) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def probes_every(keeper: Keeper, every_s: float, stop: threading.Event, args: list[str]
                 ) -> tuple[threading.Thread, list[dict]]:
    out: list[dict] = []

    def loop() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            out.append(keeper.probe("deploy.canary", *args))
            stop.wait(max(0.0, every_s - (time.monotonic() - t0)))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread, out


def ready_samples(path: Path, stop: threading.Event, every_s: float = 1.0) -> list[bool]:
    out: list[bool] = []

    def loop() -> None:
        while not stop.wait(every_s):
            out.append(path.exists())

    threading.Thread(target=loop, daemon=True).start()
    return out


def watchdog_summary(lines: list[str]) -> dict:
    rounds = [line.split(" ", 1)[1] for line in lines if " watchdog: " in line]
    return {"rounds": len(rounds), "ok": sum("watchdog: ok" in r for r in rounds),
            "busy": sum("watchdog: busy" in r for r in rounds), "failed": sum("canary failed" in r for r in rounds),
            "reloads": [r for r in rounds if "; reloaded " in r], "failures": [r for r in rounds if "failed" in r][:6]}


def load_phase(server: EmbeddedServer, keeper: Keeper, avatar: str, args) -> dict:
    o = server.options
    workdir = Path(tempfile.mkdtemp(prefix="keepers-"))
    ready = workdir / "watchdog-ready"
    dog, lines = keeper.start("deploy.watchdog", "--url", o.grpc_url, "--interval", str(args.interval),
                              "--ready-file", str(ready))
    deadline = time.monotonic() + 60
    while not ready.exists():  # a warm round passed: the pod is in its Service when the load comes
        if time.monotonic() > deadline:
            raise RuntimeError(f"the watchdog's first round did not pass: {lines}")
        time.sleep(0.2)
    users = args.users or args.cap * args.factor
    print(f"== load: {users} sessions for {args.duration:g} s against a cap of {args.cap}; "
          f"the liveness canary every {args.probe_every:g} s, the watchdog every {args.interval:g} s", flush=True)
    stop = threading.Event()
    samples = ready_samples(ready, stop)
    prober, probes = probes_every(keeper, args.probe_every, stop, ["--url", o.grpc_url])
    attempts = run_users(o.grpc_url, avatar, "load", users, duration_s=args.duration,
                         think_s=args.think)
    stop.set()
    prober.join()
    dog.terminate()
    dog.wait(30)
    shutil.rmtree(workdir, ignore_errors=True)
    failed = [p["rc"] != 0 for p in probes]
    outcome = lambda o: [a for a in attempts if a.outcome == o]  # noqa: E731
    return {
        "liveness": {"probes": len(probes), "failed": sum(failed), "longest_failed_run": longest_run(failed),
                     "restart": longest_run(failed) >= RESTART_AFTER,
                     "failures": sorted({p["line"][0][:160] for p in probes if p["rc"] and p["line"]})[:5],
                     "raw": probes},
        "watchdog": watchdog_summary(lines),
        "ready_file": {"samples": len(samples), "absent": samples.count(False),
                       "longest_absent_s": longest_run([not s for s in samples])},
        "turns": {"asked": len(attempts), "done": len(outcome("done")), "refused_busy": len(outcome("refused")),
                  "failed": len(outcome("failed")),
                  "failed_messages": sorted({(a.message or "")[:160] for a in outcome("failed")})[:6]},
    }


def burst_phase(url: str, avatar: str, users: int, seconds: float) -> dict:
    """`users` long turns at once, each client hanging up after `seconds` (its turn cancelled mid-reply): the load
    ends at its heaviest, every turn still dropping frames."""
    print(f"== burst: {users} long turns, the clients hanging up after {seconds:g} s", flush=True)
    got: list[int] = []

    def user() -> None:
        with TalkingHeadClient(url, turn_timeout_s=120) as client:
            t0, n = time.monotonic(), 0
            for _ in client.ask(avatar_id=avatar, text="Tell me a long story.", options=LONG_TURN):
                n += 1
                if time.monotonic() - t0 > seconds:
                    break  # closing the stream cancels the turn
            got.append(n)

    threads = [threading.Thread(target=user, daemon=True) for _ in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"users": users, "seconds": seconds, "events_each": got}


def after_phase(server: EmbeddedServer, avatar: str, quiet_s: float, turns: int = 4) -> dict:
    """The load over and the server quiet for `quiet_s`: does the next user get full settings? The load governor's
    level (talking_head_degraded) read at each of their turns' first event, one turn at a time."""
    metrics_url = server.options.metrics_url
    degraded = lambda: metrics_text.total(metrics_text.scrape(metrics_url), metrics.DEGRADED.name)  # noqa: E731
    late = metrics_text.total(metrics_text.scrape(metrics_url), metrics.FRAMES_DROPPED.name, reason="late")
    print(f"== after: quiet for {quiet_s:g} s (the governor at level {degraded():.0f}; {late:.0f} frame slots dropped "
          f"late so far), then {turns} turns", flush=True)
    time.sleep(quiet_s)
    levels = []
    with TalkingHeadClient(server.options.grpc_url, turn_timeout_s=120) as client:
        for _ in range(turns):
            level = None
            for e in client.ask(avatar_id=avatar, text="Hello there.", options={"max_reply_tokens": 8}):
                level = degraded() if level is None else level
            levels.append(level)
    return {"quiet_s": quiet_s, "frames_dropped_late_before": late, "levels": levels,
            "degraded_turns": sum(1 for v in levels if v)}


def drain_phase(server: EmbeddedServer, keeper: Keeper, avatar: str, args) -> dict:
    """A long turn in flight, the watchdog running, then the preStop drain: does anything load talking_head back?"""
    o = server.options
    dog, lines = keeper.start("deploy.watchdog", "--url", o.grpc_url, "--interval", "2")
    time.sleep(3)
    print("== drain: a long turn in flight, then deploy.drain --unload with the watchdog running", flush=True)
    result: dict = {}

    def long_turn() -> None:
        with TalkingHeadClient(o.grpc_url, turn_timeout_s=300) as client:
            result["turn"] = attempt(client, avatar, "Tell me a long story.", "drain", 0, time.perf_counter(),
                                     options=LONG_TURN).outcome

    turn = threading.Thread(target=long_turn, daemon=True)
    turn.start()
    time.sleep(2)
    drain = keeper.probe("deploy.drain", "--url", o.metrics_url.removeprefix("http://").removesuffix("/metrics"),
                         "--unload", "--grpc-url", o.grpc_url, "--timeout", "180", "--interval", "0.5",
                         timeout_s=200)
    turn.join(200)
    ready_during = []
    with server.admin_client() as client:
        for _ in range(6):  # three watchdog rounds after the drain
            ready_during.append(client.is_model_ready("talking_head"))
            time.sleep(1)
    dog.terminate()
    dog.wait(30)
    return {"drain": drain, "long_turn": result.get("turn"), "talking_head_ready_after_drain": ready_during,
            "loaded_back": any(ready_during), "watchdog": watchdog_summary(lines)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_arguments(ap)
    ap.add_argument("--users", type=int, default=None, help="sessions offered (default: cap x factor)")
    ap.add_argument("--probe-every", type=float, default=10.0, help="seconds between liveness probes (default 10)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between watchdog rounds (default 5)")
    ap.add_argument("--burst", type=float, default=0.0,
                    help="then as many long turns at once, hung up after this many seconds (default 0: none)")
    ap.add_argument("--quiet", type=float, default=30.0, help="seconds idle after the load (default 30)")
    ap.add_argument("--tree", type=Path, default=ROOT, help="checkout whose canary, watchdog and drain run")
    ap.add_argument("--out", type=Path, default=None, help="default loadtests/results/keepers_<UTC time>.json")
    args = ap.parse_args(argv)
    ensure_exported("tiny")
    workdir = Path(tempfile.mkdtemp(prefix="keepers-server-"))
    options = ServerOptions(workdir=workdir, **server_ports())
    code = checkout_commit(args.tree, "%h %s")
    with EmbeddedServer(options) as server, TalkingHeadClient(options.grpc_url) as client:
        server.set_parameters("talking_head", {"max_sessions": args.cap})
        keeper = Keeper(args.tree.resolve(), {"TRITON_ADMIN_KEY": options.admin_key})
        avatar = client.register_avatar(demo_avatar_png()).id
        run_users(options.grpc_url, avatar, "warm-up", args.cap, turns=1)
        load = load_phase(server, keeper, avatar, args)
        wait_idle(options.metrics_url, 120)
        burst = burst_phase(options.grpc_url, avatar, args.users or args.cap * args.factor, args.burst) \
            if args.burst > 0 else None
        wait_idle(options.metrics_url, 120)
        after = after_phase(server, avatar, args.quiet)
        drain = drain_phase(server, keeper, avatar, args)
    shutil.rmtree(workdir, ignore_errors=True)
    result = {"command": "python -m loadtests.keepers " + " ".join(argv if argv is not None else sys.argv[1:]),
              "code": code, "hardware": hardware(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "load": load, "burst": burst, "after": after, "drain": drain}
    lv, wd, tu = load["liveness"], load["watchdog"], load["turns"]
    print(f"liveness canary: {lv['failed']} of {lv['probes']} failed, longest run {lv['longest_failed_run']} "
          f"({'a Kubernetes restart' if lv['restart'] else 'no restart'}); {lv['failures'][:2]}")
    print(f"watchdog: {wd['rounds']} rounds, {wd['ok']} ok, {wd['busy']} busy, {wd['failed']} failed, "
          f"{len(wd['reloads'])} reloads {wd['reloads'][:2]}; "
          f"ready file absent {load['ready_file']['absent']} of {load['ready_file']['samples']} s")
    print(f"turns: {tu['asked']} asked, {tu['done']} done, {tu['refused_busy']} refused busy, {tu['failed']} failed "
          f"{tu['failed_messages'][:2]}")
    print(f"after {after['quiet_s']:g} s quiet: {after['degraded_turns']} of {len(after['levels'])} turns degraded "
          f"(the governor's level at each: {after['levels']})")
    print(f"drain: rc {drain['drain']['rc']}, the long turn {drain['long_turn']}, talking_head loaded back after "
          f"the drain: {drain['loaded_back']}; watchdog reloads {drain['watchdog']['reloads'][:2]}")
    out = args.out or RESULTS / f"keepers_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(stats.rounded(result), indent=1))
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
