"""The gateway's connections below any request, cases of `python -m loadtests.gateway_abuse` (RELIABILITY.md, "A seventh
pass"): what one client holds by connecting and not sending, or by sending and not reading."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import aiohttp
import psutil


async def address(http: aiohttp.ClientSession) -> tuple[str, int]:
    async with http.get("/healthz") as r:  # where the session's base URL points
        return r.url.host, r.url.port


async def idle_connections(http, victim, n: int = 1100, hold_s: float = 20.0) -> str:
    """`n` connections that send nothing, then a newcomer's page load on a connection of its own while they are held
    (a gateway started with 1024 descriptors, as Docker Engine 29 starts it, has none left)."""
    host, port = await address(http)
    conns = [await asyncio.open_connection(host, port) for _ in range(n)]
    await asyncio.sleep(1)
    t = time.monotonic()
    try:
        async with aiohttp.ClientSession(f"http://{host}:{port}", timeout=aiohttp.ClientTimeout(total=5)) as fresh:
            async with fresh.get("/config") as r:
                newcomer = f"{r.status} after {time.monotonic() - t:.2f} s"
    except (TimeoutError, aiohttp.ClientError) as e:
        newcomer = f"{type(e).__name__} after {time.monotonic() - t:.1f} s"
    await asyncio.sleep(max(0.0, hold_s - (time.monotonic() - t)))
    for _, writer in conns:
        writer.close()
    return f"{n} connections held {hold_s:g} s; newcomer's GET /config: {newcomer}"


class UnreadPipeline:
    """`n` page requests pipelined on one connection whose client reads nothing (a 4 KiB receive buffer): `push` sends
    what the socket takes, `held` says whether the gateway still holds its end."""

    def __init__(self, sock: socket.socket, port: int, n: int):
        self.sock, self.port, self.mine = sock, port, sock.getsockname()[1]
        self.pending = b"GET /static/app.js HTTP/1.1\r\nHost: x\r\n\r\n" * n

    @classmethod
    async def connect(cls, host: str, port: int, n: int) -> UnreadPipeline:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, (host, port))
        return cls(s, port, n)

    def push(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.pending = self.pending[self.sock.send(self.pending[:65536]):] if self.pending else self.pending

    def held(self) -> bool:
        return any(c.laddr.port == self.port and c.raddr and c.raddr.port == self.mine and
                   c.status == psutil.CONN_ESTABLISHED for c in psutil.net_connections("tcp"))


async def unread_responses(http, victim, n: int = 2000, watch_s: float = 30.0) -> str:
    """`n` page requests pipelined on one connection whose client reads nothing, and whether the gateway still holds
    its end `watch_s` later."""
    pipe, t = await UnreadPipeline.connect(*await address(http), n), time.monotonic()
    closed_after = None
    while time.monotonic() - t < watch_s:
        pipe.push()
        await asyncio.sleep(0.5)
        if closed_after is None and not pipe.held():
            closed_after = time.monotonic() - t
    pipe.sock.close()
    return (f"{n} requests pipelined, {'not all' if pipe.pending else 'all'} sent; the gateway " + (
        f"closed its end after {closed_after:.1f} s" if closed_after else f"still held it {watch_s:g} s later"))


async def healthz_flood(http, victim, clients: int = 64, seconds: float = 20.0) -> str:
    """`clients` keyless callers asking the page port's `/healthz` back to back for `seconds` (it answers whether
    Triton's orchestrator is ready)."""
    statuses: dict[int, int] = {}
    t0 = time.monotonic()

    async def caller() -> None:
        while time.monotonic() - t0 < seconds:
            async with http.get("/healthz") as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

    await asyncio.gather(*(caller() for _ in range(clients)))
    n = sum(statuses.values())
    return f"{n} GET /healthz in {seconds:g} s ({n / seconds:.0f} a second) by {clients} callers: {statuses}"
