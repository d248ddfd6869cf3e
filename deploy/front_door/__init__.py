"""The front door: the one public gRPC endpoint in front of Triton (issue 15).

    python -m deploy.front_door --upstream localhost:8001 --listen 0.0.0.0:9001 --keys keys.txt \\
        --tls-cert server.pem --tls-key server.key

Clients speak Triton's own gRPC protocol to it (tritonclient, the SDK) with `authorization: Bearer <key>`;
proxy.py says what is forwarded, quota.py who may do how much. Without TLS it listens on 127.0.0.1 only.

In a process of your own (tests, benchmarks): `with FrontDoorThread(FrontDoorOptions(...)) as door: door.url`.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deploy.front_door.proxy import FrontDoor
from deploy.front_door.quota import ApiKeys, Limits
from deploy.session_tokens import SessionTokens

log = logging.getLogger("deploy.front_door")
LOOPBACK = "127.0.0.1"
# a connection that has not finished its TLS handshake and HTTP/2 preface by then is closed (gRPC's default: 120 s)
HANDSHAKE_TIMEOUT_S = 10
# a connection with no call in flight for this long is closed (GOAWAY; a client reconnects at its next call)
IDLE_CONNECTION_S = 300


@dataclass
class FrontDoorOptions:
    upstream: str = "localhost:8001"  # Triton's gRPC endpoint
    listen: str = f"{LOOPBACK}:9001"  # host:port; a port of 0 picks a free one (FrontDoorThread.port)
    keys: ApiKeys | None = None  # or keys_file
    keys_file: Path | None = None
    limits: Limits = field(default_factory=Limits)
    tls_cert: Path | None = None  # PEM certificate chain and key: TLS on the listening port
    tls_key: Path | None = None
    # mutual TLS: clients must present a certificate signed by this CA (PEM); a client is then known by its
    # certificate's subject CN (identity `cert:<CN>`: quotas, session tokens), no API key needed
    tls_client_ca: Path | None = None
    upstream_root_certificates: Path | None = None  # PEM CA: the upstream Triton speaks TLS
    session_secret: bytes | None = None  # the HMAC secret of session tokens (a random one per process if None)
    # connections held at once, all clients together; more are closed as they come: the door's memory stays bounded
    # (~50 KiB a TLS connection: RELIABILITY.md, "A seventh pass") and it keeps descriptors for itself. What one
    # address may hold is the load balancer's or firewall's to cap (deploy/README.md)
    max_connections: int = 10000

    def api_keys(self) -> ApiKeys:
        if self.limits.max_upstream_silence_s <= 0 or self.limits.max_stall_s <= 0:
            raise ValueError("max_upstream_silence_s and max_stall_s must be > 0 seconds")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")
        if self.tls_client_ca is not None and (self.keys is not None or self.keys_file is not None):
            raise ValueError("give API keys or a client CA (mutual TLS), not both: with mutual TLS the "
                             "certificate is the identity")
        if self.keys is not None:
            return self.keys
        if self.keys_file is None:
            if self.tls_client_ca is not None:
                return ApiKeys({})  # clients are known by their certificates
            raise ValueError("the front door needs API keys (--keys FILE of `name:key` lines) or client "
                             "certificates (--tls-client-ca)")
        return ApiKeys.from_file(self.keys_file)

    def listen_address(self) -> str:
        """The address to bind: without TLS, loopback only (whatever `listen` asked), with a warning."""
        host, _, port = self.listen.rpartition(":")
        if self.tls_cert is None and host not in (LOOPBACK, "localhost"):
            log.warning("no --tls-cert/--tls-key: listening in plain text on %s:%s only (not %s)", LOOPBACK, port,
                        host or "every interface")
            return f"{LOOPBACK}:{port}"
        return self.listen


def upstream_channel(options: FrontDoorOptions) -> grpc.aio.Channel:
    opts = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    if options.upstream_root_certificates is not None:
        creds = grpc.ssl_channel_credentials(Path(options.upstream_root_certificates).read_bytes())
        return grpc.aio.secure_channel(options.upstream, creds, options=opts)
    return grpc.aio.insecure_channel(options.upstream, options=opts)


async def start(options: FrontDoorOptions) -> tuple[grpc.aio.Server, int, grpc.aio.Channel]:
    """The front door serving on the running event loop: (server, bound port, upstream channel)."""
    keys = options.api_keys()
    channel = upstream_channel(options)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", options.limits.max_message_bytes),
                                      ("grpc.max_send_message_length", -1),
                                      ("grpc.max_allowed_incoming_connections", options.max_connections),
                                      ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_S * 1000),
                                      ("grpc.max_connection_idle_ms", IDLE_CONNECTION_S * 1000)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        FrontDoor(channel, keys, options.limits, SessionTokens(options.session_secret),
                  by_certificate=options.tls_client_ca is not None), server)
    address = options.listen_address()
    if options.tls_client_ca is not None and options.tls_cert is None:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    if options.tls_cert is not None:
        if options.tls_key is None:
            raise ValueError("--tls-cert needs --tls-key")
        ca = Path(options.tls_client_ca).read_bytes() if options.tls_client_ca is not None else None
        creds = grpc.ssl_server_credentials([(Path(options.tls_key).read_bytes(), Path(options.tls_cert).read_bytes())],
                                            root_certificates=ca, require_client_auth=ca is not None)
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    who = "client certificates" if options.tls_client_ca is not None else f"{len(keys)} API keys"
    log.info("front door on %s (port %d) -> %s, %s", address, port, options.upstream, who)
    return server, port, channel


class FrontDoorThread:
    """The front door on its own event loop in a background thread (tests, benchmarks)."""

    def __init__(self, options: FrontDoorOptions):
        self.options = options
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="front-door", daemon=True)
        self._server = self._channel = None

    @property
    def url(self) -> str:
        return f"localhost:{self.port}"

    def start(self) -> FrontDoorThread:
        self._thread.start()
        self._server, self.port, self._channel = asyncio.run_coroutine_threadsafe(
            start(self.options), self._loop).result(30)
        return self

    def stop(self) -> None:
        async def close():
            await self._server.stop(grace=1)
            await self._channel.close()
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FrontDoorThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
