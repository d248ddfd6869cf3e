"""The lip-sync families on the orchestrator's side: which video frame slots the audio has made due, what the
stage gets for them, and how its output becomes frames (export/contract/spec.py LIPSYNC_FAMILIES has the stages).

  warp     the `lipsync` stage: mouth crops + visemes from the speech's phoneme timings (ensemble/visemes.py);
           a slot is due once the audio reaches its time; the warp's change is pasted back (ensemble/mouth.py)
  wav2lip  Wav2Lip: a 16-frame mel window per slot from the audio itself (ensemble/features.py), the avatar's
           96 x 96 face crop, the generated face composited back

On GPU hosts (the `gpu` variant's talking_head parameter frame_stage) the warp family's frames are made whole by the
`lipsync_frames` stage (ComposedWarpFrames: avatar id, pose and visemes out, JPEGs back; ensemble/frames_torch.py).
Its slots follow the speech's timing: due once the acoustic model has timed their audio, before the vocoder makes it.

Slots are (frame index on the 25 fps clock, what drives it). `inputs` and `frames` do pixel work: the pipeline
runs them on its frame workers, off the event loop.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ensemble import avatar as avatars
from ensemble import mouth
from ensemble.features import LipsyncMelStream, StreamingResampler
from ensemble.motion import Pose
from ensemble.visemes import VisemeTrack
from export.contract import media
from export.contract.spec import LIPSYNC, LIPSYNC_FRAMES, WAV2LIP, ModelSpec

Slot = tuple[int, object]


class FrameSource(Protocol):
    stage: ModelSpec
    composed: bool  # True: the stage returns whole frames as JPEG (`request`); False: `inputs` and `frames`
    # True: its slots need only the speech's timing, so the turn advances it (`advance`) as soon as the acoustic
    # model has timed an utterance, before the vocoder; False: the audio itself drives it (`push`)
    follows_timing: bool

    def push(self, audio: np.ndarray) -> list[Slot]: ...

    def advance(self, samples: int) -> list[Slot]: ...

    def finish(self, total_samples: int) -> list[Slot]: ...

    def inputs(self, avatar: avatars.Avatar, images: list[np.ndarray], poses: list[Pose],
               slots: list[Slot]) -> tuple[dict[str, np.ndarray], object]: ...

    def frames(self, avatar: avatars.Avatar, images: list[np.ndarray], state: object,
               generated: np.ndarray) -> list[np.ndarray]: ...


class WarpFrames:
    """The warp family: a slot per 1/25 s of audio; its visemes are read from the track when it is made, the
    avatar's lips at rest (ensemble/mouth.py avatar_geometry, once per turn) go with every frame."""

    stage = LIPSYNC
    composed = False
    follows_timing = False  # its mouth crops are cut here, on the frame workers that the vocoder's audio shares

    def __init__(self, track: VisemeTrack):
        self.track = track
        self.samples = 0
        self.slots = 0
        self._geometry: tuple[str, mouth.MouthGeometry] | None = None  # (avatar id, its geometry)

    def geometry(self, avatar) -> mouth.MouthGeometry:
        if self._geometry is None or self._geometry[0] != avatar.id:
            self._geometry = (avatar.id, mouth.avatar_geometry(avatar.image, avatar.keypoints))
        return self._geometry[1]

    def _due(self, total: int) -> list[Slot]:
        n = media.video_frames_for_samples(total)
        due = [(i, None) for i in range(self.slots, n)]
        self.slots = max(self.slots, n)
        return due

    def push(self, audio: np.ndarray) -> list[Slot]:
        return self.advance(int(audio.size))

    def advance(self, samples: int) -> list[Slot]:
        self.samples += samples
        return self._due(self.samples - media.AUDIO_SAMPLES_PER_VIDEO_FRAME + 1)  # slots whose audio has begun

    def finish(self, total_samples: int) -> list[Slot]:
        return self._due(total_samples)

    def inputs(self, avatar, images, poses, slots):
        g = self.geometry(avatar)
        maps = [mouth.crop_matrix(g, avatar.image.shape, avatar.box, pose) for pose in poses]
        crops = np.stack([mouth.cut(image, m) for image, m in zip(images, maps)])
        visemes = self.track.frames([i for i, _ in slots], media.VIDEO_FPS)
        rows = np.repeat(g.row()[None], len(slots), axis=0)
        return {"faces": crops, "visemes": visemes, "mouth": rows}, (crops, maps)

    def frames(self, avatar, images, state, generated):
        crops, maps = state
        return [mouth.paste(image, crop, warped, m) for image, crop, warped, m in zip(images, crops, generated, maps)]


class ComposedWarpFrames(WarpFrames):
    """The warp family with its frames made whole by the `lipsync_frames` stage (gpu variant,
    ensemble/frames_torch.py): the orchestrator sends the avatar id, pose and visemes of each slot, JPEGs come back."""

    stage = LIPSYNC_FRAMES
    composed = True
    # the frames are made beside the lip-sync on another model: a turn's first frames are asked for while its
    # first audio is vocoded, not after (BENCHMARKS.md, "GPU: one H200")
    follows_timing = True

    def request(self, avatar: avatars.Avatar, poses: list[Pose], slots: list[Slot], quality: int) -> dict[str, np.ndarray]:
        n = len(slots)
        return {"avatar_id": np.full((n, 1), avatar.id.encode(), dtype=object),
                "pose": np.array([[p.dx, p.dy, p.angle_deg, p.brow] for p in poses], np.float32).reshape(n, 4),
                "visemes": self.track.frames([i for i, _ in slots], media.VIDEO_FPS),
                "quality": np.full((n, 1), quality, np.int32)}


class Wav2LipFrames:
    """The wav2lip family: mel windows of the 16 kHz audio, one per slot, as Wav2Lip was trained."""

    stage = WAV2LIP
    composed = False
    follows_timing = False  # its mel windows are the audio's

    def __init__(self):
        self.resampler = StreamingResampler(media.OUTPUT_SAMPLE_RATE, media.LIPSYNC_MEL.sample_rate)
        self.mels = LipsyncMelStream()
        self.slots = 0

    def _number(self, windows: list[np.ndarray]) -> list[Slot]:
        out = [(self.slots + i, w) for i, w in enumerate(windows)]
        self.slots += len(windows)
        return out

    def push(self, audio: np.ndarray) -> list[Slot]:
        return self._number(self.mels.push(self.resampler.push(audio)))

    def advance(self, samples: int) -> list[Slot]:
        raise TypeError("Wav2Lip's frames follow the audio itself, not its timing")

    def finish(self, total_samples: int) -> list[Slot]:  # the resampler's tail may complete windows too
        return self._number(self.mels.push(self.resampler.finish())
                            + self.mels.finish(media.video_frames_for_samples(total_samples)))

    def inputs(self, avatar, images, poses, slots):
        mel = np.stack([w for _, w in slots])[:, None].astype(np.float32)  # [n, 1, 80, 16]
        return {"mel": mel, "faces": np.stack([avatars.wav2lip_faces(avatar, image) for image in images])}, None

    def frames(self, avatar, images, state, generated):
        return [avatars.composite(avatar, face, image) for image, face in zip(images, generated)]


def frame_source(family: str, track: VisemeTrack, composed: bool = False) -> FrameSource:
    """The family's frame source; composed: the warp family's frames are made by its `lipsync_frames` stage (the
    wav2lip family has none: its frames are composed here either way)."""
    if family == "warp":
        return ComposedWarpFrames(track) if composed else WarpFrames(track)
    if family == "wav2lip":
        return Wav2LipFrames()
    raise ValueError(f"lip-sync family {family!r} is not one of warp, wav2lip")
