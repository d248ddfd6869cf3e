from __future__ import annotations

import numpy as np
import pytest

from ensemble.features import LipsyncMelStream, StreamingResampler
from ensemble.lipsync import FrameClock
from export import contract as C

SPF = C.AUDIO_SAMPLES_PER_VIDEO_FRAME  # 882


def test_frames_due_boundaries():
    clock = FrameClock()
    assert clock.frames_due == 0 and clock.advance(0) == range(0, 0)
    assert clock.advance(1) == range(0, 1)  # frame 0 (pts 0) is due with the first sample
    assert clock.advance(SPF - 1) == range(1, 1)  # 882 samples: still only frame 0
    assert clock.advance(1) == range(1, 2)  # sample 882 is at frame 1's pts
    assert clock.samples == SPF + 1
    clock.advance(C.OUTPUT_SAMPLE_RATE - SPF - 1)  # exactly 1 s
    assert clock.frames_due == C.VIDEO_FPS and clock.seconds == 1.0
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_advance_in_random_chunks_covers_every_frame_once():
    rng = np.random.default_rng(0)
    clock = FrameClock()
    seen = []
    for _ in range(300):
        seen += list(clock.advance(int(rng.integers(0, 3000))))
    assert seen == list(range(clock.frames_due))
    assert clock.frames_due == C.video_frames_for_samples(clock.samples)
    assert clock.frame_count_ok(len(seen))
    assert not clock.frame_count_ok(len(seen) + 2)


def test_pts_and_first_sample():
    clock = FrameClock()
    assert clock.pts(0) == 0.0 and clock.pts(25) == 1.0 and clock.pts(1) == pytest.approx(0.04)
    assert clock.first_sample(1) == SPF and clock.first_sample(3) == 3 * SPF
    for i in range(200):  # frame i becomes due exactly when its first sample is emitted
        assert clock.frames_for_samples(clock.first_sample(i)) == i
        assert clock.frames_for_samples(clock.first_sample(i) + 1) == i + 1


def test_other_fps():
    clock = FrameClock(sample_rate=16000, fps=30)
    assert clock.advance(16000) == range(0, 30)
    assert clock.pts(15) == 0.5


@pytest.mark.parametrize("seconds", [0.05, 0.3, 1.0, 2.37, 4.0])
def test_audio_and_video_frame_counts_agree(seconds):
    """22050 Hz TTS audio -> clock; resampled 16 kHz -> lipsync windows; counts agree exactly."""
    n = int(seconds * C.OUTPUT_SAMPLE_RATE)
    rng = np.random.default_rng(n)
    audio = (0.1 * rng.standard_normal(n)).astype(np.float32)
    clock, res, mel = FrameClock(), StreamingResampler(), LipsyncMelStream()
    windows, i = 0, 0
    while i < n:
        k = int(rng.integers(100, 5000))
        clock.advance(audio[i:i + k].size)
        windows += len(mel.push(res.push(audio[i:i + k])))
        i += k
    windows += len(mel.push(res.finish()))
    windows += len(mel.finish(clock.frames_due))
    assert windows == clock.frames_due
    assert clock.frame_count_ok(windows, n)
    # the 16 kHz count on its own is within one frame of the audio clock
    assert abs(C.video_frames_for_samples(res.samples_out, 16000) - clock.frames_due) <= 1
