"""python -m deploy.front_door --upstream localhost:8001 --listen 0.0.0.0:9001 --keys keys.txt [--tls-cert ...]"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from deploy.front_door import FrontDoorOptions, start
from deploy.front_door.quota import KeyFileError, Limits
from deploy.log_limit import configure_logging
from deploy.open_files import raise_open_file_limit

D = Limits()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy.front_door",
        description="The one public gRPC endpoint in front of Triton: forwards health, talking_head streams and "
                    "avatar_registry registrations only (everything else: PERMISSION_DENIED), authenticates API "
                    "keys (`authorization: Bearer <key>`; ServerLive/ServerReady stay open for probes) or client certificates (mutual TLS: every connection, probes too, needs one), makes each "
                    "talking_head session belong to the key that opened it, and applies per-key quotas.")
    p.add_argument("--upstream", default="localhost:8001", help="Triton's gRPC host:port (default %(default)s)")
    p.add_argument("--listen", default="127.0.0.1:9001",
                   help="host:port to serve on (default %(default)s); without --tls-cert only 127.0.0.1 is bound")
    p.add_argument("--keys", type=Path,
                   help="API keys file: one `name:key` per line (key >= 16 characters; # comments); only the "
                        "sha256 of each key is kept in memory; the name is the client's identity")
    p.add_argument("--tls-client-ca", type=Path,
                   help="mutual TLS instead of API keys: clients must present a certificate signed by this CA "
                        "(PEM); its subject CN is the client's identity (needs --tls-cert)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain to serve TLS with (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--upstream-root-certificates", type=Path,
                   help="PEM CA bundle: talk TLS to the upstream Triton, verifying it with these roots")
    p.add_argument("--session-secret-file", type=Path,
                   help="HMAC secret of the session tokens derived from identities; give every replica behind one "
                        "balancer the same file (default: a random secret per process)")
    p.add_argument("--max-connections", type=int, default=FrontDoorOptions.max_connections,
                   help="connections held at once, all clients together (default %(default)s); more are closed as "
                        "they come. Cap what one address may hold at the load balancer or firewall")
    q = p.add_argument_group("per-identity quotas (each API key separately)")
    q.add_argument("--max-streams", type=int, default=D.max_streams,
                   help="talking_head streams open at once (default %(default)s); more: RESOURCE_EXHAUSTED")
    q.add_argument("--max-turns", type=int, default=D.max_turns,
                   help="talking_head requests in flight at once, cancels aside, the chunks of one session's "
                        "microphone counted once (default %(default)s); more: RESOURCE_EXHAUSTED")
    q.add_argument("--rate", type=float, default=D.rate,
                   help="requests per second, sustained (unary calls, stream opens, stream requests; default "
                        "%(default)s); more: RESOURCE_EXHAUSTED")
    q.add_argument("--burst", type=int, default=D.burst, help="requests at once above --rate (default %(default)s)")
    q.add_argument("--mic-rate", type=float, default=D.mic_rate,
                   help="seconds of microphone audio a second (chunks of action `mic` spend audio, not --rate: a live "
                        "microphone sends 30-50 a second; default %(default)s, real time for --max-turns "
                        "microphones); more: RESOURCE_EXHAUSTED")
    q.add_argument("--mic-burst-s", type=float, default=D.mic_burst_s,
                   help="seconds of microphone audio at once above --mic-rate (default %(default)s)")
    q.add_argument("--max-message-bytes", type=int, default=D.max_message_bytes,
                   help="largest gRPC message from a client (default %(default)s = 12 MiB; the avatar limit is "
                        "10 MiB); more: RESOURCE_EXHAUSTED from gRPC itself")
    q.add_argument("--max-request-id-bytes", type=int, default=D.max_request_id_bytes,
                   help="longest request id (default %(default)s); longer: INVALID_ARGUMENT")
    q.add_argument("--max-stall-s", type=float, default=D.max_stall_s,
                   help="a stream whose client holds it up this long in all (responses not taken: it stopped "
                        "reading or reads slower than the stream comes; earned back second for second while it keeps "
                        "up) is cut off (RESOURCE_EXHAUSTED) and its turns cancelled upstream (default %(default)s)")
    q.add_argument("--max-calls", type=int, default=D.max_calls,
                   help="unary calls (avatar registrations) in flight at once (default %(default)s); more: "
                        "RESOURCE_EXHAUSTED")
    q.add_argument("--registrations-per-hour", type=float, default=D.registrations_per_hour,
                   help="avatar registrations an hour (default %(default)s; the store is shared and bounded, least "
                        "recently used out first); more: RESOURCE_EXHAUSTED")
    q.add_argument("--registration-burst", type=int, default=D.registration_burst,
                   help="avatar registrations at once before the hourly rate applies (default %(default)s)")
    q.add_argument("--max-upstream-silence-s", type=float, default=D.max_upstream_silence_s,
                   help="a stream with a turn in flight whose server sends nothing for this long is ended "
                        "(UNAVAILABLE; a dead orchestrator) and its turns cancelled (default %(default)s)")
    p.add_argument("--ready-poll-s", type=float, default=D.ready_poll_s,
                   help="seconds between checks that talking_head is ready upstream; while it is not (a drain, a "
                        "reload), streams with no turn in flight are closed (UNAVAILABLE) so the model can unload "
                        "(0: never; default %(default)s)")
    p.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    return p


async def serve(options: FrontDoorOptions) -> None:
    server, port, channel = await start(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("deploy.front_door").info("stopping: streams in flight get 10 s to finish")
    await server.stop(grace=10)
    await channel.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level)  # each kind of record rate-limited: a client's streams cut off, one line each
    if (args.tls_cert is None) != (args.tls_key is None):
        print("--tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if (args.keys is None) == (args.tls_client_ca is None) or (args.tls_client_ca and not args.tls_cert):
        print("give --keys (API keys) or --tls-client-ca with --tls-cert (client certificates)", file=sys.stderr)
        return 2
    limits = Limits(max_streams=args.max_streams, max_turns=args.max_turns, rate=args.rate, burst=args.burst,
                    mic_rate=args.mic_rate, mic_burst_s=args.mic_burst_s,
                    max_message_bytes=args.max_message_bytes, max_request_id_bytes=args.max_request_id_bytes,
                    max_stall_s=args.max_stall_s, max_upstream_silence_s=args.max_upstream_silence_s,
                    max_calls=args.max_calls, ready_poll_s=args.ready_poll_s,
                    registrations_per_hour=args.registrations_per_hour, registration_burst=args.registration_burst)
    options = FrontDoorOptions(upstream=args.upstream, listen=args.listen, keys_file=args.keys, limits=limits,
                               tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                               upstream_root_certificates=args.upstream_root_certificates,
                               max_connections=args.max_connections,
                               session_secret=args.session_secret_file.read_bytes().strip()
                               if args.session_secret_file else None)
    try:
        options.api_keys()
    except (OSError, KeyFileError, ValueError) as e:
        print(f"front door: {e}", file=sys.stderr)
        return 2
    raise_open_file_limit(logging.getLogger("deploy.front_door"))  # each client connection holds a descriptor
    asyncio.run(serve(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
