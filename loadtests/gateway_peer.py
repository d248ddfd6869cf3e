"""A browser-like WebRTC peer for the gateway's harnesses (`python -m loadtests.gateway_abuse` and its case modules):
it offers what the page offers, connects through `POST /offer` as a client named by `X-Forwarded-For`, and times
each video frame as it arrives."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

# Who sends what, as the gateway's proxy header says (`--client-header X-Forwarded-For`; a tree without that flag,
# i.e. before the gateway knew clients apart, sees every request from 127.0.0.1)
VICTIM, ATTACKER, NEWCOMER = "192.0.2.1", "203.0.113.66", "192.0.2.2"


class Peer:
    """A browser-like aiortc peer: data channel `events`, audio (a microphone track if given) and video received."""

    def __init__(self, mic: MediaStreamTrack | None = None, camera: MediaStreamTrack | None = None):
        self.pc = RTCPeerConnection()
        self.frames: list[float] = []
        self.messages: list[dict] = []
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", lambda m: self.messages.append(json.loads(m)))
        if mic is not None:
            self.pc.addTrack(mic)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        if camera is not None:
            self.pc.addTrack(camera)
        else:
            self.pc.addTransceiver("video", direction="recvonly")
        self.pc.on("track", self._track)
        self._pulls: list[asyncio.Future] = []

    def _track(self, track) -> None:
        if track.kind != "video":
            return

        async def pull():
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()
                    self.frames.append(time.monotonic())
        self._pulls.append(asyncio.ensure_future(pull()))

    async def close(self) -> None:
        """Close the connection and stop reading its video."""
        for pull in self._pulls:
            pull.cancel()
        await self.pc.close()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def connect(self, http: aiohttp.ClientSession, client: str = ATTACKER,
                      wait_open_s: float = 20.0, **extra) -> tuple[int, str]:
        """Offer (with `extra` fields beside the SDP: options, avatar_id) and wait for the data channel to open."""
        status, text = await send_offer(http, await self.offer(), client, **extra)
        if status != 200:
            return status, text
        answer = json.loads(text)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        deadline = time.monotonic() + wait_open_s
        while self.channel.readyState != "open" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return status, answer["session"]

    def receiving(self) -> bool:
        """Connected, and a video frame came in the last 2 s."""
        return self.pc.connectionState == "connected" and bool(self.frames) and time.monotonic() - self.frames[-1] < 2

    def largest_gap(self, t0: float, t1: float) -> float:
        ts = [t0] + [t for t in self.frames if t0 <= t <= t1] + [t1]
        return max(b - a for a, b in zip(ts, ts[1:]))


def sent_by(client: str) -> dict:
    return {"X-Forwarded-For": client}


async def send_offer(http: aiohttp.ClientSession, sdp: str, client: str = ATTACKER, **extra) -> tuple[int, str]:
    async with http.post("/offer", data=json.dumps({"type": "offer", "sdp": sdp, **extra}),
                         headers=sent_by(client)) as r:
        return r.status, await r.text()


def short(status: int, text: str) -> str:
    text = " ".join(text.split())
    return f"{status} {text[:110]}" if status != 200 else "200 (answered)"
