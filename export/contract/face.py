"""The face detector's contract: MediaPipe BlazeFace (short range) as the `face_detector` stage sees it.

Torch-free: the toolchain bakes these anchors into the stage graph (export/toolchain/face.py), the
orchestrator (ensemble/face.py) reads the graph's decoded outputs with the same constants.

The graph sees one square RGB window of SIZE x SIZE pixels and answers, for each of ANCHORS anchors, a
score in [0, 1], a box (x0, y0, x1, y1) and KEYPOINTS (x, y) points, all in the window's normalised
coordinates (0..1, x to the right, y down; a box may reach past the window's edges).
"""
from __future__ import annotations

import numpy as np

SIZE = 128  # the short-range model's input side, pixels
# MediaPipe's SSD anchors for it (face_detection_short_range.pbtxt): strides 8 and 16 on a 128 input give 16x16
# and 8x8 cells, with 2 and 6 anchors per cell (the stride-16 layers share one grid), unit size (fixed_anchor_size)
ANCHOR_GRIDS = ((16, 2), (8, 6))  # (cells per row, anchors per cell)
ANCHORS = sum(cells * cells * per_cell for cells, per_cell in ANCHOR_GRIDS)  # 896
# The six keypoints in the order the model answers them. "right"/"left" are the person's own: for a face that
# looks at the camera the right eye is on the image's left.
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
BOX_DIMS = 4  # x0, y0, x1, y1
KEYPOINT_DIMS = 2 * len(KEYPOINTS)  # x0, y0, x1, y1, ... in KEYPOINTS order


def anchor_centres() -> np.ndarray:
    """[ANCHORS, 2] float32 anchor centres (x, y), normalised, in the model's output order (grid by grid, row by
    row, cell by cell, anchor by anchor)."""
    centres = []
    for cells, per_cell in ANCHOR_GRIDS:
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 1, 2)  # [cells^2, 1, 2]
        centres.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
    out = np.concatenate(centres).astype(np.float32)
    assert out.shape == (ANCHORS, 2), out.shape
    return out
