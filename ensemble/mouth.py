"""The mouth crop the `lipsync` warp sees: where the avatar's mouth is, cutting the crop from a (head-moved) frame,
and pasting the warped crop back without a box or a seam. numpy + OpenCV.

Geometry (`MouthGeometry`, image pixels of the still avatar, OpenCV pixel-index coordinates): the lip line's centre,
its tilt, the mouth's half width, the avatar's own rest opening above and below the lip line (a smile showing
teeth), the corners' lift, and the crop's side (export.contract.mouth.CROP_EYE_SPANS eye distances).
`geometry_from_keypoints` derives it from the face detector's keypoints (eyes and mouth centre: no corners, so the
width is a proportion of the eye distance), and `refine_from_image` measures the avatar's own rest opening (teeth
shown in a smile), the lip line and the corners' lift from its still image; `ASTRONAUT` is the demo avatar's
geometry measured by eye, to check them against.

Per frame: `crop_matrix` maps frame pixels to crop pixels, following the mouth where the head pose moved it
(motion.moved_point) and turning with the head; `cut` resamples the crop; `paste` maps the warp's result back:
the frame plus the warp's change where the change is small (so the frame keeps its own resolution where the
warp moved nothing, and the change is exactly zero on the crop's border: no seam), the warped crop itself where
the change is large (moved lips and the drawn interior, with no ghost of what was there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ensemble import motion
from export.contract import face as F
from export.contract.mouth import (
    CROP_EYE_SPANS,
    CROP_SIZE,
    MOUTH_BELOW_KEYPOINT_EYE_SPANS,
    MOUTH_HALF_WIDTH_EYE_SPANS,
)

REPLACE_CHANGE = 0.12  # paste: a pixel whose warp changed it by this much (0..1 scale) is replaced, not offset
REPLACE_BLUR = 1.5  # paste: the replace weight is blurred with this sigma (crop pixels) so it has no edge
DOWNSCALE_BLUR = 0.45  # cut: when the crop is smaller than the frame, blur sigma x (frame px per crop px) first


@dataclass(frozen=True)
class MouthGeometry:
    """The avatar's mouth at rest, in image pixels of the still avatar (OpenCV pixel-index coordinates)."""

    center: tuple[float, float]  # centre of the lip line (x, y): where the lips meet, or the middle of the rest opening
    angle_deg: float  # the lip line's tilt, OpenCV's sense (counter-clockwise positive on screen): atan2(dy, dx) of it
    half_width: float  # from the centre to a corner, pixels
    gap_up: float = 0.0  # rest opening above the lip line at the centre, pixels (teeth shown in a smile)
    gap_down: float = 0.0  # rest opening below the lip line at the centre, pixels
    smile: float = 0.0  # the corners sit this many half widths above the centre's lip line
    crop_side: float = 0.0  # the crop's side, pixels (0: CROP_EYE_SPANS x the half width / MOUTH_HALF_WIDTH_EYE_SPANS)

    def __post_init__(self) -> None:
        if not self.half_width > 0 or self.gap_up < 0 or self.gap_down < 0 or self.crop_side < 0:
            raise ValueError(f"bad mouth geometry {self}")

    @property
    def side(self) -> float:
        return self.crop_side or self.half_width / MOUTH_HALF_WIDTH_EYE_SPANS * CROP_EYE_SPANS

    def row(self, size: int = CROP_SIZE) -> np.ndarray:
        """The `mouth` input row [6] float32 (export.contract.mouth.MOUTH_PARAMS): the lip line is the crop's centre."""
        k = 2.0 / self.side  # image pixels -> normalised crop units
        return np.array([0.0, 0.0, self.half_width * k, self.gap_up * k, self.gap_down * k, self.smile], np.float32)


# The demo avatar (scikit-image's astronaut, 512 x 512), measured by eye on an enlarged crop: corners at (203, 140)
# and (242, 141), upper lip's edge at y 142.5 and lower lip's at 151 on the centre column (teeth between);
# BlazeFace puts mouth_center at (222.4, 148.4) and the eyes 43.1 px apart.
ASTRONAUT = MouthGeometry(center=(222.5, 146.75), angle_deg=1.5, half_width=19.5, gap_up=4.25, gap_down=4.25,
                          smile=0.28, crop_side=CROP_EYE_SPANS * 43.1)


def geometry_from_keypoints(keypoints: np.ndarray) -> MouthGeometry:
    """A closed-mouth geometry from the face detector's keypoints [6, 2] (x, y continuous image coordinates,
    export.contract.face.KEYPOINTS order): centre at the mouth keypoint, tilt of the eye line, width from the eye
    distance."""
    k = np.asarray(keypoints, np.float64).reshape(len(F.KEYPOINTS), 2) - 0.5  # to pixel-index coordinates
    right, left, mouth = (k[F.KEYPOINTS.index(n)] for n in ("right_eye", "left_eye", "mouth_center"))
    d = left - right
    span = float(np.hypot(*d))
    if span < 4:
        raise ValueError(f"eyes {span:.1f} px apart: too small a face for the mouth warp")
    angle = math.degrees(math.atan2(d[1], d[0]))
    down = np.array([-math.sin(math.radians(angle)), math.cos(math.radians(angle))])  # the face's "down"
    centre = mouth + down * MOUTH_BELOW_KEYPOINT_EYE_SPANS * span
    return MouthGeometry(center=(float(centre[0]), float(centre[1])), angle_deg=angle,
                         half_width=MOUTH_HALF_WIDTH_EYE_SPANS * span, crop_side=CROP_EYE_SPANS * span)


@dataclass(frozen=True)
class RestOptions:
    """How `refine_from_image` finds the avatar's own rest opening (teeth or a dark gap between the lips)."""

    column_half_width: float = 0.3  # each probe column is this many half widths wide
    probes: tuple[float, ...] = (-0.6, 0.0, 0.6)  # probe columns, in half widths from the centre
    search: float = 0.6  # rows within this many half widths of the keypoint's lip line are searched
    nearest: float = 0.35  # an opening must reach within this many half widths of that line
    redness_ratio: float = 0.5  # a row is no lip when its redness is below this x the lips' (the reddest rows')
    dark_ratio: float = 0.55  # ... and it is no lip either when darker than this x the lips' luma
    min_rows: int = 3  # crop rows an opening needs at the centre to count (fewer: the mouth is closed)
    side_min_rows: int = 2  # ... and at the side probes (the opening narrows towards the corners)
    max_tilt_deg: float = 8.0  # the left/right probes may turn the lip line by at most this much


def refine_from_image(image: np.ndarray, geometry: MouthGeometry, options: RestOptions = RestOptions(),
                      size: int = CROP_SIZE) -> MouthGeometry:
    """The geometry with the avatar's own rest opening measured from its still image: in the mouth crop, probe
    columns (centre and either side) are scanned for a run of rows that are not lip (less red than the lips and
    either brighter, like teeth, or much darker) bounded by lip; the centre column's run gives the lip line and
    the gaps, the side columns' runs the corners' lift and the line's tilt. No run at the centre: a closed mouth
    (gaps 0, the lip line kept). Only the still avatar is read (once, at registration)."""
    o = options
    m = crop_matrix(geometry, size=size)
    crop = cut(image, m, size)
    b, g, r = crop
    luma = 0.114 * b + 0.587 * g + 0.299 * r
    redness = (r - g) / (b + g + r + 1e-6)
    a = geometry.half_width * size / geometry.side  # crop pixels
    c = (size - 1) / 2
    rows = np.arange(max(0, int(c - o.search * a)), min(size, int(c + o.search * a) + 1))
    centres: dict[float, tuple[float, float]] = {}
    for dx in o.probes:
        lo, hi = int(round(c + (dx - o.column_half_width) * a)), int(round(c + (dx + o.column_half_width) * a)) + 1
        lum = np.median(luma[rows, max(0, lo):min(size, hi)], axis=1)
        red = np.median(redness[rows, max(0, lo):min(size, hi)], axis=1)
        lip = int(np.argmax(red))
        not_lip = (red < o.redness_ratio * red[lip]) & ((lum > lum[lip]) | (lum < o.dark_ratio * lum[lip]))
        runs, start = [], None
        for i, flag in enumerate(np.r_[not_lip, False]):
            if flag and start is None:
                start = i
            elif not flag and start is not None:
                need = o.min_rows if dx == 0.0 else o.side_min_rows
                if i - start >= need and start > 0 and i < len(rows):  # bounded by lip on both sides
                    runs.append((rows[start] - 0.5, rows[i - 1] + 0.5))
                start = None
        near = [(top, bottom) for top, bottom in runs if top - o.nearest * a <= c <= bottom + o.nearest * a]
        if near:
            centres[dx] = min(near, key=lambda tb: abs((tb[0] + tb[1]) / 2 - c))
    if 0.0 not in centres:
        return geometry
    top, bottom = centres[0.0]
    mid = (top + bottom) / 2
    sides = [dx for dx in centres if dx != 0.0]
    smile = 0.0
    angle = geometry.angle_deg
    if len(sides) == 2:
        (l_top, l_bot), (r_top, r_bot) = centres[min(sides)], centres[max(sides)]
        l_mid, r_mid = (l_top + l_bot) / 2, (r_top + r_bot) / 2
        lift = mid - (l_mid + r_mid) / 2  # crop pixels the sides sit above the centre
        smile = max(0.0, lift / (max(sides) ** 2 * a))
        tilt = np.degrees(np.arctan2(r_mid - l_mid, (max(sides) - min(sides)) * a))
        angle += float(np.clip(tilt, -o.max_tilt_deg, o.max_tilt_deg))
    inv = cv2.invertAffineTransform(m)
    centre = inv @ np.array([c, mid, 1.0])
    k = geometry.side / size  # crop pixels -> image pixels
    return MouthGeometry(center=(float(centre[0]), float(centre[1])), angle_deg=angle,
                         half_width=geometry.half_width, gap_up=(mid - top) * k, gap_down=(bottom - mid) * k,
                         smile=smile, crop_side=geometry.crop_side)


def avatar_geometry(image: np.ndarray, keypoints: np.ndarray) -> MouthGeometry:
    """An avatar's mouth geometry: from its face keypoints, with its rest opening measured from its image
    (ensemble.avatar.Avatar's `image` and `keypoints`; ~0.5 ms: compute once per avatar or per turn)."""
    return refine_from_image(image, geometry_from_keypoints(keypoints))


def crop_matrix(geometry: MouthGeometry, shape: tuple[int, ...] | None = None, box: tuple[int, int, int, int] | None
                = None, pose: motion.Pose | None = None, size: int = CROP_SIZE) -> np.ndarray:
    """2 x 3 affine map from frame pixels to crop pixels: the lip line's centre to the crop's centre, level, the
    crop side to `size`. With a head pose (and the avatar's image shape and face box, as motion.render takes them),
    it follows the moved mouth."""
    cx, cy = geometry.center
    angle = geometry.angle_deg
    if pose is not None and pose != motion.Pose():
        if shape is None or box is None:
            raise ValueError("crop_matrix: a pose needs the image shape and the face box")
        cx, cy = motion.moved_point(shape, box, pose, (cx, cy))
        angle -= pose.angle_deg  # render turned the head counter-clockwise by angle_deg
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / geometry.side)
    m[0, 2] += (size - 1) / 2 - cx  # the crop's centre in pixel-index coordinates (u = 0)
    m[1, 2] += (size - 1) / 2 - cy
    return m


def crop_scale(m: np.ndarray) -> float:
    return float(math.sqrt(abs(np.linalg.det(m[:, :2]))))


def cut(frame: np.ndarray, m: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The crop [3, size, size] float32 BGR 0..1 of a uint8 BGR frame."""
    x0, y0, x1, y1 = crop_roi(m, frame.shape, size, pad=3)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the mouth crop lies outside the frame")
    region = frame[y0:y1, x0:x1]
    s = crop_scale(m)
    if s < 0.75:  # fewer crop pixels than frame pixels: low-pass first (warpAffine does not area-average)
        region = cv2.GaussianBlur(region, (0, 0), DOWNSCALE_BLUR / s)
    crop = cv2.warpAffine(region, _shifted(m, x0, y0), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)


def paste(frame: np.ndarray, crop: np.ndarray, warped: np.ndarray, m: np.ndarray) -> np.ndarray:
    """`frame` (uint8 BGR, changed in place and returned) with the warped crop mapped back (module docstring):
    frame x (1 - R) + (change x (1 - R) + warped x R), R the replace weight, composed in the crop and mapped back
    as one 4-channel image (bilinear)."""
    size = crop.shape[-1]
    crop = np.asarray(crop, np.float32)
    change = np.asarray(warped, np.float32) - crop  # [3, S, S]
    replace = np.minimum(np.abs(change).max(axis=0) * (1 / REPLACE_CHANGE), 1.0)
    replace = cv2.GaussianBlur(replace, (0, 0), REPLACE_BLUR)
    x0, y0, x1, y1 = crop_roi(m, frame.shape, size, pad=1)
    if x1 <= x0 or y1 <= y0:
        return frame
    add = (change + replace * crop) * 255.0  # change x (1 - R) + warped x R = change + R x crop
    stack = cv2.merge([add[0], add[1], add[2], replace])  # [S, S, 4]; outside the crop it maps to 0: no change
    mapped = cv2.warpAffine(stack, _shifted(m, x0, y0), (x1 - x0, y1 - y0),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)
    region = frame[y0:y1, x0:x1].astype(np.float32)
    region *= 1.0 - mapped[..., 3:]
    region += mapped[..., :3]
    frame[y0:y1, x0:x1] = cv2.convertScaleAbs(np.maximum(region, 0, out=region))  # rounded, saturated to 0..255
    return frame


def crop_roi(m: np.ndarray, shape: tuple[int, ...], size: int, pad: int) -> tuple[int, int, int, int]:
    """The frame rectangle (x0, y0, x1, y1) under the crop, `pad` pixels wider, clipped to the frame."""
    inv = cv2.invertAffineTransform(m)
    corners = inv @ np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1],
                              [size - 0.5, size - 0.5, 1]], np.float64).T
    x0, y0 = np.floor(corners.min(axis=1)).astype(int) - pad
    x1, y1 = np.ceil(corners.max(axis=1)).astype(int) + pad + 1
    h, w = shape[:2]
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def _shifted(m: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """The same map for a region whose pixel (0, 0) is frame pixel (x0, y0)."""
    out = m.copy()
    out[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    return out
