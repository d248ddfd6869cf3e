"""Expressive motion: an emotion label per reply piece, and the head motion it drives.

Emotion comes from a small lexicon (`LEXICON`, below) plus punctuation: no model,
deterministic, and a few microseconds per piece. Rules, in order:
  1. count the piece's words found in the lexicon per emotion; the most frequent wins
     (ties: the order of `EMOTIONS`);
  2. no lexicon word: a piece ending in "?" is `question`, one ending in "!" is `surprised`;
  3. otherwise `neutral`.

Motion is a pose per video frame (`pose_at`): a slow idle sway and breathing that never
stops (so an avatar without speech is never a frozen image), plus a short gesture when a
piece with an emotion starts: a nod (happy), a head tilt (question), raised brows and a
small lift (surprised), lowered brows and a shake (angry), a slow drop (sad). `render`
applies it to the avatar image before lip-sync: a rotation and shift of the head region
(the face box plus a margin, feathered into the still background) and a vertical warp of
the eyebrow band inside the face box. Wav2Lip then sees the moved face, and its output is
pasted back at the same box.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import cv2
import numpy as np

from ensemble.lru import BytesLRU

EMOTIONS = ("happy", "surprised", "sad", "angry", "question", "neutral")

_WORDS = {
    "happy": "glad happy great good nice wonderful love lovely enjoy fun thanks thank welcome pleased awesome "
             "excellent fantastic yes sure delighted beautiful perfect congratulations cheers hello hi",
    "surprised": "wow oh really amazing incredible unbelievable whoa surprising surprise suddenly",
    "sad": "sorry sad unfortunately regret miss lost afraid bad unhappy sadly alas apologize apologies",
    "angry": "angry annoyed furious hate terrible awful unacceptable outrageous stop never",
}
LEXICON: dict[str, str] = {w: emotion for emotion, words in _WORDS.items() for w in words.split()}
_TOKEN = re.compile(r"[a-z']+")


def classify(text: str) -> str:
    """The emotion label of one reply piece (see the module docstring for the rules)."""
    counts: dict[str, int] = {}
    for word in _TOKEN.findall(text.lower()):
        emotion = LEXICON.get(word)
        if emotion:
            counts[emotion] = counts.get(emotion, 0) + 1
    if counts:
        return max(EMOTIONS, key=lambda e: (counts.get(e, 0), -EMOTIONS.index(e)))
    end = text.rstrip()[-1:]
    return {"?": "question", "!": "surprised"}.get(end, "neutral")


@dataclass(frozen=True)
class Pose:
    """Head motion of one frame, in units of the face box: shifts as fractions of its size."""

    dx: float = 0.0  # right
    dy: float = 0.0  # down
    angle_deg: float = 0.0  # counter-clockwise tilt
    brow: float = 0.0  # eyebrow band lift (fraction of the face height; negative lowers)

    def __add__(self, o: "Pose") -> "Pose":
        return Pose(self.dx + o.dx, self.dy + o.dy, self.angle_deg + o.angle_deg, self.brow + o.brow)


GESTURE_S = 1.2  # how long a gesture lasts after its piece starts


def idle_pose(t: float) -> Pose:
    """Breathing and a slow sway: incommensurate periods, so it never visibly loops."""
    tau = 2 * math.pi
    return Pose(dx=0.004 * math.sin(tau * 0.17 * t + 1.0), dy=0.006 * math.sin(tau * 0.29 * t),
                angle_deg=0.8 * math.sin(tau * 0.11 * t + 0.5))


def gesture_pose(emotion: str, s: float) -> Pose:
    """The gesture `s` seconds after a piece labelled `emotion` started (none outside 0..GESTURE_S)."""
    if not 0.0 <= s <= GESTURE_S:
        return Pose()
    env = math.sin(math.pi * s / GESTURE_S)  # eases in and out
    wave = math.sin(2 * math.pi * 2.0 * s)
    if emotion == "happy":
        return Pose(dy=0.025 * env * wave)  # nod
    if emotion == "question":
        return Pose(angle_deg=4.0 * env, brow=0.02 * env)  # tilt, brows up a little
    if emotion == "surprised":
        return Pose(dy=-0.015 * env, brow=0.045 * env)
    if emotion == "angry":
        return Pose(dx=0.012 * env * wave, brow=-0.03 * env)
    if emotion == "sad":
        return Pose(dy=0.02 * env, angle_deg=-1.5 * env, brow=-0.01 * env)
    return Pose()


def pose_at(t: float, emotion: str = "neutral", since_s: float = 0.0) -> Pose:
    """Pose at stream time `t`, with `emotion`'s gesture started at `since_s`."""
    return idle_pose(t) + gesture_pose(emotion, t - since_s)


HEAD_MARGIN = 0.3  # the head region: the face box and this fraction of its size on each side


def head_region(shape: tuple[int, ...], box: tuple[int, int, int, int], margin: float = HEAD_MARGIN
                ) -> tuple[int, int, int, int]:
    y1, y2, x1, x2 = box
    my, mx = int((y2 - y1) * margin), int((x2 - x1) * margin)
    return max(0, y1 - my), min(shape[0], y2 + my), max(0, x1 - mx), min(shape[1], x2 + mx)


# feather masks by (h, w, edge): about one per avatar in use, each up to 4 MiB (a 1024-pixel avatar's whole image);
# bounded in bytes as well as in count (issue 15)
_FEATHERS: BytesLRU[tuple[int, int, int], np.ndarray] = BytesLRU(64, 64 * 1024**2)


def _feather(h: int, w: int, edge: int) -> np.ndarray:
    """A mask that is 1 inside and falls to 0 over `edge` pixels at the border, [h, w, 1] float32 (read-only)."""
    key = (h, w, edge)
    m = _FEATHERS.get(key)
    if m is None:
        ramp_y = np.minimum(np.arange(h), np.arange(h)[::-1]).astype(np.float32)
        ramp_x = np.minimum(np.arange(w), np.arange(w)[::-1]).astype(np.float32)
        m = np.minimum(np.clip(ramp_y / max(1, edge), 0, 1)[:, None], np.clip(ramp_x / max(1, edge), 0, 1)[None, :])
        m = m[..., None]
        m.flags.writeable = False
        _FEATHERS.put(key, m, m.nbytes)
    return m


def feather_mask(shape: tuple[int, ...], box: tuple[int, int, int, int], margin: float = HEAD_MARGIN) -> np.ndarray:
    """The head region's blend weight [h, w] float32 (read-only): 1 inside, falling to 0 at the region's border."""
    ry1, ry2, rx1, rx2 = head_region(shape, box, margin)
    y1, y2, x1, x2 = box
    return _feather(ry2 - ry1, rx2 - rx1, max(2, int(min(y2 - y1, x2 - x1) * margin * 0.5)))[..., 0]


def render(image: np.ndarray, box: tuple[int, int, int, int], pose: Pose, margin: float = HEAD_MARGIN) -> np.ndarray:
    """The avatar image with `pose` applied to the head region (a new array; `image` is untouched)."""
    out = image.copy()
    if pose == Pose():
        return out
    y1, y2, x1, x2 = box
    fh, fw = y2 - y1, x2 - x1
    ry1, ry2, rx1, rx2 = head_region(image.shape, box, margin)
    region = image[ry1:ry2, rx1:rx2]
    h, w = region.shape[:2]
    m = head_matrix(box, (ry1, rx1), pose)
    moved = cv2.warpAffine(region, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if pose.brow:
        moved = _brow_warp(moved, (y1 - ry1, y2 - ry1, x1 - rx1, x2 - rx1), pose.brow * fh)
    mask = feather_mask(image.shape, box, margin)
    out[ry1:ry2, rx1:rx2] = cv2.blendLinear(moved, region, mask, 1.0 - mask)  # one pass in uint8, rounded
    return out


def head_matrix(box: tuple[int, int, int, int], origin: tuple[int, int], pose: Pose) -> np.ndarray:
    """The head region's affine map (2 x 3, region coordinates with its top-left at `origin` (y, x))."""
    y1, y2, x1, x2 = box
    oy, ox = origin
    m = cv2.getRotationMatrix2D(((x1 + x2) / 2 - ox, (y1 + y2) / 2 - oy), pose.angle_deg, 1.0)
    m[0, 2] += pose.dx * (x2 - x1)
    m[1, 2] += pose.dy * (y2 - y1)
    return m


def moved_point(shape: tuple[int, ...], box: tuple[int, int, int, int], pose: Pose, point: tuple[float, float],
                margin: float = HEAD_MARGIN) -> tuple[float, float]:
    """Where `point` (x, y) of the image is after `render(image, box, pose)`: e.g. the mouth the lip-sync follows."""
    if pose == Pose():
        return point
    ry1, _, rx1, _ = head_region(shape, box, margin)
    x, y = head_matrix(box, (ry1, rx1), pose) @ np.array([point[0] - rx1, point[1] - ry1, 1.0])
    return float(x + rx1), float(y + ry1)


# the brow warp's sampling grid and bump by (region shape, face box): one per avatar in use, like the feathers
_BROW_GRIDS: BytesLRU[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = BytesLRU(64, 64 * 1024**2)


def brow_grid(shape: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs, ys, bump) of the brow warp, [h, w] float32 each (read-only): the pixel grid and the band's weight."""
    key = (shape, box)
    grid = _BROW_GRIDS.get(key)
    if grid is None:
        y1, y2, x1, x2 = box
        fh, fw = y2 - y1, x2 - x1
        ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
        center_y, half_h = y1 + 0.30 * fh, 0.22 * fh
        center_x, half_w = (x1 + x2) / 2, 0.45 * fw
        bump = (np.clip(1 - ((ys - center_y) / half_h) ** 2, 0, 1)
                * np.clip(1 - ((xs - center_x) / half_w) ** 2, 0, 1)).astype(np.float32)
        grid = (xs, ys, bump)
        for a in grid:
            a.flags.writeable = False
        _BROW_GRIDS.put(key, grid, 3 * xs.nbytes)
    return grid


def _brow_warp(img: np.ndarray, box: tuple[int, int, int, int], lift_px: float) -> np.ndarray:
    """Shift the eyebrow band (15-45 % down the face box) up by `lift_px`, smoothly fading to 0 around it."""
    xs, ys, bump = brow_grid(img.shape[:2], box)
    return cv2.remap(img, xs, cv2.scaleAdd(bump, lift_px, ys), interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


class Timeline:
    """Which emotion is on at a stream time: pieces' labels placed at their first audio sample."""

    def __init__(self) -> None:
        self._marks: list[tuple[float, str]] = []  # (start seconds, emotion), in order

    def add(self, start_s: float, emotion: str) -> None:
        self._marks.append((start_s, emotion))

    def at(self, t: float) -> tuple[str, float]:
        """(emotion, its start time) at stream time `t`; ("neutral", 0) before the first piece."""
        current = ("neutral", 0.0)
        for start, emotion in self._marks:
            if start > t:
                break
            current = (emotion, start)
        return current

    def pose(self, t: float) -> Pose:
        emotion, since = self.at(t)
        return pose_at(t, emotion, since)
