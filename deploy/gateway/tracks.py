"""The aiortc tracks of one session: the avatar's voice and face going out, the browser's microphone coming in.

Both outgoing tracks are paced on the session's media clock (deploy/gateway/media.py says why that gives lip
sync): the audio track sends a 20 ms frame every 20 ms, silence when nothing is queued; the video track sends
each scheduled frame at its media time, so the face moves at the orchestrator's 25 fps (idle motion between
replies) and never faster than the voice.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Hashable

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from deploy.gateway.media import AUDIO_FRAME, AUDIO_PTIME_S, AudioPlayout, MediaClock, MicResampler, audio_frame
from deploy.gateway.video import VIDEO_TIME_BASE, PtsClock, Scheduled, VideoSchedule, decode_frame

log = logging.getLogger(__name__)


class AvatarAudioTrack(MediaStreamTrack):
    """48 kHz mono, 20 ms frames from the session's playout buffer; `on_sent(key)` for each mark passed."""

    kind = "audio"

    def __init__(self, clock: MediaClock, playout: AudioPlayout, on_sent: Callable[[Hashable, float], None]):
        super().__init__()
        self.clock, self.playout, self.on_sent = clock, playout, on_sent
        self._k: int | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._k is None:  # the first frame goes out now: the media clock runs since the session began
            self._k = math.ceil(self.clock.now() / AUDIO_PTIME_S)
            self.playout.skip_to(self._k * AUDIO_FRAME)
        delay = self.clock.wall(self._k * AUDIO_PTIME_S) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        samples, passed = self.playout.read(AUDIO_FRAME)
        frame = audio_frame(samples, self._k)
        self._k += 1
        now = time.monotonic()
        for key in passed:
            self.on_sent(key, now)
        return frame


class AvatarVideoTrack(MediaStreamTrack):
    """The scheduled JPEG frames, decoded and sent at their media time; `on_sent(item, pts, t)` after each."""

    kind = "video"

    def __init__(self, clock: MediaClock, schedule: VideoSchedule,
                 on_sent: Callable[[Scheduled, int, float], None]):
        super().__init__()
        self.clock, self.schedule, self.on_sent = clock, schedule, on_sent
        self.size: tuple[int, int] | None = None  # fixed by the first frame: the encoder keeps one size
        self.pts = PtsClock()
        self._changed = asyncio.Event()
        schedule.on_change = self._changed.set

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            self._changed.clear()
            earliest = self.schedule.earliest()
            if earliest is None:
                await self._changed.wait()
                continue
            delay = self.clock.wall(earliest) - time.monotonic()
            if delay > 0:
                try:  # a flush (barge-in) may take the frame away meanwhile
                    await asyncio.wait_for(self._changed.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                continue
            item = self.schedule.pop_due(self.clock.now())
            if item is None:
                continue
            try:
                frame = await loop.run_in_executor(None, decode_frame, item.jpeg, self.size)
            except ValueError as e:
                log.warning("skipping a frame: %s", e)
                continue
            self.size = self.size or (frame.width, frame.height)
            frame.pts = self.pts(item.media_s)
            frame.time_base = VIDEO_TIME_BASE
            self.on_sent(item, frame.pts, time.monotonic())
            return frame


async def read_microphone(track: MediaStreamTrack, on_chunk: Callable[[object], None]) -> None:
    """The browser's audio track -> 16 kHz mono float32 chunks of 32 ms, handed to `on_chunk` as they fill,
    until the track ends."""
    resampler = MicResampler()
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for chunk in resampler.push(frame):
            on_chunk(chunk)
