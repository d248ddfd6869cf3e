"""The gateway's video plumbing, free of aiortc and asyncio: the schedule of frames waiting for their media time,
the pts (RTP) clock, and JPEG -> VideoFrame at one size per session (tested in tests/test_gateway_media.py)."""
from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np

VIDEO_CLOCK = 90000  # RTP clock of video
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
MAX_VIDEO_SIDE = 640  # frames are scaled to fit (VP8/H.264 cost grows with the pixels)


@dataclass(order=True)
class Scheduled:
    media_s: float
    seq: int
    jpeg: bytes = field(compare=False, repr=False)
    turn: str = field(compare=False, default="")


class VideoSchedule:
    """Frames waiting for their media time. `pop_due` gives the newest frame whose time has come; older due frames
    are skipped (a frame that came late is not shown late), as is one more than `max_late_s` behind."""

    def __init__(self, max_late_s: float = 0.5):
        self.max_late_s = max_late_s
        self._items: list[Scheduled] = []
        self._seq = itertools.count()
        self.skipped = 0  # frames never shown: an older due frame, or one more than max_late_s behind
        self.sent = 0
        self.on_change: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._items)

    def push(self, media_s: float, jpeg: bytes, turn: str = "") -> None:
        bisect.insort(self._items, Scheduled(media_s, next(self._seq), jpeg, turn))
        self.on_change()

    def earliest(self) -> float | None:
        return self._items[0].media_s if self._items else None

    def pop_due(self, now_s: float) -> Scheduled | None:
        due = bisect.bisect_right(self._items, now_s, key=lambda s: s.media_s)
        if not due:
            return None
        item = self._items[due - 1]
        del self._items[:due]
        self.skipped += due - 1
        if now_s - item.media_s > self.max_late_s:
            self.skipped += 1
            return None
        self.sent += 1
        return item

    def drop(self, keep: Callable[[Scheduled], bool]) -> int:
        before = len(self._items)
        self._items = [s for s in self._items if keep(s)]
        self.on_change()
        return before - len(self._items)


class PtsClock:
    """Media seconds -> strictly increasing pts in `time_base` units (what aiortc turns into RTP timestamps).

    Each pts gets a pseudo-random offset of at most `jitter` units (0.5 ms at 90 kHz): frames 40 ms apart would
    otherwise give equally spaced timestamps, and the page could not tell which RTP timestamp is which frame when
    it matches the pts list of `video_clock` messages against the frames it showed (static/app.js)."""

    def __init__(self, rate: int = VIDEO_CLOCK, jitter: int = 44):
        self.rate, self.jitter = rate, jitter
        self.last: int | None = None
        self._state = 12345

    def __call__(self, media_s: float) -> int:
        self._state = (self._state * 1103515245 + 12345) & 0x7FFFFFFF
        pts = round(media_s * self.rate) + (self._state % (2 * self.jitter + 1) - self.jitter if self.jitter else 0)
        if self.last is not None and pts <= self.last:
            pts = self.last + 1
        self.last = pts
        return pts


def fit_size(width: int, height: int, max_side: int = MAX_VIDEO_SIDE) -> tuple[int, int]:
    """The video size for frames of width x height: within max_side, even (yuv420p), aspect kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, 2 * math.ceil(round(width * scale, 6) / 2)), max(2, 2 * math.ceil(round(height * scale, 6) / 2))


def letterbox(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """`img` scaled to fit width x height, centred on black (a later avatar of another shape keeps its aspect)."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.zeros((height, width, 3), np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    out[y:y + nh, x:x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def decode_frame(jpeg: bytes, size: tuple[int, int] | None) -> av.VideoFrame:
    """A JPEG frame of the orchestrator as a VideoFrame of `size` (None: the size `fit_size` picks)."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode a JPEG frame of {len(jpeg)} bytes")
    width, height = size or fit_size(img.shape[1], img.shape[0])
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(letterbox(img, width, height)), format="bgr24")
