"""The mouth crop the `lipsync` warp sees, cut from a (head-moved) avatar frame and pasted back without a seam.

The crop is square, centred on the avatar's mouth keypoint where the head pose has moved it, turned with the
head, media.MOUTH_CROP_FACE face-box widths a side, resampled to media.MOUTH_CROP pixels. Pasting adds the warp's
change (warped - crop) back at the frame's own resolution: the warp leaves the crop's border untouched, so the
change is zero there and the frame outside the mouth region stays exactly the avatar's, with no box or seam.
"""
from __future__ import annotations

import cv2
import numpy as np

from ensemble import motion
from ensemble.avatar import Avatar
from export.contract import media


def crop_matrix(avatar: Avatar, pose: motion.Pose) -> np.ndarray:
    """2 x 3 affine map from frame pixels to crop pixels for this pose."""
    y1, y2, x1, x2 = avatar.box
    mx, my = motion.moved_point(avatar.image.shape, avatar.box, pose, avatar.point("mouth_center"))
    scale = media.MOUTH_CROP / (media.MOUTH_CROP_FACE * (x2 - x1))
    m = cv2.getRotationMatrix2D((mx, my), pose.angle_deg, scale)  # about the mouth: turn with the head, scale
    m[0, 2] += media.MOUTH_CROP / 2 - mx
    m[1, 2] += media.MOUTH_CROP / 2 - my
    return m


def cut(frame: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The crop [3, S, S] float32 BGR 0..1."""
    s = media.MOUTH_CROP
    crop = cv2.warpAffine(frame, m, (s, s), flags=cv2.INTER_AREA if m[0, 0] < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop.transpose(2, 0, 1).astype(np.float32) / 255.0


def paste(frame: np.ndarray, crop: np.ndarray, warped: np.ndarray, m: np.ndarray) -> np.ndarray:
    """`frame` (uint8 BGR, changed in place and returned) with the warp's change mapped back onto it."""
    change = (np.asarray(warped, np.float32) - crop).transpose(1, 2, 0) * 255.0  # [S, S, 3]
    s = media.MOUTH_CROP
    corners = cv2.invertAffineTransform(m) @ np.array([[0, 0, 1], [s, 0, 1], [0, s, 1], [s, s, 1]], np.float64).T
    x0, y0 = np.floor(corners.min(axis=1)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=1)).astype(int)
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return frame
    shifted = m.copy()
    shifted[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)  # region pixel (0, 0) is frame pixel (x0, y0)
    back = cv2.warpAffine(change, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    region = frame[y0:y1, x0:x1].astype(np.float32) + back
    frame[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    return frame
