"""Load-aware degradation, measured: real-time sessions with the load governor on vs off.

    python -m loadtests.degrade [--sessions 6] [--duration 60] [--max-sessions 8] [--json FILE]

Runs the embedded (CPU) server twice on the same model repository, once with the
talking_head parameter `degrade` off and once on (everything else equal), and drives
`--sessions` concurrent sessions, each asking text turns back to back for `--duration`
seconds (replies of a fixed length: `ignore_eos`). A turn is real time when, at the client,
audio played from its first chunk never stalls and at most 5 % of its video frame slots
were lost to lateness (dropped by the server as late, or arriving more than 40 ms after
their display time); frames skipped on purpose at a lowered frame rate are not lateness.
A session counts as real time when at least 90 % of its turns after its first were (the first
turn of every session starts before the load exists, when the governor has nothing to react
to yet). Prints, per run: turns completed,
real-time turns and sessions, TTFA p50/p95, the governor's switches.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from client.sdk import TalkingHeadClient
from client.turns import TurnResult
from deploy import metrics_text
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.__main__ import main as export_main
from export.contract import events as ev
from export.contract import media
from export.contract.layout import MODEL_REPOSITORY
from export.contract.spec import TALKING_HEAD
from loadtests.bench_cpu import hardware, pct

LATE_S = 0.040
MAX_LATE_SHARE = 0.05
SESSION_SHARE = 0.9  # a session is real time when this share of its turns (after its first) were
TEXTS = ["Tell me about the sea.", "What is your favourite book?", "How does a bicycle work?"]


def repository_with(dest: Path, parameters: dict[str, str]) -> Path:
    """The model repository with talking_head's config parameters replaced (stages linked, not copied)."""
    dest.mkdir(parents=True)
    for model in MODEL_REPOSITORY.iterdir():
        if model.is_dir() and model.name != TALKING_HEAD.name:
            (dest / model.name).symlink_to(model.resolve(), target_is_directory=True)
    shutil.copytree(MODEL_REPOSITORY / TALKING_HEAD.name, dest / TALKING_HEAD.name,
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = dest / TALKING_HEAD.name / "config.pbtxt"
    text = config.read_text()
    for key, value in parameters.items():
        text, n = re.subn(rf'(key: "{key}"\s*value {{\s*string_value: )"[^"]*"', rf'\1"{value}"', text)
        if n != 1:
            raise SystemExit(f"talking_head config has no parameter {key!r}")
    config.write_text(text)
    return dest


def late_share(result: TurnResult) -> float:
    """Share of the turn's frame slots lost to lateness (dropped as late, or received late)."""
    audio = [e for e in result.events if e.type == ev.AUDIO]
    video = [e for e in result.events if e.type == ev.VIDEO]
    done = result.done or {}
    slots = media.video_frames_for_samples(int(done.get("audio_samples", 0)))
    if not audio or not slots:
        return 0.0
    t0 = audio[0].received_at
    late = sum(1 for e in video if e.received_at - (t0 + e.data["pts"]) > LATE_S)
    return (late + int(done.get("frames_dropped_late", 0))) / slots


def run_once(degrade: bool, args: argparse.Namespace, port: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        repo = repository_with(Path(work) / "repo", {"degrade": "on" if degrade else "off",
                                                     "max_sessions": str(args.max_sessions)})
        options = ServerOptions(repository=repo, workdir=Path(work) / "triton", http_port=port - 1, grpc_port=port,
                                metrics_port=port + 1)
        with EmbeddedServer(options) as server, TalkingHeadClient(server.options.grpc_url) as client:
            avatar = client.register_avatar(demo_avatar_png())
            client.turn(avatar_id=avatar.id, text="Warm up.")
            stop_at = time.monotonic() + args.duration
            turns: dict[int, list[tuple[TurnResult, float]]] = {k: [] for k in range(args.sessions)}
            errors: list[str] = []

            def session(k: int) -> None:
                n = 0
                while time.monotonic() < stop_at:
                    try:
                        r = client.turn(avatar_id=avatar.id, text=TEXTS[n % len(TEXTS)],
                                        options={"ignore_eos": True, "max_reply_tokens": args.reply_tokens,
                                                 "session": f"s{k}"})
                        turns[k].append((r, late_share(r)))
                    except Exception as e:  # counted: a failed turn is not real time
                        errors.append(f"{type(e).__name__}: {e}")
                    n += 1

            threads = [threading.Thread(target=session, args=(k,)) for k in range(args.sessions)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            samples = metrics_text.scrape(f"http://localhost:{options.metrics_port}/metrics")
    switches = metrics_text.total(samples, "talking_head_degrade_switches_total")
    results = [(r, late) for rs in turns.values() for r, late in rs]
    real = [not r.underrun and late <= MAX_LATE_SHARE for r, late in results]
    def real_time_share(rs):
        return sum(not r.underrun and late <= MAX_LATE_SHARE for r, late in rs) / max(1, len(rs))

    sessions_rt = sum(1 for rs in turns.values() if len(rs) > 1 and real_time_share(rs[1:]) >= SESSION_SHARE)
    ttfa = [r.time_to_first_audio_s * 1000 for r, _ in results if r.time_to_first_audio_s is not None]
    return {"degrade": degrade, "turns": len(results), "failed": len(errors), "errors": errors[:5],
            "real_time_turns": sum(real), "real_time_sessions": sessions_rt, "sessions": args.sessions,
            "underrun_turns": sum(1 for r, _ in results if r.underrun),
            "late_share_mean": sum(late for _, late in results) / max(1, len(results)),
            "ttfa_p50_ms": pct(ttfa, 50) if ttfa else None, "ttfa_p95_ms": pct(ttfa, 95) if ttfa else None,
            "governor_switches": switches}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=6, help="concurrent sessions (default 6)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load per run (default 60)")
    ap.add_argument("--max-sessions", type=int, default=8, help="talking_head max_sessions; the governor degrades "
                                                                 "at 3/4 of it, recovers at 3/8 (default 8)")
    ap.add_argument("--reply-tokens", type=int, default=48, help="reply length (default 48)")
    ap.add_argument("--grpc-port", type=int, default=19411)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if export_main(["--preset", "tiny"]) != 0:
        return 1
    runs = [run_once(degrade, args, args.grpc_port) for degrade in (False, True)]
    print(f"\nload-aware degradation on {hardware()}, tiny preset, {args.sessions} sessions x {args.duration:g} s, "
          f"max_sessions {args.max_sessions}")
    for r in runs:
        print(f"  degrade {'on ' if r['degrade'] else 'off'}: {r['turns']} turns ({r['failed']} failed), real time: "
              f"{r['real_time_turns']} turns, {r['real_time_sessions']}/{r['sessions']} sessions; underruns "
              f"{r['underrun_turns']}, late share {r['late_share_mean']:.2f}; TTFA p50 {r['ttfa_p50_ms'] or 0:.0f} ms "
              f"p95 {r['ttfa_p95_ms'] or 0:.0f} ms; governor switches {r['governor_switches']:g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"hardware": hardware(), "args": vars(args) | {"json": str(args.json)},
                                         "runs": runs, "command": "python -m loadtests.degrade"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
