"""preStop drain: wait until the orchestrator serves no turn, then let Triton stop.

Polls Triton's metrics endpoint for `talking_head_active_sessions` and returns
when it reads 0 (or when --timeout passes; exit code 1 then). Kubernetes sends
SIGTERM after the preStop hook, and Triton's --exit-timeout-secs covers what is
left, so terminationGracePeriodSeconds must exceed both together.

With --unload (explicit model control) it first asks Triton to unload `talking_head`
(admin key from $--admin-key-env): Triton marks it UNLOADING at once, so
`/v2/health/ready` answers 503 and new turns are refused ("has no available
versions") while the turns in flight run to their end; the unload completes after
the last one. (deploy.server's own stop does the same.)

    python -m deploy.drain --url localhost:8002 --timeout 120
    python -m deploy.drain --url localhost:8002 --timeout 120 --unload --admin-key-env TRITON_ADMIN_KEY
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from deploy.admin import active_sessions, unload_orchestrator
from export.contract.layout import GRPC_URL, METRICS_URL


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=METRICS_URL, help="Triton metrics endpoint host:port")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    ap.add_argument("--unload", action="store_true",
                    help="first unload talking_head: readiness off at once, new turns refused, turns in flight finish")
    ap.add_argument("--grpc-url", default=GRPC_URL, help="with --unload: Triton's gRPC endpoint")
    ap.add_argument("--admin-key-env", default="TRITON_ADMIN_KEY", metavar="VAR",
                    help="with --unload: the environment variable holding the admin key (default TRITON_ADMIN_KEY)")
    ap.add_argument("--root-certificates", default=None, help="with --unload: CA certificate (PEM) when gRPC uses TLS")
    args = ap.parse_args(argv)
    url = args.url if args.url.startswith("http") else f"http://{args.url}/metrics"
    deadline = time.monotonic() + args.timeout
    if args.unload:
        try:
            unload_orchestrator(args.grpc_url, os.environ.get(args.admin_key_env) or None, args.root_certificates)
            print("drain: talking_head unloading (not ready; new turns refused)", flush=True)
        except Exception as e:  # keep draining: the turns in flight still deserve their end
            print(f"drain: could not unload talking_head ({e}); waiting anyway", file=sys.stderr, flush=True)
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
