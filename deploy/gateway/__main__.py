"""`python -m deploy.gateway`: serve the page and the WebRTC gateway; prints the URL to open.

    python -m deploy.gateway                              # Triton at localhost:8001, page at http://localhost:8080/
    python -m deploy.gateway --start-server               # also start the embedded Triton (tiny models)
    python -m deploy.gateway --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem     # other machines: HTTPS

The operator's figures, GET /stats (and /healthz), are served on 127.0.0.1:8081 (--stats-host, --stats-port), not on
the page's port. Browsers give the microphone only to a secure context: http://localhost is one, any other address needs HTTPS
(--tls-cert/--tls-key; deploy/gateway/README.md shows a self-signed certificate for trials).
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from deploy.gateway.app import Gateway, make_runner, make_stats_runner
from deploy.gateway.ice import IceSettings, restrict_host_addresses
from deploy.gateway.limits import LOOPBACK_NAMES, GatewayLimits
from deploy.log_limit import configure_logging
from deploy.open_files import raise_open_file_limit
from deploy.session_tokens import SessionTokens
from export.contract.layout import BUILD, GRPC_URL

DEFAULT_PORT = 8080
# libraries whose info lines are per packet or request: warnings and up (each kind rate-limited: deploy/log_limit.py;
# aiortc logs a warning for every audio packet a client makes its decoder refuse)
QUIET = ("aiortc", "aioice", "aiohttp.access")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m deploy.gateway", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--stats-host", default="127.0.0.1",
                    help="address of the operator's listener, GET /stats and /healthz (never public: /stats names "
                         "every recent reply's session and timing)")
    ap.add_argument("--stats-port", type=int, default=DEFAULT_PORT + 1,
                    help="its port; the same as --port serves /stats beside the page (a benchmark on one machine)")
    ap.add_argument("--triton", default=GRPC_URL, help="Triton's gRPC endpoint (host:port)")
    ap.add_argument("--triton-root-cert", type=Path, help="gRPC over TLS to Triton: the CA certificate (PEM)")
    ap.add_argument("--start-server", action="store_true",
                    help="start the embedded tritonserver (exports the tiny models first if needed)")
    ap.add_argument("--tls-cert", type=Path, help="serve the page over HTTPS: certificate chain (PEM)")
    ap.add_argument("--tls-key", type=Path, help="serve the page over HTTPS: private key (PEM)")
    ap.add_argument("--avatar", type=Path, help="the default avatar's image (default: the demo portrait)")
    ap.add_argument("--max-sessions", type=int, default=32, help="browsers served at once (more get 503)")
    ap.add_argument("--sessions-per-client", type=int, default=GatewayLimits.sessions_per_client,
                    help="sessions one client (address, or --client-header) holds at once (more get 429)")
    ap.add_argument("--uploads-per-hour", type=float, default=GatewayLimits.uploads_per_hour,
                    help=f"avatar uploads per client an hour (bursts of {GatewayLimits.upload_burst})")
    ap.add_argument("--client-header", metavar="NAME",
                    help="behind a proxy: the header naming the client (its last value), e.g. X-Forwarded-For; "
                         "requests without it are refused (default: the peer's address)")
    ap.add_argument("--page-origin", action="append", default=[], metavar="ORIGIN",
                    help="an origin besides the gateway's own whose pages may POST offers and avatars (e.g. "
                         "https://app.example.com; repeatable). A POST from any other page is refused (403): any "
                         "website could otherwise make its visitors' browsers open sessions here")
    ap.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                    help="a host name the page is served as (repeatable); requests for others are refused (403). "
                         "Default: on a loopback --host, localhost, 127.0.0.1 and ::1 (a website whose name points "
                         "at loopback, DNS rebinding, is refused); elsewhere any")
    ap.add_argument("--session-secret-file", type=Path, metavar="PATH",
                    help="HMAC secret of the session tokens the gateway derives from its clients (one per client: "
                         "the server's per-client bounds see a client, not each of its sessions); give every replica "
                         "behind one balancer the same file (default: a random secret per process)")
    ap.add_argument("--ice-host", action="append", default=[], metavar="ADDR",
                    help="offer host candidates on these addresses only (repeatable; default: every interface)")
    ap.add_argument("--remote-network", action="append", default=[], metavar="CIDR",
                    help="use browser candidates in these networks only (repeatable; default: any)")
    ap.add_argument("--ice-server", action="append", default=[], metavar="URL",
                    help="STUN/TURN server for the gateway and the page, e.g. turn:turn.example.com:3478 (repeatable)")
    ap.add_argument("--page-ice-server", action="append", default=[], metavar="URL",
                    help="what the page uses instead of --ice-server (the same TURN server by its public name)")
    ap.add_argument("--turn-username", help="TURN username (static credentials)")
    ap.add_argument("--turn-password-env", metavar="VAR", help="environment variable holding the TURN password")
    ap.add_argument("--turn-secret-env", metavar="VAR",
                    help="environment variable holding coturn's static-auth-secret (short-lived credentials per page)")
    ap.add_argument("--turn-secret-file", type=Path, metavar="PATH",
                    help="file holding coturn's static-auth-secret (a compose or Kubernetes secret)")
    ap.add_argument("--ready-poll-s", type=float, default=1.0,
                    help="how often to ask Triton whether talking_head is ready; while it is not (a drain, a reload) "
                         "the sessions end their streams so it can unload, and resume after (0: never ask)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    for var in (args.turn_password_env, args.turn_secret_env):
        if var and not os.environ.get(var):
            ap.error(f"${var} is not set")
    return args


def allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """--allowed-host, else the loopback's names when the page listens on loopback only (else any host)."""
    if args.allowed_host:
        return tuple(name.lower() for name in args.allowed_host)
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    return LOOPBACK_NAMES if loopback else ()


def page_url(args: argparse.Namespace) -> str:
    host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "::", "") else args.host
    return f"{'https' if args.tls_cert else 'http'}://{host}:{args.port}/"


async def serve(args: argparse.Namespace) -> None:
    secret = os.environ.get(args.turn_secret_env) if args.turn_secret_env else None
    if args.turn_secret_file:
        secret = args.turn_secret_file.read_text().strip()
    ice = IceSettings(args.ice_server, args.turn_username,
                      os.environ.get(args.turn_password_env) if args.turn_password_env else None, secret,
                      args.remote_network, args.page_ice_server)
    if args.ice_host:
        restrict_host_addresses(args.ice_host)
    limits = GatewayLimits(sessions_per_client=args.sessions_per_client, uploads_per_hour=args.uploads_per_hour)
    gateway = Gateway(args.triton, ice, max_sessions=args.max_sessions,
                      root_cert=str(args.triton_root_cert) if args.triton_root_cert else None,
                      default_avatar=args.avatar.read_bytes() if args.avatar else None,
                      ready_poll_s=args.ready_poll_s, client_header=args.client_header, limits=limits,
                      tokens=SessionTokens(args.session_secret_file.read_bytes().strip()
                                           if args.session_secret_file else None),
                      page_origins=tuple(args.page_origin), allowed_hosts=allowed_hosts(args))
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    # aiortc encodes every outgoing frame, and the video tracks decode JPEGs, on the loop's default executor:
    # size it for the sessions (asyncio's default, cores + 4 threads, would queue them behind each other)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(min(64, 4 + 2 * args.max_sessions)))
    together = args.stats_port == args.port
    runner = make_runner(gateway, stats=together)
    await runner.setup()  # waits for Triton and registers the default avatar
    await web.TCPSite(runner, args.host, args.port, ssl_context=context).start()
    stats_runner = None if together else make_stats_runner(gateway)
    if stats_runner is not None:
        await stats_runner.setup()
        await web.TCPSite(stats_runner, args.stats_host, args.stats_port).start()
    print(f"talking-head gateway: {page_url(args)}  (Triton {args.triton}, default avatar "
          f"{gateway.default_avatar}; stats: http://{args.stats_host}:{args.stats_port}/stats)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("gateway stopping: closing sessions", flush=True)
    await runner.cleanup()
    if stats_runner is not None:
        await stats_runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, quiet=QUIET)
    raise_open_file_limit(logging.getLogger("deploy.gateway"))  # each browser's connections hold descriptors
    if not args.start_server:
        asyncio.run(serve(args))
        return 0
    from deploy.processes import server_ports
    from deploy.server import EmbeddedServer, ServerOptions
    from export.__main__ import main as export_main

    if export_main(["--preset", "tiny"]) != 0:
        return 1
    with EmbeddedServer(ServerOptions(**server_ports(), workdir=BUILD / "gateway-triton")) as server:
        args.triton = server.options.grpc_url
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
