"""Two aiortc peer connections in this process, connected as a page and the gateway are: the client offers a data
channel `events`, the gateway answers. For the tests of the gateway's transport bounds, which run on real aiortc and
aioice transports without a server; and `until`, which those tests poll with."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiortc import MediaStreamTrack, RTCPeerConnection

from deploy.gateway.dtls import close_connection


@contextlib.asynccontextmanager
async def connected_pair(before_answer: Callable[[RTCPeerConnection], object] = lambda gateway: None,
                         timeout_s: float = 20.0, mic: MediaStreamTrack | None = None):
    """Yields (client, its data channel, gateway, the messages the gateway got on it, what `before_answer` returned).
    `before_answer(gateway)` runs between the gateway's remote description and its answer, where the gateway installs
    its bounds. With `mic`, the client also sends it as its microphone. Both are closed after, whatever state their
    DTLS is in (aiortc's close() raises on a broken one)."""
    client, gateway = RTCPeerConnection(), RTCPeerConnection()
    channel = client.createDataChannel("events")
    if mic is not None:
        client.addTrack(mic)
    got: list = []
    gateway.on("datachannel", lambda ch: ch.on("message", got.append))
    try:
        await client.setLocalDescription(await client.createOffer())
        await gateway.setRemoteDescription(client.localDescription)
        installed = before_answer(gateway)
        await gateway.setLocalDescription(await gateway.createAnswer())
        await client.setRemoteDescription(gateway.localDescription)
        deadline = time.monotonic() + timeout_s
        while channel.readyState != "open" or gateway.connectionState != "connected":
            assert time.monotonic() < deadline, "not connected"
            await asyncio.sleep(0.05)
        yield client, channel, gateway, got, installed
    finally:
        for pc in (client, gateway):
            if pc.signalingState != "closed":  # a test may have closed it (a second close() of one never done waits)
                await close_connection(pc)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
