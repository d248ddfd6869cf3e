"""Audio-visual sync measured from what the client gets: output frames and audio (numpy + OpenCV, no model).

  - `frame_rms`: the audio's envelope, the RMS of each video frame's 40 ms (882 samples at 22050 Hz; the last
    frame zero-padded);
  - `MouthMeter.opening`: how open the mouth is in an output frame, measured from its pixels: in the mouth crop
    (ensemble/mouth.py cut with the frame's crop matrix, so head motion is followed), the area of pixels darker
    than half the avatar's own mouth region's median luma, minus the avatar's own (rest) dark area, as a fraction
    of the mouth's (2 half widths)^2 box. Teeth and lips are not dark; the cavity between parted lips is;
  - `pearson`, `closed_share` (frames whose audio is silent that show the mouth closed), `best_lag`;
  - `seam_excess`: around the pasted crop's outline in the frame, how much the output's gradient magnitude
    exceeds the avatar frame's own there (0 or less: no seam).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from export.contract import media

SILENCE_DB = -40.0  # a frame is silent when its RMS is this far below the reply's loudest frame
CLOSED = 0.01  # a mouth opening (fraction of the (2a)^2 mouth box) at or below this is closed


def frame_rms(audio: np.ndarray, sample_rate: int = media.OUTPUT_SAMPLE_RATE, fps: int = media.VIDEO_FPS
              ) -> np.ndarray:
    """[n_frames] RMS of each video frame's samples (n_frames = media.video_frames_for_samples)."""
    a = np.asarray(audio, np.float64).reshape(-1)
    if sample_rate % fps:
        raise ValueError(f"{sample_rate} Hz does not divide into {fps} fps frames")
    hop = sample_rate // fps
    n = -(-a.size // hop)
    a = np.pad(a, (0, n * hop - a.size))
    return np.sqrt((a.reshape(n, hop) ** 2).mean(axis=1))


def luma(bgr: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of [3, H, W] BGR (0..1) -> [H, W]."""
    return 0.114 * bgr[0] + 0.587 * bgr[1] + 0.299 * bgr[2]


class MouthMeter:
    """Measures the mouth opening in crops of output frames, relative to the avatar's rest crop."""

    def __init__(self, rest_crop: np.ndarray, mouth_row: np.ndarray):
        size = rest_crop.shape[-1]
        x0, y0, a = (float(v) for v in mouth_row[:3])
        axis = (np.arange(size) + 0.5) / size * 2 - 1
        xs, ys = np.meshgrid(axis, axis)
        # the lips, the opening and the lower lip's travel: 1.1 a either side, 0.5 a above to 1.3 a below the line
        self.region = (np.abs(xs - x0) < 1.1 * a) & (ys > y0 - 0.5 * a) & (ys < y0 + 1.3 * a)
        rest = luma(rest_crop)[self.region]
        self.threshold = 0.5 * float(np.median(rest))
        self.box_pixels = (2 * a * size / 2) ** 2  # the (2a)^2 mouth box in crop pixels
        self.rest_dark = float((rest < self.threshold).sum())

    def opening(self, crop: np.ndarray) -> float:
        """The mouth opening of one crop [3, S, S] (0..1 BGR): extra dark area / mouth box, >= 0."""
        dark = float((luma(crop)[self.region] < self.threshold).sum())
        return max(0.0, dark - self.rest_dark) / self.box_pixels


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.size < 3:
        raise ValueError(f"pearson needs two equal series of 3 or more, got {x.shape} and {y.shape}")
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


def silent_frames(rms: np.ndarray, silence_db: float = SILENCE_DB, min_run: int = 1) -> np.ndarray:
    """Frames whose RMS is silence_db or more below the loudest frame's, in runs of at least `min_run` such frames
    (min_run 3: pauses of 120 ms or more, not the closure of a stop inside a word)."""
    rms = np.asarray(rms)
    peak = float(np.max(rms)) if rms.size else 0.0
    silent = rms <= peak * 10 ** (silence_db / 20) if peak > 0 else np.ones(rms.shape, bool)
    if min_run > 1:
        out = np.zeros_like(silent)
        start = None
        for i, s in enumerate(np.r_[silent, False]):
            if s and start is None:
                start = i
            elif not s and start is not None:
                if i - start >= min_run:
                    out[start:i] = True
                start = None
        silent = out
    return silent


def closed_share(opening: np.ndarray, rms: np.ndarray, silence_db: float = SILENCE_DB, closed: float = CLOSED,
                 min_run: int = 1) -> tuple[float, int]:
    """(share of silent frames (see silent_frames) showing the mouth closed, number of silent frames)."""
    silent = silent_frames(rms, silence_db, min_run)
    n = int(silent.sum())
    return (float((np.asarray(opening)[silent] <= closed).mean()) if n else 1.0), n


def best_lag(opening: np.ndarray, rms: np.ndarray, max_lag: int = 5) -> tuple[int, float]:
    """(lag in frames, r) maximising pearson(opening[f], rms[f + lag]); lag > 0: the mouth leads the audio."""
    opening, rms = np.asarray(opening), np.asarray(rms)
    n, best = len(opening), (0, -2.0)
    for lag in range(-max_lag, max_lag + 1):
        a, b = (opening[: n - lag], rms[lag:]) if lag >= 0 else (opening[-lag:], rms[: n + lag])
        r = pearson(a, b)
        if r > best[1]:
            best = (lag, r)
    return best


@dataclass(frozen=True)
class SeamCheck:
    """Gradient magnitudes (grey levels per pixel, Sobel / 8) on a ring along the pasted crop's outline."""

    ring_pixels: int
    own_mean: float  # the avatar frame's own (before the paste)
    out_mean: float  # the output's
    excess_p99: float  # 99th percentile of (output - own) per pixel; <= ~1 grey level: no seam
    excess_max: float

    @property
    def ok(self) -> bool:
        return self.out_mean <= self.own_mean * 1.02 + 0.05 and self.excess_p99 <= 1.5


def seam_check(out_frame: np.ndarray, own_frame: np.ndarray, m: np.ndarray, size: int, width: int = 3,
               inset: float = 0.0) -> SeamCheck:
    """Compare gradients on a `width`-pixel ring around the crop square's outline (inset by `inset` of the
    crop's half side: 0 is the crop's edge) in the frame."""
    h, w = out_frame.shape[:2]
    half = (size - 1) / 2 * (1 - inset)
    c = (size - 1) / 2
    corners = np.array([[c - half, c - half], [c + half, c - half], [c + half, c + half], [c - half, c + half]])
    inv = cv2.invertAffineTransform(m)
    pts = (np.c_[corners, np.ones(4)] @ inv.T).round().astype(np.int32)
    ring = np.zeros((h, w), np.uint8)
    cv2.polylines(ring, [pts], True, 1, thickness=width)
    sel = ring.astype(bool)

    def grad(img: np.ndarray) -> np.ndarray:
        g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)) / 8.0

    go, gs = grad(out_frame)[sel], grad(own_frame)[sel]
    excess = go - gs
    return SeamCheck(int(sel.sum()), float(gs.mean()), float(go.mean()), float(np.percentile(excess, 99)),
                     float(excess.max()))
