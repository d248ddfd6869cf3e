"""Find the avatar's face with the `face_detector` stage (MediaPipe BlazeFace, short range): box and keypoints.

numpy only (no torch, no OpenCV): the windows the detector sees are cut and area-averaged here. `detect` is the
stage: in the avatar registry a BLS call to `face_detector`, in tests and tools an ONNX Runtime session
(export/toolchain/face.py `onnx_detector`). It takes windows [B, 3, SIZE, SIZE] uint8 RGB and answers the
decoded `scores` [B, 896], `boxes` [B, 896, 4] and `keypoints` [B, 896, 12] in window coordinates
(export/contract/face.py).

The short-range model finds faces that fill about 15 to 80 % of its window, so the search goes coarse to fine
(FaceOptions):

  1. windows: level 0 is the whole image, letterboxed (centred, black bars) into one window; level L > 0 cuts
     the letterboxed square (side D, the image's longer side) into windows of side D / 2^L every D / 2^(L+1)
     (3 x 3 at level 1, 7 x 7 at level 2). Levels 0 and 1 go in one call (faces of about 8 to 80 % of D);
     level 2 (down to about 3 %) only when they confirm no face. All windows come from one image pyramid of
     2 x 2 means, so a 4096-pixel image is area-averaged, not aliased, on its way to 128.
  2. candidates: anchors scoring at least min_score, merged across all the pass's windows by MediaPipe's
     weighted NMS.
  3. confirmation: each candidate (the most confident max_candidates) is cut again, centred on itself, at
     refine_scales times its size (its box fills 1/2, 1/3.2 and 1/5 of the window: where the model is most
     sure of a real face) and detected again, all in one call. A candidate is a face when its best matches
     there score confirm_score on average; its box and keypoints are the matches' score-weighted mean. So a
     one-window false positive rarely survives, and the answer does not depend on where the coarse grid cut
     the face: the same face at 512 and at 4096 pixels gives the same box, scaled.

The faces found, duplicates removed, come back largest first; `choose_face` takes the largest and says how many
there were, or raises InputError for no face (or one too small to animate).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ensemble.errors import InputError
from export.contract import face as F

# the face_detector stage: windows [B, 3, SIZE, SIZE] uint8 RGB -> {"scores", "boxes", "keypoints"}
Detect = Callable[[np.ndarray], Mapping[str, np.ndarray]]

NO_FACE = "no face found in the avatar image (use a photo with one face, seen from the front)"


@dataclass(frozen=True)
class FaceOptions:
    min_score: float = 0.3  # an anchor scoring less is no candidate (MediaPipe's own threshold is 0.5)
    confirm_score: float = 0.73  # a candidate is a face when its refinements score at least this on average
    nms_iou: float = 0.3  # MediaPipe's min_suppression_threshold: detections overlapping more are one face
    # search levels (0: whole image, 1: 3 x 3 tiles, 2: 7 x 7 tiles) sent together, pass after pass until one
    # confirms a face: faces of 8 to 80 % of the image first (a face one level misses the other finds), then smaller
    passes: tuple[tuple[int, ...], ...] = ((0, 1), (2,))
    min_window_pixels: int = 64  # a level whose windows would be smaller (image pixels) is not tried
    refine_scales: tuple[float, ...] = (2.0, 3.2, 5.0)  # refinement window sides / candidate box side
    max_candidates: int = 16  # candidates refined per level, the most confident first
    min_face_pixels: int = 32  # choose_face refuses a largest face narrower than this (image pixels)
    max_batch: int = 64  # windows per detect call (the stage's max_batch_size)


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1, image pixels (may reach past the image's edges)
    keypoints: tuple[tuple[float, float], ...]  # (x, y) image pixels, in export.contract.face.KEYPOINTS order
    score: float  # mean score of its confirmation windows (FaceOptions.refine_scales), 0..1

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def point(self, name: str) -> tuple[float, float]:
        """One keypoint by name (export.contract.face.KEYPOINTS), e.g. "mouth_center"."""
        return self.keypoints[F.KEYPOINTS.index(name)]


@dataclass(frozen=True)
class FaceSearch:
    faces: tuple[Face, ...]  # confirmed faces, largest first (empty: none)
    level: int  # the finest search level of the pass that found them (FaceOptions.passes); -1 when none did
    calls: int  # detect calls made
    windows: int  # windows sent in those calls


def find_faces(image: np.ndarray, detect: Detect, options: FaceOptions = FaceOptions(), *,
               bgr: bool = False) -> FaceSearch:
    """The faces in `image` (H x W x 3 uint8; bgr: OpenCV's channel order), largest first."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    runner = _Runner(detect, options.max_batch)
    pyramid = _Pyramid(image)
    for levels in options.passes:
        windows, crops = [], []
        for level in levels:
            w, c = _level(pyramid, level, options, bgr)
            windows += w
            crops += [c] if w else []
        if not windows:
            continue
        candidates = [d for d in _detections(runner(np.concatenate(crops)), windows, options)
                      if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= 1]  # a box of under a pixel is no face
        candidates.sort(key=lambda d: -d.score)
        faces = _refine(pyramid, candidates[:options.max_candidates], runner, options, bgr)
        if faces:
            return FaceSearch(tuple(faces), max(levels), runner.calls, runner.windows)
    return FaceSearch((), -1, runner.calls, runner.windows)


def choose_face(image: np.ndarray, detect: Detect, options: FaceOptions = FaceOptions(), *,
                bgr: bool = False) -> tuple[Face, FaceSearch, str]:
    """The largest face, the search, and a message for the user; InputError when there is no usable face."""
    search = find_faces(image, detect, options, bgr=bgr)
    if not search.faces:
        raise InputError(NO_FACE)
    best = search.faces[0]
    side = min(best.width, best.height)
    if side < options.min_face_pixels:
        raise InputError(f"the face found is {side:.0f} pixels wide; at least {options.min_face_pixels} are needed "
                         "(use a closer portrait)")
    x0, y0 = round(best.box[0]), round(best.box[1])
    where = f"at x={x0} y={y0} size {round(best.width)}x{round(best.height)} (score {best.score:.2f})"
    n = len(search.faces)
    message = f"found 1 face {where}" if n == 1 else f"found {n} faces; using the largest, {where}"
    return best, search, message


# --------------------------------------------------------------------------- search steps


@dataclass(frozen=True)
class _Window:
    x0: float  # left edge, image pixels (may be negative: black beyond the image)
    y0: float  # top edge
    side: float  # square side, image pixels


@dataclass(frozen=True)
class _Detection:
    score: float
    box: np.ndarray  # [4] x0, y0, x1, y1 image pixels
    keypoints: np.ndarray  # [12] image pixels


class _Runner:
    """Calls `detect` in chunks of at most max_batch windows and checks what comes back."""

    def __init__(self, detect: Detect, max_batch: int) -> None:
        self.detect, self.max_batch = detect, max_batch
        self.calls = self.windows = 0

    def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = []
        for i in range(0, len(crops), self.max_batch):
            batch = np.ascontiguousarray(crops[i:i + self.max_batch])
            out = self.detect(batch)
            self.calls, self.windows = self.calls + 1, self.windows + len(batch)
            got = tuple(np.asarray(out[name], np.float32) for name in ("scores", "boxes", "keypoints"))
            want = ((len(batch), F.ANCHORS), (len(batch), F.ANCHORS, F.BOX_DIMS),
                    (len(batch), F.ANCHORS, F.KEYPOINT_DIMS))
            if tuple(g.shape for g in got) != want:
                raise RuntimeError(f"face_detector answered shapes {[g.shape for g in got]}, expected {list(want)}")
            parts.append(got)
        return tuple(np.concatenate(p) for p in zip(*parts))


def _level(pyramid: _Pyramid, level: int, o: FaceOptions, bgr: bool) -> tuple[list[_Window], np.ndarray]:
    """The windows of one search level and their crops [N, 3, SIZE, SIZE]; none if they would be too small."""
    h, w = pyramid.levels[0].shape[:2]
    d = max(h, w)
    side = d / 2 ** level
    if level > 0 and side < o.min_window_pixels:
        return [], np.zeros((0, 3, F.SIZE, F.SIZE), np.uint8)
    x0, y0 = (w - d) / 2, (h - d) / 2
    canvas = resample(pyramid, _Window(x0, y0, d), F.SIZE * 2 ** level)  # the letterboxed square, once
    stride = F.SIZE // 2
    n = 1 if level == 0 else 2 ** (level + 1) - 1
    windows, crops = [], []
    for j in range(n):
        for i in range(n):
            win = _Window(x0 + i * side / 2, y0 + j * side / 2, side)
            if win.x0 >= w or win.y0 >= h or win.x0 + side <= 0 or win.y0 + side <= 0:
                continue  # all black bar
            windows.append(win)
            crops.append(canvas[j * stride:j * stride + F.SIZE, i * stride:i * stride + F.SIZE])
    return windows, _chw(np.stack(crops), bgr)


def _refine(pyramid: _Pyramid, candidates: list[_Detection], runner: _Runner, o: FaceOptions,
            bgr: bool) -> list[Face]:
    """Confirm each candidate in windows centred on it at o.refine_scales; the confirmed faces, duplicates dropped,
    largest first. A candidate's score is the mean over the scales of its best match there (0 where none matches);
    its box and keypoints are the matches' score-weighted mean."""
    if not candidates:
        return []
    windows = []
    for c in candidates:
        cx, cy = (c.box[0] + c.box[2]) / 2, (c.box[1] + c.box[3]) / 2
        for scale in o.refine_scales:
            side = float(max(c.box[2] - c.box[0], c.box[3] - c.box[1]) * scale)
            windows.append(_Window(float(cx - side / 2), float(cy - side / 2), side))
    crops = _chw(np.stack([resample(pyramid, win, F.SIZE) for win in windows]), bgr)
    scores, boxes, keypoints = runner(crops)
    confirmed = []
    for i, c in enumerate(candidates):
        matches = []
        for k in range(i * len(o.refine_scales), (i + 1) * len(o.refine_scales)):
            found = _detections((scores[k:k + 1], boxes[k:k + 1], keypoints[k:k + 1]), [windows[k]], o)
            overlaps = [float(_iou(c.box, d.box[None])[0]) for d in found]
            if overlaps and max(overlaps) > o.nms_iou:
                matches.append(found[int(np.argmax(overlaps))])
        score = sum(m.score for m in matches) / len(o.refine_scales)
        if score < o.confirm_score:
            continue
        weights = np.array([m.score for m in matches])[:, None]
        confirmed.append(_Detection(score, (np.stack([m.box for m in matches]) * weights).sum(0) / weights.sum(),
                                    (np.stack([m.keypoints for m in matches]) * weights).sum(0) / weights.sum()))
    kept: list[_Detection] = []
    for d in sorted(confirmed, key=lambda d: -d.score):  # one face refined from two candidates: keep the surer
        if not kept or np.all(_iou(d.box, np.stack([k.box for k in kept])) <= o.nms_iou):
            kept.append(d)
    kept.sort(key=lambda d: -_area(d.box))
    return [Face(tuple(float(v) for v in d.box), tuple((float(x), float(y)) for x, y in d.keypoints.reshape(-1, 2)),
                 float(d.score)) for d in kept]


def _detections(outputs: tuple[np.ndarray, np.ndarray, np.ndarray], windows: list[_Window],
                o: FaceOptions) -> list[_Detection]:
    """Anchors scoring at least min_score, in image pixels, merged by weighted NMS across all the windows."""
    scores, boxes, keypoints = outputs
    b, a = np.nonzero(scores >= o.min_score)
    if len(b) == 0:
        return []
    origin = np.array([[w.x0, w.y0] for w in windows], np.float64)[b]  # [n, 2]
    side = np.array([w.side for w in windows], np.float64)[b][:, None]
    px_boxes = boxes[b, a].astype(np.float64) * side + np.tile(origin, 2)
    px_points = keypoints[b, a].astype(np.float64) * side + np.tile(origin, F.KEYPOINT_DIMS // 2)
    return _weighted_nms(scores[b, a].astype(np.float64), px_boxes, px_points, o.nms_iou)


def _weighted_nms(scores: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray, iou: float) -> list[_Detection]:
    """MediaPipe's weighted non-maximum suppression: the best remaining detection and every other one overlapping
    it by more than `iou` become one, their boxes and keypoints averaged by score, with the best one's score."""
    order = np.argsort(-scores, kind="stable")
    out = []
    while len(order):
        overlap = _iou(boxes[order[0]], boxes[order])
        group, order = order[overlap > iou], order[overlap <= iou]
        weights = scores[group][:, None]
        total = weights.sum()
        out.append(_Detection(float(scores[group[0]]), (boxes[group] * weights).sum(0) / total,
                              (keypoints[group] * weights).sum(0) / total))
    return out


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one box [4] with boxes [n, 4] (x0, y0, x1, y1)."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    union = _area(box) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))


def _chw(crops: np.ndarray, bgr: bool) -> np.ndarray:
    """[N, S, S, 3] -> [N, 3, S, S] RGB."""
    if bgr:
        crops = crops[..., ::-1]
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- resampling


class _Pyramid:
    """The image and its halvings (2 x 2 pixel means, made when first needed): level p's pixel j covers the
    image's pixels [j * 2^p, (j + 1) * 2^p). An odd last row or column is left out of the next level."""

    def __init__(self, image: np.ndarray) -> None:
        self.levels = [image]

    def level(self, p: int) -> tuple[np.ndarray, int]:
        """Level p, or the last one there is (a side down to 1 pixel), and which level that is."""
        while len(self.levels) <= p and min(self.levels[-1].shape[:2]) >= 2:
            a = self.levels[-1]
            h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            rows = a[0:h:2, :w].astype(np.uint16) + a[1:h:2, :w]
            self.levels.append(((rows[:, 0::2] + rows[:, 1::2] + 2) >> 2).astype(np.uint8))
        q = min(p, len(self.levels) - 1)
        return self.levels[q], q


def resample(pyramid: _Pyramid, win: _Window, out: int) -> np.ndarray:
    """The square `win` of the image as out x out x 3 uint8, black beyond the image's edges.

    Shrinking averages areas: from the pyramid level that still has at least `out` pixels across the window,
    exact area weights; growing interpolates linearly. Separable: two small matrix products."""
    src, q = pyramid.level(int(math.floor(math.log2(win.side / out))) if win.side >= out else 0)
    x0, y0, side = win.x0 / 2 ** q, win.y0 / 2 ** q, win.side / 2 ** q
    h, w = src.shape[:2]
    ya, yb = max(0, math.floor(y0)), min(h, math.ceil(y0 + side))
    xa, xb = max(0, math.floor(x0)), min(w, math.ceil(x0 + side))
    if yb <= ya or xb <= xa:
        return np.zeros((out, out, 3), np.uint8)
    cells = src[ya:yb, xa:xb].astype(np.float32)  # [ny, nx, 3]
    ny, nx = cells.shape[:2]
    wy = _weights(ya, ny, y0, side, out)  # [out, ny]
    wx = _weights(xa, nx, x0, side, out)  # [out, nx]
    rows = (wy @ cells.reshape(ny, nx * 3)).reshape(out, nx, 3)
    res = np.einsum("jx,ixc->ijc", wx, rows, optimize=True)
    return np.clip(np.rint(res), 0, 255).astype(np.uint8)


def _weights(first: int, cells: int, start: float, side: float, out: int) -> np.ndarray:
    """[out, cells] weights: output pixel i of the window [start, start + side) from the pixels first ..
    first + cells - 1 (pixel j covers [j, j + 1)). Area overlap when shrinking; linear interpolation (edge pixels
    repeated up to the image's edge, black beyond) when growing (side < out)."""
    step = side / out
    if step >= 1:
        a = start + step * np.arange(out + 1)  # output pixel edges
        e = first + np.arange(cells + 1, dtype=np.float64)  # pixel edges
        lo = np.maximum(a[:-1, None], e[None, :-1])
        hi = np.minimum(a[1:, None], e[None, 1:])
        return (np.clip(hi - lo, 0, None) / step).astype(np.float32)
    centre = start + step * (np.arange(out) + 0.5)  # output pixel centres
    inside = (centre >= first) & (centre < first + cells)
    p = np.clip(centre - first - 0.5, 0, cells - 1)  # position in pixel index units, edges clamped
    j0 = np.floor(p).astype(int)
    j1 = np.minimum(j0 + 1, cells - 1)
    frac = p - j0
    wts = np.zeros((out, cells), np.float32)
    rows = np.arange(out)
    np.add.at(wts, (rows, j0), np.where(inside, 1 - frac, 0))
    np.add.at(wts, (rows, j1), np.where(inside, frac, 0))
    return wts
