"""Soak: steady load on the embedded CPU server for a long time; memory, /dev/shm and latency drift.

    python -m loadtests.soak --minutes 20 [--users 2] [--think 1.0] [--warm-up 60]

Starts the embedded tritonserver (tiny preset, exported first when missing) on ports
19200-19202, registers the demo avatar, and runs `--users` sessions, each asking one turn
after another (three text turns, then one spoken question, espeak-ng) with `--think`
seconds between them, for `--warm-up` seconds and then `--minutes` minutes. Every
`--sample` seconds it records the resident memory (RSS) of tritonserver and of each
Python stub (by model) and the /dev/shm bytes of this server's regions. It prints and
writes to loadtests/results/soak_<time>.json:

  turns completed, failures (by message), RSS of tritonserver + stubs at the start of
  the soak (after the warm-up) and at its end, with the growth, /dev/shm at start and
  end, p95 time to first audio chunk (TTFA) in the first and in the last minute.

Exit status 1 when a turn failed or RSS grew by more than --max-growth (5 %).
A benchmark command, not a CI test: it takes as long as it is asked to.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from client import media
from client.sdk import ClientError, TalkingHeadClient
from deploy.demo import QUESTION, speak
from deploy.processes import stubs
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.contract import media as C
from loadtests import stats
from loadtests.bench_cpu import TEXTS, hardware, pct
from loadtests.run import check_ports_free, ensure_exported

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class TurnRecord:
    start_s: float  # since the soak began (after the warm-up; negative during it)
    user: int
    kind: str  # text | speech
    ttfa_s: float | None
    total_s: float | None
    error: str | None = None


@dataclass
class Sample:
    t_s: float  # since the soak began
    rss_mib: dict[str, float]  # tritonserver and each stub (by model)
    shm_bytes: int  # allocated bytes of this server's /dev/shm regions

    @property
    def rss_total_mib(self) -> float:
        return sum(self.rss_mib.values())


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample(server: EmbeddedServer, t_s: float) -> Sample:
    pid = server.process.pid
    rss = {"tritonserver": rss_mib(pid) or 0.0}
    regions = set()
    for st in stubs(pid):
        rss[st.model] = rss_mib(st.pid) or 0.0
        regions.add(st.shm_region)
    shm = 0
    for region in regions:
        try:
            shm += os.stat(f"/dev/shm/{region}").st_blocks * 512  # allocated, not the apparent size
        except OSError:
            pass
    return Sample(round(t_s, 1), {k: round(v, 1) for k, v in rss.items()}, shm)


class Soak:
    def __init__(self, server: EmbeddedServer, args: argparse.Namespace, question: np.ndarray):
        self.server, self.args, self.question = server, args, question
        self.turns: list[TurnRecord] = []
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.t_begin = time.perf_counter() + args.warm_up  # the soak proper starts after the warm-up
        self.t_end = self.t_begin + args.minutes * 60

    def now(self) -> float:
        return time.perf_counter() - self.t_begin

    def user(self, index: int, avatar_id: str) -> None:
        options = json.loads(self.args.turn_options)
        with TalkingHeadClient(self.server.options.grpc_url, turn_timeout_s=120) as client:
            n = 0
            while time.perf_counter() < self.t_end:
                speech = n % 4 == 3
                start = self.now()
                try:
                    if speech:
                        r = client.turn(avatar_id=avatar_id, audio=self.question, options=options)
                    else:
                        r = client.turn(avatar_id=avatar_id, text=TEXTS[(n + index) % len(TEXTS)], options=options)
                    rec = TurnRecord(start, index, "speech" if speech else "text", r.time_to_first_audio_s, r.total_s)
                except ClientError as e:
                    rec = TurnRecord(start, index, "speech" if speech else "text", None, None, str(e)[:300])
                with self.lock:
                    self.turns.append(rec)
                n += 1
                time.sleep(self.args.think)

    def sampler(self, stop: threading.Event) -> None:
        while not stop.wait(self.args.sample):
            self.samples.append(sample(self.server, self.now()))

    def run(self, avatar_id: str) -> None:
        stop = threading.Event()
        self.samples.append(sample(self.server, self.now()))
        sampler = threading.Thread(target=self.sampler, args=(stop,), daemon=True)
        sampler.start()
        users = [threading.Thread(target=self.user, args=(i, avatar_id), daemon=True) for i in range(self.args.users)]
        for u in users:
            u.start()
        last_report = 0.0
        while any(u.is_alive() for u in users):
            time.sleep(1)
            if self.now() - last_report >= 60:
                last_report = self.now()
                done = [t for t in self.turns if t.error is None]
                print(f"  {self.now() / 60:5.1f} min: {len(done)} turns ok, {len(self.turns) - len(done)} failed; "
                      f"RSS {self.samples[-1].rss_total_mib:.0f} MiB", flush=True)
        stop.set()
        sampler.join()
        self.samples.append(sample(self.server, self.now()))


def at(samples: list[Sample], t_s: float) -> Sample:
    """The sample closest to t_s."""
    return min(samples, key=lambda s: abs(s.t_s - t_s))


def p95(values: list[float]) -> float | None:
    return pct(values, 95) if values else None


def summarize(soak: Soak, args: argparse.Namespace, start_s: float) -> dict:
    turns = [t for t in soak.turns if t.start_s >= 0]  # the soak proper, warm-up excluded
    ok = [t for t in turns if t.error is None]
    failed = [t for t in soak.turns if t.error is not None]  # warm-up failures count too
    duration = args.minutes * 60
    first = [t.ttfa_s for t in ok if t.start_s < 60 and t.ttfa_s is not None]
    last = [t.ttfa_s for t in ok if t.start_s >= duration - 60 and t.ttfa_s is not None]
    cold, begin, end = soak.samples[0], at(soak.samples, 0.0), soak.samples[-1]
    growth = end.rss_total_mib / begin.rss_total_mib - 1
    errors: dict[str, int] = {}
    for t in failed:
        errors[t.error] = errors.get(t.error, 0) + 1
    return {
        "command": f"python -m loadtests.soak --minutes {args.minutes:g} --users {args.users} --think {args.think:g}"
                   f" --warm-up {args.warm_up:g}",
        "hardware": hardware(), "preset": args.preset, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "users": args.users, "think_s": args.think, "turn_options": json.loads(args.turn_options),
        "minutes": args.minutes, "warm_up_s": args.warm_up, "server_start_s": round(start_s, 2),
        "turns_completed": len(ok), "turns_in_warm_up": len(soak.turns) - len(turns), "failures": len(failed),
        "failure_messages": errors,
        "turns_per_minute": round(len(ok) / args.minutes, 1),
        "ttfa_p95_first_minute_s": p95(first), "ttfa_p95_last_minute_s": p95(last),
        "ttfa_p50_s": pct([t.ttfa_s for t in ok if t.ttfa_s is not None], 50) if ok else None,
        "ttfa_turns_first_last_minute": [len(first), len(last)],
        "rss_mib": {"cold": cold.rss_mib, "start": begin.rss_mib, "end": end.rss_mib},
        "rss_total_mib": {"cold": round(cold.rss_total_mib, 1), "start": round(begin.rss_total_mib, 1),
                          "end": round(end.rss_total_mib, 1)},
        "rss_growth": round(growth, 4),
        "shm_bytes": {"cold": cold.shm_bytes, "start": begin.shm_bytes, "end": end.shm_bytes},
        "samples": [asdict(s) for s in soak.samples],
        "turn_columns": list(TurnRecord.__dataclass_fields__),  # each turn a row: fewer bytes than objects
        "turns": [list(asdict(t).values()) for t in soak.turns],
    }


def report(r: dict) -> str:
    mib = 2**20
    s = lambda v: "-" if v is None else f"{v:.3f} s"  # noqa: E731
    lines = [f"\nSoak: {r['minutes']:g} min at {r['users']} users (think {r['think_s']:g} s) after {r['warm_up_s']:g} s "
             f"of warm-up; {r['preset']}; {r['hardware']}",
             f"  turns completed          {r['turns_completed']} ({r['turns_per_minute']:g}/min)",
             f"  failures                 {r['failures']}" + "".join(f"\n    {n} x {m}" for m, n in
                                                                   r["failure_messages"].items()),
             f"  RSS tritonserver + stubs {r['rss_total_mib']['start']:.0f} MiB at the start, "
             f"{r['rss_total_mib']['end']:.0f} MiB at the end ({r['rss_growth']:+.1%}); "
             f"{r['rss_total_mib']['cold']:.0f} MiB before the warm-up"]
    for name in sorted(r["rss_mib"]["start"]):
        lines.append(f"    {name:<22} {r['rss_mib']['start'][name]:7.1f} -> {r['rss_mib']['end'].get(name, 0):7.1f} MiB")
    lines += [f"  /dev/shm (this server)   {r['shm_bytes']['start'] / mib:.1f} MiB at the start, "
              f"{r['shm_bytes']['end'] / mib:.1f} MiB at the end ({r['shm_bytes']['cold'] / mib:.1f} MiB cold)",
              f"  TTFA p95                 first minute {s(r['ttfa_p95_first_minute_s'])}, last minute "
              f"{s(r['ttfa_p95_last_minute_s'])} ({r['ttfa_turns_first_last_minute'][0]} and "
              f"{r['ttfa_turns_first_last_minute'][1]} turns); p50 over the soak {s(r['ttfa_p50_s'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="length of the soak after the warm-up (default 20)")
    ap.add_argument("--users", type=int, default=2, help="concurrent sessions (default 2: what 2 cores sustain)")
    ap.add_argument("--think", type=float, default=1.0, help="seconds between a user's turns (default 1)")
    ap.add_argument("--warm-up", type=float, default=60.0,
                    help="seconds of the same load before the start figures are taken (default 60)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples (default 10)")
    ap.add_argument("--turn-options", default='{"max_reply_tokens": 24}', help="options JSON of every turn")
    ap.add_argument("--max-growth", type=float, default=0.05, help="RSS growth that fails the soak (default 0.05)")
    ap.add_argument("--preset", default="tiny", help="preset exported when the repository has none (default tiny)")
    ap.add_argument("--grpc-port", type=int, default=19201, help="HTTP is one below, metrics one above (default 19201)")
    ap.add_argument("--json", type=Path, default=None, help="default loadtests/results/soak_<UTC time>.json")
    args = ap.parse_args(argv)
    if args.minutes < 1:
        ap.error("--minutes must be at least 1 (the first and last minute are reported)")

    # SIGTERM or SIGINT (also when started in the background, where SIGINT is ignored) stop the server cleanly
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ensure_exported(args.preset)
    ports = (args.grpc_port - 1, args.grpc_port, args.grpc_port + 1)
    check_ports_free(*ports)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    question = media.read_audio(speak(QUESTION, workdir / "q.wav"), rate=C.INPUT_SAMPLE_RATE)
    options = ServerOptions(workdir=workdir / "triton", http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
    print(f"== soak: starting the embedded tritonserver (gRPC {options.grpc_url})", flush=True)
    with EmbeddedServer(options) as server, TalkingHeadClient(options.grpc_url) as client:
        avatar = client.register_avatar(demo_avatar_png())
        soak = Soak(server, args, question)
        print(f"   ready in {server.started_s:.1f} s; {args.warm_up:g} s warm-up, then {args.minutes:g} min", flush=True)
        soak.run(avatar.id)
        result = summarize(soak, args, server.started_s)
    shutil.rmtree(workdir, ignore_errors=True)
    print(report(result))
    path = args.json or RESULTS / f"soak_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats.rounded(result), indent=1))
    print(f"  figures: {path}")
    return 1 if result["failures"] or result["rss_growth"] > args.max_growth else 0


if __name__ == "__main__":
    raise SystemExit(main())
