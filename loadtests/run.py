"""Run the locust load test headless and print exact per-turn percentiles.

    python -m loadtests.run --host localhost:8001 --users 4 --spawn-rate 2 --duration 30s \
        [--turns 3] [--speech-ratio 0.5] [--think 1,3] [--out out/load] [--fail-on-error]
    python -m loadtests.run --start-server [--grpc-port 18501 ...] ...     # what CI runs

Starts `locust -f loadtests/locustfile.py --headless ...` in a subprocess (locust
monkey-patches the whole interpreter with gevent, so it gets its own), which writes

    <out>.html, <out>_stats.csv, <out>_failures.csv, ...   locust's own reports (rows "turn" = whole turns,
                                                            "TTFA" / "TTFF" = time to first audio / frame)
    <out>_turns.csv, <out>_summary.json                     one row per turn; exact p50/p95/p99

then prints the summary: p50/p95/p99 of time to first text, TTFA, TTFF, largest audio
gap and total turn time, completed turns, failures by class. Exit status: 0; with
`--fail-on-error` 1 when any turn failed or none completed; 2 when locust produced no
summary (it crashed, or the arguments were wrong).

`--start-server` runs the embedded tritonserver (deploy.server) on this repository for
the duration (exporting the tiny models first when they are missing), on
`--http-port/--grpc-port/--metrics-port`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from export.contract.layout import GRPC_URL, MODEL_REPOSITORY, ROOT
from loadtests import stats

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def locust_command(args: argparse.Namespace, host: str) -> list[str]:
    """The locust command line (an argument list; custom options are the locustfile's own flags)."""
    out = str(args.out)
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "-u", str(args.users), "-r", f"{args.spawn_rate:g}", "-t", args.duration,
           "--host", host, "--html", f"{out}.html", "--csv", out, "--samples-prefix", out,
           "--stop-timeout", f"{int(round(args.stop_timeout))}s", "--only-summary", "--loglevel", args.loglevel,
           "--turns", str(args.turns), "--speech-ratio", str(args.speech_ratio), "--think", args.think,
           "--turn-timeout", str(args.turn_timeout)]
    for flag, value in (("--avatar", args.avatar), ("--avatar-image", args.avatar_image), ("--wav", args.wav),
                        ("--turn-options", args.turn_options)):
        if value:
            cmd += [flag, str(value)]
    if args.grpc_error_header:
        cmd.append("--grpc-error-header")
    return cmd


def ensure_exported(preset: str) -> None:
    """Export the preset's graphs when model_repository lacks them (idempotent otherwise)."""


    if all((MODEL_REPOSITORY / m / "1" / "model.onnx").exists()
           for m in ("asr_encoder", "asr_decoder", "llm", "tts", "vocoder", "lipsync")):
        return
    from export.__main__ import main as export_main

    print(f"== exporting the {preset} models into {MODEL_REPOSITORY}", flush=True)
    if export_main(["--preset", preset]) != 0:
        raise SystemExit("export failed")


def checkout_commit(tree: Path, fmt: str = "%h") -> str:
    """The commit the checkout at `tree` is at (`git log --format`), marked when its tracked files differ from it: what
    a result file says its "before" or "after" code was."""
    git = lambda *a: subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True).stdout  # noqa: E731
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("log", "-1", f"--format={fmt}").strip() + (" + uncommitted changes" if dirty else "")


def check_ports_free(*ports: int) -> None:
    """Refuse to start when a port is taken: EmbeddedServer would find the other server ready and use it."""
    import socket

    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit(f"port {port} is already in use: stop what listens there, or pick other ports "
                                 "(--http-port/--grpc-port/--metrics-port)")


@contextlib.contextmanager
def start_server(args: argparse.Namespace) -> Iterator[Any]:
    """The embedded tritonserver on args' ports for the block, after exporting the models if needed.

    Its work folder (assembled backends, tritonserver.log) is removed afterwards unless
    the block failed, when its path is printed.
    """
    from deploy.server import EmbeddedServer, ServerOptions

    ensure_exported(args.preset)
    check_ports_free(args.http_port, args.grpc_port, args.metrics_port)
    workdir = Path(tempfile.mkdtemp(prefix="loadtest-triton-"))
    options = ServerOptions(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                            workdir=workdir)
    print(f"== starting the embedded tritonserver (gRPC {options.grpc_url})", flush=True)
    try:
        with EmbeddedServer(options) as server:
            print(f"   ready in {server.started_s:.1f} s", flush=True)
            yield server
    except BaseException:
        print(f"   server log kept: {workdir / 'tritonserver.log'}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=GRPC_URL, help=f"Triton gRPC endpoint HOST:PORT (default {GRPC_URL})")
    ap.add_argument("--users", "-u", type=int, default=4, help="simulated users (default 4)")
    ap.add_argument("--spawn-rate", "-r", type=float, default=2.0, help="users started per second (default 2)")
    ap.add_argument("--duration", "-t", default="30s", help="run time, locust syntax: 30s, 2m, 1h30m (default 30s)")
    ap.add_argument("--turns", type=int, default=3, help="turns per conversation (default 3)")
    ap.add_argument("--speech-ratio", type=float, default=0.5, help="share of spoken turns, 0..1 (default 0.5)")
    ap.add_argument("--think", default="1,3", help="think time after each turn, MIN,MAX seconds (default 1,3)")
    ap.add_argument("--turn-timeout", type=float, default=120.0, help="seconds a turn may take (default 120)")
    ap.add_argument("--turn-options", default="", help="per-turn options JSON, e.g. '{\"max_reply_tokens\": 32}'")
    ap.add_argument("--avatar", default="", help="a registered avatar id (default: each user registers the demo avatar)")
    ap.add_argument("--avatar-image", default="", help="face image each user registers instead of the demo avatar")
    ap.add_argument("--wav", default="", help="speech input file (default: espeak-ng questions)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("LOADTEST_OUT") or ROOT / "out" / "load"),
                    help="report prefix: <out>.html, <out>_stats.csv (with TTFA and TTFF rows), <out>_turns.csv, "
                         "<out>_summary.json (default: $LOADTEST_OUT, else out/load; the loadgen image sets "
                         "LOADTEST_OUT=/opt/loadgen/results/load)")
    ap.add_argument("--stop-timeout", type=int, default=60,
                    help="seconds users get to finish the turn in progress when the run time is up (default 60)")
    ap.add_argument("--fail-on-error", action="store_true",
                    help="exit 1 when any turn failed or no turn completed")
    ap.add_argument("--grpc-error-header", action="store_true",
                    help="open streams with 'triton_grpc_error: true' (Triton closes a stream per failed turn; at a "
                         "high refusal rate that aborts Triton 2.51: RELIABILITY.md)")
    ap.add_argument("--loglevel", default="WARNING", help="locust's log level (default WARNING)")
    ap.add_argument("--start-server", action="store_true",
                    help="run the embedded tritonserver on this repository for the duration")
    ap.add_argument("--grpc-port", type=int, default=18501, help="with --start-server (default 18501)")
    ap.add_argument("--http-port", type=int, default=18500, help="with --start-server (default 18500)")
    ap.add_argument("--metrics-port", type=int, default=18502, help="with --start-server (default 18502)")
    ap.add_argument("--preset", default="tiny", help="with --start-server: preset exported when missing (tiny)")
    args = ap.parse_args(argv)
    try:
        stats.parse_think(args.think)
    except ValueError as e:
        ap.error(str(e))
    if not 0.0 <= args.speech_ratio <= 1.0:
        ap.error(f"--speech-ratio must lie in 0..1, got {args.speech_ratio}")
    if args.turns < 1 or args.users < 1:
        ap.error("--turns and --users must be at least 1")
    return args


def run_locust(args: argparse.Namespace, host: str) -> int:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary_path = stats.summary_json_path(args.out)
    if summary_path.exists():
        summary_path.unlink()  # never report a previous run's figures
    cmd = locust_command(args, host)
    print("== " + " ".join(cmd), flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    t0 = time.perf_counter()
    if args.start_server:
        with start_server(args) as server:
            code = run_locust(args, server.options.grpc_url)
    else:
        code = run_locust(args, args.host)

    summary_path = stats.summary_json_path(args.out)
    if not summary_path.exists():
        print(f"locust exited with code {code} and wrote no {summary_path.name}", file=sys.stderr)
        return 2
    summary = json.loads(summary_path.read_text())
    print(f"\nLoad test: {args.users} users, spawn {args.spawn_rate:g}/s, {args.duration}, {args.turns} turns per"
          f" conversation, speech ratio {args.speech_ratio:g}, think {args.think} s  ({time.perf_counter() - t0:.0f} s)")
    print(stats.format_summary(summary))
    print(f"\nreports: {args.out}.html  {args.out}_stats.csv  {stats.turns_csv_path(args.out)}  {summary_path}")
    if args.fail_on_error and (summary["failed"] or not summary["completed"]):
        why = f"{summary['failed']} failed turn(s)" if summary["failed"] else "no turn completed"
        print(f"FAIL: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
