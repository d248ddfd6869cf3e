"""CPU demo benchmark: export, server start-up, and per-turn latencies at the client.

    python -m loadtests.bench_cpu [--preset tiny] [--turns 5] [--json out/bench_cpu.json]

From scratch in a temporary copy of the model repository: exports the preset
(forced, timed), starts the embedded server (timed), registers the demo avatar,
runs one spoken turn (espeak-ng question) and `--turns` text turns one after
another, and prints p50/p95 of time to first audio chunk (TTFA), time to first
video frame (TTFF), total turn time and real-time factor (turn time / audio
seconds). Figures are only meaningful with the hardware they were taken on,
which is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from client import media
from client.sdk import TalkingHeadClient
from client.turns import TurnResult
from deploy.demo import QUESTION, speak
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.__main__ import main as export_main
from export.contract import media as C
from export.toolchain.configs import ensure_repository

TEXTS = ["Hello, who are you?", "What is the weather like today?", "Tell me a short story.",
         "Can you help me with my work?", "Thank you, goodbye."]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--turns", type=int, default=5, help="text turns after the spoken one (default 5)")
    ap.add_argument("--grpc-port", type=int, default=18401)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        repo = Path(tmp) / "model_repository"
        ensure_repository(repo)
        t = time.perf_counter()
        if export_main(["--preset", args.preset, "--repository", str(repo), "--force", "--no-parity"]) != 0:
            return 1
        export_s = time.perf_counter() - t
        question = media.read_audio(speak(QUESTION, Path(tmp) / "q.wav"), rate=C.INPUT_SAMPLE_RATE)
        options = ServerOptions(repository=repo, workdir=Path(tmp) / "triton", grpc_port=args.grpc_port,
                                http_port=args.grpc_port - 1, metrics_port=args.grpc_port + 1)
        results: list[tuple[str, TurnResult]] = []
        with EmbeddedServer(options) as server, TalkingHeadClient(options.grpc_url) as client:
            avatar = client.register_avatar(demo_avatar_png())
            results.append(("speech", client.turn(avatar_id=avatar.id, audio=question)))
            for i in range(args.turns):
                results.append(("text", client.turn(avatar_id=avatar.id, text=TEXTS[i % len(TEXTS)])))
            start_s = server.started_s
    wall_s = time.perf_counter() - t_start

    def column(name: str, kind: str | None = None) -> list[float]:
        return [getattr(r, name) if name != "real_time_factor" else r.real_time_factor
                for k, r in results if kind in (None, k)]

    speech = results[0][1]
    figures = {
        "hardware": hardware(), "preset": args.preset, "turns": len(results),
        "export_s": round(export_s, 2), "server_start_s": round(start_s, 2),
        "speech_turn": {"ttfa_s": speech.time_to_first_audio_s, "ttff_s": speech.time_to_first_frame_s,
                        "total_s": speech.total_s, "audio_s": speech.audio_s},
        "ttfa_s": {"p50": pct(column("time_to_first_audio_s"), 50), "p95": pct(column("time_to_first_audio_s"), 95)},
        "ttff_s": {"p50": pct(column("time_to_first_frame_s"), 50), "p95": pct(column("time_to_first_frame_s"), 95)},
        "total_s": {"p50": pct(column("total_s"), 50), "p95": pct(column("total_s"), 95)},
        "real_time_factor": {"p50": pct(column("real_time_factor"), 50), "p95": pct(column("real_time_factor"), 95)},
        "underruns": sum(r.underrun_count for _, r in results),
        "bench_wall_s": round(wall_s, 1),
    }
    print(f"\nCPU demo benchmark ({args.preset}; {figures['hardware']})")
    print(f"  export (forced)          {export_s:7.2f} s")
    print(f"  server start to ready    {start_s:7.2f} s")
    print(f"  spoken turn: TTFA {speech.time_to_first_audio_s:.3f} s, TTFF {speech.time_to_first_frame_s:.3f} s,"
          f" total {speech.total_s:.2f} s for {speech.audio_s:.1f} s of audio")
    for key, label in (("ttfa_s", "first audio chunk (TTFA)"), ("ttff_s", "first video frame (TTFF)"),
                       ("total_s", "turn total"), ("real_time_factor", "real-time factor")):
        print(f"  {label:<24} p50 {figures[key]['p50']:7.3f}   p95 {figures[key]['p95']:7.3f}   ({len(results)} turns)")
    print(f"  playback underruns       {figures['underruns']}")
    print(f"  whole benchmark          {wall_s:7.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
