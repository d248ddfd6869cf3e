"""ensemble/mouth.py: mouth geometry, crop and paste."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from lipsync_ref import ASTRONAUT_BOX, ASTRONAUT_KEYPOINTS

from ensemble import motion
from ensemble import mouth as M
from export.contract.mouth import CROP_SIZE
from loadtests.av_sync import seam_check

C = (CROP_SIZE - 1) / 2  # the crop's centre in pixel-index coordinates


def test_crop_matrix_puts_the_lip_line_at_the_centre_level(astronaut_bgr):
    g = M.ASTRONAUT
    m = M.crop_matrix(g)
    np.testing.assert_allclose(m @ [*g.center, 1.0], [C, C], atol=1e-9)
    assert math.isclose(math.sqrt(np.linalg.det(m[:, :2])), CROP_SIZE / g.side)
    # the corners, tilted by angle_deg in the image, are level in the crop
    a, t = g.half_width, math.radians(g.angle_deg)
    left, right = (m @ [g.center[0] + s * a * math.cos(t), g.center[1] + s * a * math.sin(t), 1.0] for s in (-1, 1))
    assert abs(left[1] - right[1]) < 1e-6


def test_crop_matrix_follows_the_head(astronaut_bgr):
    g = M.ASTRONAUT
    pose = motion.Pose(dx=0.03, dy=-0.02, angle_deg=4.0)
    m = M.crop_matrix(g, astronaut_bgr.shape, ASTRONAUT_BOX, pose)
    moved = motion.moved_point(astronaut_bgr.shape, ASTRONAUT_BOX, pose, g.center)
    np.testing.assert_allclose(m @ [*moved, 1.0], [C, C], atol=1e-6)
    # the moved frame's crop is the still crop, turned with the head (up to resampling)
    still = M.cut(astronaut_bgr, M.crop_matrix(g))
    turned = M.cut(motion.render(astronaut_bgr, ASTRONAUT_BOX, pose), m)
    inner = slice(20, -20)
    assert np.abs(turned - still)[:, inner, inner].mean() < 0.02
    with pytest.raises(ValueError):
        M.crop_matrix(g, pose=pose)


def test_paste_of_an_unchanged_crop_changes_nothing(astronaut_bgr):
    for pose in (motion.Pose(), motion.Pose(dx=0.01, angle_deg=-3.0)):
        frame = motion.render(astronaut_bgr, ASTRONAUT_BOX, pose)
        m = M.crop_matrix(M.ASTRONAUT, astronaut_bgr.shape, ASTRONAUT_BOX, pose)
        crop = M.cut(frame, m)
        assert np.array_equal(M.paste(frame.copy(), crop, crop, m), frame)


def test_paste_changes_only_the_mouth_and_leaves_no_seam(astronaut_bgr, warp):
    import torch

    pose = motion.Pose(dx=0.01, dy=0.01, angle_deg=2.5)
    frame = motion.render(astronaut_bgr, ASTRONAUT_BOX, pose)
    m = M.crop_matrix(M.ASTRONAUT, astronaut_bgr.shape, ASTRONAUT_BOX, pose)
    crop = M.cut(frame, m)
    with torch.no_grad():
        warped = warp(torch.from_numpy(crop[None]), torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.3]]),
                      torch.from_numpy(M.ASTRONAUT.row()[None]))[0].numpy()
    out = M.paste(frame.copy(), crop, warped, m)
    changed = np.abs(out.astype(int) - frame).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    inv = cv2.invertAffineTransform(m)
    corners = inv @ np.array([[-0.5, -0.5, 1], [CROP_SIZE - 0.5, CROP_SIZE - 0.5, 1]]).T
    assert changed.sum() > 300
    assert xs.min() >= corners[0].min() - 2 and xs.max() <= corners[0].max() + 2
    for inset in (0.0, 0.1):  # the crop's edge, and a ring inside it where the warp's taper still holds
        check = seam_check(out, frame, m, CROP_SIZE, inset=inset)
        assert check.ok, check


def test_geometry_from_keypoints_and_the_measured_rest_opening(astronaut_bgr):
    g = M.geometry_from_keypoints(ASTRONAUT_KEYPOINTS)
    hand = M.ASTRONAUT
    assert abs(g.center[0] - hand.center[0]) < 2 and abs(g.center[1] - hand.center[1]) < 2
    assert abs(g.half_width / hand.half_width - 1) < 0.15
    assert abs(g.side / hand.side - 1) < 0.02
    assert g.gap_up == g.gap_down == 0
    r = M.refine_from_image(astronaut_bgr, g)
    assert abs(r.center[1] - hand.center[1]) < 1.5
    assert 1.5 < r.gap_up + r.gap_down < 2 * (hand.gap_up + hand.gap_down)  # her teeth found (5 px vs 8.5 by eye)
    assert 0.05 < r.smile < 0.5 and abs(r.angle_deg - hand.angle_deg) < 3


def test_a_closed_mouth_has_no_rest_opening(astronaut_bgr, warp):
    import torch

    g = M.ASTRONAUT
    m = M.crop_matrix(g)
    crop = M.cut(astronaut_bgr, m)
    with torch.no_grad():
        shut = warp(torch.from_numpy(crop[None]), torch.tensor([[0.0, 0, 1, 0, 0]]),
                    torch.from_numpy(g.row()[None]))[0].numpy()
    closed = M.paste(astronaut_bgr.copy(), crop, shut, m)
    r = M.refine_from_image(closed, M.geometry_from_keypoints(ASTRONAUT_KEYPOINTS))
    assert r.gap_up == r.gap_down == 0


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError):
        M.MouthGeometry(center=(0, 0), angle_deg=0, half_width=0)
    with pytest.raises(ValueError):
        M.geometry_from_keypoints(np.zeros((6, 2), np.float32))
