"""ensemble/av_sync.py measures, and the whole chain measured from its output frames against the thresholds:
r(mouth opening, 40 ms audio RMS) >= 0.5 per reply, mouth closed in >= 90 % of the frames of pauses, no seam."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lipsync_ref import ASTRONAUT_BOX

from ensemble import motion
from ensemble import mouth as M
from ensemble.visemes import VisemeTrack
from export.contract import media
from loadtests import av_sync


def test_frame_rms_is_per_40ms():
    sr = media.OUTPUT_SAMPLE_RATE
    t = np.arange(int(0.1 * sr)) / sr
    audio = np.where(t < 0.04, 0.5 * np.sin(2 * np.pi * 220 * t), 0.0)  # one loud frame, then silence
    rms = av_sync.frame_rms(audio)
    assert len(rms) == media.video_frames_for_samples(audio.size) == 3
    assert abs(rms[0] - 0.5 / np.sqrt(2)) < 0.01 and rms[1] == rms[2] == 0


def test_pearson_lag_and_closed_share():
    x = np.sin(np.linspace(0, 12, 200))
    assert av_sync.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert av_sync.pearson(x, -x) == pytest.approx(-1.0)
    lag, r = av_sync.best_lag(x[2:], x[:-2])  # opening[f] = rms[f + 2]: the mouth leads the audio by 2 frames
    assert lag == 2 and r == pytest.approx(1.0)
    rms = np.array([1, 1, 0, 1, 0, 0, 0, 1], float)
    opening = np.array([0.2, 0.2, 0.2, 0.2, 0.0, 0.0, 0.3, 0.1])
    assert av_sync.closed_share(opening, rms) == (0.5, 4)  # frames 2, 4, 5, 6 silent; 4, 5 closed
    assert av_sync.closed_share(opening, rms, min_run=3) == (2 / 3, 3)  # the pause 4..6 only


def render(reply, astronaut_bgr, warp, geometry=M.ASTRONAUT, head_motion=True):
    """The chain as the orchestrator runs it; (openings, rms, seam checks, visemes)."""
    track, timeline = VisemeTrack(), motion.Timeline()
    rows = []
    for piece in reply.pieces:
        timeline.add(piece[0][1], "happy")  # a nod at each piece: the crop must follow the head
        rows.append(track.push(piece))
    rows.append(track.finish(reply.audio.size / media.OUTPUT_SAMPLE_RATE))
    visemes = np.concatenate(rows)
    meter = av_sync.MouthMeter(M.cut(astronaut_bgr, M.crop_matrix(geometry)), geometry.row())
    openings, seams = [], []
    for start in range(0, len(visemes), 16):
        idx = range(start, min(len(visemes), start + 16))
        poses = [timeline.pose(i / media.VIDEO_FPS) if head_motion else motion.Pose() for i in idx]
        frames = [motion.render(astronaut_bgr, ASTRONAUT_BOX, p) for p in poses]
        maps = [M.crop_matrix(geometry, astronaut_bgr.shape, ASTRONAUT_BOX, p) for p in poses]
        crops = np.stack([M.cut(f, m) for f, m in zip(frames, maps)])
        with torch.no_grad():
            out = warp(torch.from_numpy(crops), torch.from_numpy(visemes[start:start + len(idx)]),
                       torch.from_numpy(np.repeat(geometry.row()[None], len(idx), 0))).numpy()
        for f, c, w, m in zip(frames, crops, out, maps):
            pasted = M.paste(f.copy(), c, w, m)
            openings.append(meter.opening(M.cut(pasted, m)))  # measured from the output frame's pixels
            seams.append(av_sync.seam_check(pasted, f, m, c.shape[-1], inset=0.05))
    return np.array(openings), av_sync.frame_rms(reply.audio), seams, visemes


@pytest.fixture(scope="module")
def rendered(reply, astronaut_bgr, warp):
    return render(reply, astronaut_bgr, warp)


def test_mouth_opening_follows_the_voice(rendered):
    openings, rms, _, _ = rendered
    assert len(openings) == len(rms)
    r = av_sync.pearson(openings, rms)
    assert r >= 0.5, r
    lag, _ = av_sync.best_lag(openings, rms)
    assert abs(lag) <= 1


def test_mouth_is_closed_in_pauses(rendered):
    openings, rms, _, _ = rendered
    share, n = av_sync.closed_share(openings, rms, min_run=3)
    assert n >= 15 and share >= 0.9, (share, n)


def test_no_seam(rendered):
    _, _, seams, _ = rendered
    bad = [s for s in seams if not s.ok]
    assert not bad, bad[:3]


def test_meter_rest_is_zero_and_open_is_not(astronaut_bgr, warp):
    g = M.ASTRONAUT
    rest = M.cut(astronaut_bgr, M.crop_matrix(g))
    meter = av_sync.MouthMeter(rest, g.row())
    with torch.no_grad():
        aa = warp(torch.from_numpy(rest[None]), torch.tensor([[1.0, 0, 0, 0, 0.2]]),
                  torch.from_numpy(g.row()[None]))[0].numpy()
    assert meter.opening(rest) == 0.0
    assert meter.opening(aa) > 0.1
