"""The video clock: which video frames the emitted audio has made due, and their timestamps."""
from __future__ import annotations

from fractions import Fraction

from export import contract as C


class FrameClock:
    """Counts output audio samples (contract.OUTPUT_SAMPLE_RATE) and maps them to video frames.

    Frame i has pts i / VIDEO_FPS seconds. After n samples, the frames due are those with
    pts < n / sample_rate, i.e. contract.video_frames_for_samples(n): the utterance's video has
    exactly `frames_due` frames once all its audio has been counted (pass that number to
    LipsyncMelStream.finish so both sides agree).
    """

    def __init__(self, sample_rate: int = C.OUTPUT_SAMPLE_RATE, fps: int = C.VIDEO_FPS) -> None:
        self.sample_rate = sample_rate  # Hz of the counted audio
        self.fps = fps  # video frames per second
        self._samples = 0

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def frames_due(self) -> int:
        return self.frames_for_samples(self._samples)

    @property
    def seconds(self) -> float:
        return self._samples / self.sample_rate

    def frames_for_samples(self, n_samples: int) -> int:
        if self.fps == C.VIDEO_FPS:
            return C.video_frames_for_samples(n_samples, self.sample_rate)
        return -(-n_samples * self.fps // self.sample_rate)

    def advance(self, n_samples: int) -> range:
        """Count n_samples more audio; return the indices of the video frames that became due."""
        if n_samples < 0:
            raise ValueError("n_samples must be >= 0")
        before = self.frames_due
        self._samples += int(n_samples)
        return range(before, self.frames_due)

    def pts(self, frame_index: int) -> float:
        """Presentation time of a frame, seconds."""
        return float(Fraction(frame_index, self.fps))

    def first_sample(self, frame_index: int) -> int:
        """The audio sample (rounded up) at which a frame is presented."""
        return -(-frame_index * self.sample_rate // self.fps)

    def frame_count_ok(self, n_frames: int, n_samples: int | None = None) -> bool:
        """Whether n_frames is the audio duration x fps within one frame."""
        n = self._samples if n_samples is None else n_samples
        return abs(Fraction(n_frames) - Fraction(n * self.fps, self.sample_rate)) <= 1
