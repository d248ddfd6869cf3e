"""The gateway's audio plumbing and media clock, free of aiortc and asyncio (video: video.py; both tested without a
browser in tests/test_gateway_media.py).

One session has ONE media clock (`MediaClock`, seconds since the session started). Both outgoing tracks are paced
on it, and their RTP timestamps come from it: the audio track's 20 ms frame k carries pts k * 960 (48 kHz), a
video frame shown at media time t carries pts round(t * 90000). aiortc's RTCP sender reports map each track's RTP
timestamp to the wall clock at which the packet left, so a browser that receives both tracks in one stream lines
them up (lip sync) as long as each frame leaves at its media time, which the tracks make sure of.

A reply's own clock (its first audio sample = 0 s; a video frame's `pts`, on the same 25 fps clock) is placed on
the media clock where its first audio sample lands in the playout buffer (`TurnTimeline`); an underrun (audio
arriving later than it should play) moves the rest of the turn, video included, by the gap.

Inbound: the browser's Opus (48 kHz, stereo s16 as aiortc decodes it) -> 16 kHz mono float32 -> 32 ms chunks
(`MicResampler`), what `{"action": "mic"}` requests carry.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import soxr

from export.contract import media as C

OUT_RATE = 48000  # Opus
AUDIO_PTIME_S = 0.02  # one outgoing audio frame
AUDIO_FRAME = round(OUT_RATE * AUDIO_PTIME_S)  # 960 samples
AUDIO_TIME_BASE = Fraction(1, OUT_RATE)
MIC_CHUNK = round(0.032 * C.INPUT_SAMPLE_RATE)  # 512 samples: client.sdk's microphone chunk, one VAD window


class MediaClock:
    """Seconds since the session started, and the wall time (of `now_fn`) of a media time."""

    def __init__(self, now_fn: Callable[[], float]):
        self._now = now_fn
        self.t0 = now_fn()

    def now(self) -> float:
        return self._now() - self.t0

    def wall(self, media_s: float) -> float:
        return self.t0 + media_s


# ------------------------------------------------------------------------------------------------ audio in

class Chunker:
    """Concatenates sample arrays and cuts them into chunks of exactly `size`."""

    def __init__(self, size: int):
        self.size = size
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        buf = np.concatenate([self._pending, np.asarray(samples, np.float32).reshape(-1)])
        n = buf.size // self.size * self.size
        self._pending = buf[n:]
        return [buf[i:i + self.size] for i in range(0, n, self.size)]


class MicResampler:
    """Browser microphone frames (any rate and layout, s16 or float) -> 16 kHz mono float32 chunks of MIC_CHUNK.
    Channels are averaged (aiortc decodes Opus as stereo, both channels the same)."""

    def __init__(self, chunk: int = MIC_CHUNK):
        self._rate: int | None = None
        self._stream: soxr.ResampleStream | None = None
        self._chunker = Chunker(chunk)

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        if frame.sample_rate != self._rate:
            self._rate = frame.sample_rate
            self._stream = soxr.ResampleStream(frame.sample_rate, C.INPUT_SAMPLE_RATE, 1, dtype="float32")
        return self._chunker.push(self._stream.resample_chunk(mono_float32(frame)))


def mono_float32(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame's samples, channels averaged, as float32 in [-1, 1]."""
    raw = frame.to_ndarray()
    channels = len(frame.layout.channels)
    a = raw.mean(axis=0) if frame.format.is_planar else raw.reshape(-1, channels).mean(axis=1)
    if np.issubdtype(raw.dtype, np.integer):
        a = a / float(np.iinfo(raw.dtype).max + 1)
    return a.astype(np.float32)


# ------------------------------------------------------------------------------------------------ audio out

class SpeechResampler:
    """One turn's audio (float32 at the orchestrator's rate, 22.05 kHz) -> 48 kHz int16, streamed chunk by chunk.

    soxr's stream keeps the output aligned with the input (output sample j is input time j / 48000) and only holds
    back a few samples until more input (or `last=True`) comes."""

    def __init__(self, in_rate: int):
        self.in_rate = in_rate
        self._stream = soxr.ResampleStream(in_rate, OUT_RATE, 1, dtype="float32", quality="HQ")

    def push(self, audio: np.ndarray | None, last: bool = False) -> np.ndarray:
        x = np.zeros(0, np.float32) if audio is None else np.asarray(audio, np.float32).reshape(-1)
        return to_int16(self._stream.resample_chunk(x, last=last))


def to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(x, np.float32).reshape(-1), -1.0, 1.0) * 32767.0).astype(np.int16)


class AudioPlayout:
    """The outgoing 48 kHz stream at positions of the media clock (samples since the session started).

    Samples written are queued right after what is queued, or, when everything queued has been played (an
    underrun, or nothing was playing), at the read position: `write` returns where they landed. `read` takes the
    next frame (silence where nothing is queued) and the marks it passed. `flush` drops what is queued (barge-in).
    """

    def __init__(self) -> None:
        self.read_pos = 0
        self._queue: deque[np.ndarray] = deque()
        self._queued = 0
        self._marks: list[tuple[int, Hashable]] = []

    @property
    def end(self) -> int:
        """The position after the last queued sample (the read position when nothing is queued)."""
        return self.read_pos + self._queued

    def write(self, samples: np.ndarray) -> int:
        at = self.end
        if samples.size:
            self._queue.append(np.asarray(samples, np.int16).reshape(-1))
            self._queued += samples.size
        return at

    def mark(self, pos: int, key: Hashable) -> None:
        """`read` reports `key` once it has read the sample at `pos` (when that sample goes out)."""
        self._marks.append((pos, key))

    def read(self, n: int = AUDIO_FRAME) -> tuple[np.ndarray, list[Hashable]]:
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n and self._queue:
            head = self._queue[0]
            take = min(n - filled, head.size)
            out[filled:filled + take] = head[:take]
            filled += take
            if take == head.size:
                self._queue.popleft()
            else:
                self._queue[0] = head[take:]
        self._queued -= filled
        self.read_pos += n
        passed = [key for pos, key in self._marks if pos < self.read_pos]
        self._marks = [(pos, key) for pos, key in self._marks if pos >= self.read_pos]
        return out, passed

    def skip_to(self, pos: int) -> None:
        """Start reading at `pos` (the first frame the track sends): what is queued before it is dropped."""
        if pos > self.read_pos:
            drop = pos - self.read_pos
            while drop and self._queue:
                head = self._queue[0]
                take = min(drop, head.size)
                self._queue[0] = head[take:]
                if not self._queue[0].size:
                    self._queue.popleft()
                self._queued -= take
                drop -= take
            self.read_pos = pos

    def flush(self) -> int:
        """Drop everything queued; the number of samples dropped."""
        dropped, self._queued = self._queued, 0
        self._queue.clear()
        self._marks.clear()
        return dropped


@dataclass
class TurnTimeline:
    """Where one turn's clock (0 = its first audio sample) lies on the media clock, in 48 kHz samples."""

    offset: int | None = None  # media position of the turn's time 0; None until its first audio or frame
    written: int = 0  # samples of this turn written to the playout

    def place(self, landed_at: int, n: int) -> None:
        """`n` samples of the turn landed at playout position `landed_at`: later than expected after an underrun,
        which moves the rest of the turn (video too) by the gap."""
        if self.offset is None:
            self.offset = landed_at
        elif landed_at > self.offset + self.written:
            self.offset = landed_at - self.written
        self.written += n

    def anchor(self, media_s: float) -> None:
        """A turn whose first event is a frame (no audio yet): its time 0 is `media_s`."""
        if self.offset is None:
            self.offset = round(media_s * OUT_RATE)

    def media_time(self, turn_s: float) -> float:
        assert self.offset is not None, "place() or anchor() first"
        return self.offset / OUT_RATE + turn_s

    @property
    def end_s(self) -> float:
        """Media time just after the turn's last written sample."""
        return ((self.offset or 0) + self.written) / OUT_RATE


def audio_frame(samples: np.ndarray, k: int) -> av.AudioFrame:
    """Outgoing audio frame k: 20 ms of mono int16 at 48 kHz, pts k * 960 on the audio clock."""
    frame = av.AudioFrame.from_ndarray(np.asarray(samples, np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = OUT_RATE
    frame.pts = k * AUDIO_FRAME
    frame.time_base = AUDIO_TIME_BASE
    return frame
