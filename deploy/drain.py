"""preStop drain: wait until the orchestrator serves no turn, then let Triton stop.

Polls Triton's metrics endpoint for `talking_head_active_sessions` and returns
when it reads 0 (or when --timeout passes; exit code 1 then). Kubernetes sends
SIGTERM after the preStop hook, and Triton's --exit-timeout-secs covers what is
left, so terminationGracePeriodSeconds must exceed both together.

    python -m deploy.drain --url localhost:8002 --timeout 120
"""
from __future__ import annotations

import argparse
import sys
import time
import urllib.request

from ensemble.metrics import ACTIVE_SESSIONS


def active_sessions(metrics_url: str) -> float:
    """Sum of talking_head_active_sessions over every orchestrator instance (0 when absent)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(ACTIVE_SESSIONS.name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="localhost:8002", help="Triton metrics endpoint host:port")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    args = ap.parse_args(argv)
    url = args.url if args.url.startswith("http") else f"http://{args.url}/metrics"
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            n = active_sessions(url)
        except OSError as e:
            print(f"drain: metrics unreachable ({e}); nothing to wait for")
            return 0
        if n == 0:
            print("drain: no active sessions")
            return 0
        if time.monotonic() >= deadline:
            print(f"drain: {n:.0f} session(s) still active after {args.timeout:.0f} s", file=sys.stderr)
            return 1
        print(f"drain: waiting for {n:.0f} active session(s)", flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
