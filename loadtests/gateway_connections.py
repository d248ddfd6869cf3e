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


async def unread_responses(http, victim, n: int = 2000, watch_s: float = 30.0) -> str:
    """`n` page requests pipelined on one connection whose client reads nothing (a 4 KiB receive buffer), and
    whether the gateway still holds its end `watch_s` later."""
    host, port = await address(http)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, (host, port))
    pending, mine, t = b"GET /static/app.js HTTP/1.1\r\nHost: x\r\n\r\n" * n, s.getsockname()[1], time.monotonic()

    def held() -> bool:
        return any(c.laddr.port == port and c.raddr and c.raddr.port == mine and c.status == psutil.CONN_ESTABLISHED
                   for c in psutil.net_connections("tcp"))
    closed_after = None
    while time.monotonic() - t < watch_s:
        with contextlib.suppress(BlockingIOError):
            pending = pending[s.send(pending[:65536]):] if pending else pending
        await asyncio.sleep(0.5)
        if closed_after is None and not held():
            closed_after = time.monotonic() - t
    s.close()
    return (f"{n} requests pipelined, {'all' if not pending else 'not all'} sent; the gateway " + (
        f"closed its end after {closed_after:.1f} s" if closed_after else f"still held it {watch_s:g} s later"))
