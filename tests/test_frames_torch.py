"""The warp family's frames composed on a torch device (ensemble/frames_torch.py, the gpu variant's lipsync_frames
model) against the orchestrator's OpenCV path; here on the CPU, on CUDA where there is one (`-m gpu`)."""
import asyncio
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from ensemble import motion
from ensemble.avatar import AvatarStore
from ensemble.frames_torch import FrameComposer, FramesStage
from ensemble.options import Limits
from ensemble.service import Service
from export.contract import events as ev
from export.contract import media
from export.contract.spec import LIPSYNC_FRAMES
from export.runtime.batching import BatchRunner
from export.toolchain.models import mouth_warp
from loadtests.frames_bench import opencv_frame

POSES = [motion.Pose(), motion.Pose(0.01, -0.02, 3.0, 0.05), motion.Pose(-0.03, 0.01, -5.0, -0.04),
         motion.idle_pose(1.3) + motion.gesture_pose("surprised", 0.3)]
VISEMES = np.array([[0, 0, 0, 0, 0], [0.8, 0.2, 0, 0, 0.5], [0.5, -0.5, 0.2, 0, 0.3], [1, 1, 0, 0, 1]], np.float32)


@pytest.fixture(scope="module")
def warp():
    return mouth_warp.LipsyncGraph(mouth_warp.build()).eval()


def check_composer(device, avatar, warp):
    composer = FrameComposer(warp.to(device), device)
    frames = composer.compose(avatar, POSES, VISEMES).cpu().numpy().transpose(0, 2, 3, 1)
    assert frames.dtype == np.uint8 and frames.shape == (len(POSES), *avatar.image.shape)
    for frame, pose, visemes in zip(frames, POSES, VISEMES):
        ref = opencv_frame(avatar, warp.cpu(), pose, visemes)
        d = np.abs(frame.astype(int) - ref)
        # interpolation only: the head is sampled once here (OpenCV: twice), borders reflect about the edge pixel
        assert d.mean() < 0.3 and np.percentile(d, 99.9) <= 8, (pose, d.mean(), np.percentile(d, 99.9))
    np.testing.assert_array_equal(frames[0], avatar.image)  # no motion, mouth at rest: the avatar itself
    ys, xs = slice(avatar.box[0], avatar.box[1]), slice(avatar.box[2], avatar.box[3])
    assert np.abs(frames[1][ys, xs].astype(int) - avatar.image[ys, xs]).mean() > 1.0  # the head moved, mouth open
    jpegs = composer.jpegs(composer.compose(avatar, POSES[:2], VISEMES[:2]), quality=90)
    decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    for got, want in zip(decoded, frames[:2]):
        assert np.abs(got.astype(int) - want).mean() < 3.0  # the JPEG is the frame, channels in BGR order
    return composer


def test_composed_frames_match_the_orchestrators(demo_avatar, warp):
    check_composer("cpu", demo_avatar, warp)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_composed_frames_on_cuda_match_the_orchestrators(demo_avatar, warp):
    check_composer("cuda", demo_avatar, warp)


def test_a_batch_of_avatars_and_qualities_is_split_right_and_one_bad_row_fails_alone(demo_avatar, warp):
    other = replace(demo_avatar, id="f" * 16, image=np.ascontiguousarray(demo_avatar.image[:, ::-1]))  # mirrored
    known = {a.id: a for a in (demo_avatar, other)}

    def load(avatar_id):
        if avatar_id not in known:
            raise ValueError(f"unknown avatar id {avatar_id!r}")
        return known[avatar_id]

    composer = FrameComposer(warp)
    runner = BatchRunner(LIPSYNC_FRAMES, FramesStage(composer, load))

    def request(avatar_id, pose, visemes, quality):
        return {"avatar_id": np.array([[avatar_id.encode()]], dtype=object),
                "pose": np.array([[pose.dx, pose.dy, pose.angle_deg, pose.brow]], np.float32),
                "visemes": visemes[None].astype(np.float32), "quality": np.array([[quality]], np.int32)}

    rows = [(demo_avatar.id, POSES[1], VISEMES[1], 90), (other.id, POSES[2], VISEMES[2], 90),
            (demo_avatar.id, POSES[3], VISEMES[3], 40), ("0" * 16, POSES[1], VISEMES[1], 90),
            (other.id, POSES[1], VISEMES[1], 0)]
    results = runner.run([request(*r) for r in rows])
    assert "unknown avatar id" in str(results[3]) and "0 is not a JPEG quality in 1..100" in str(results[4])
    for (avatar_id, pose, visemes, quality), result in zip(rows[:3], results[:3]):
        alone = composer.jpegs(composer.compose(known[avatar_id], [pose], visemes[None]), quality)[0]
        assert result["frame"].shape == (1, 1)
        got, want = (cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR).astype(int)
                     for j in (bytes(result["frame"][0, 0]), alone))
        assert np.abs(got - want).mean() < 0.1  # its own avatar, pose and visemes (batched floats may differ a bit)
    assert len(bytes(results[2]["frame"][0, 0])) < len(bytes(results[0]["frame"][0, 0]))  # quality 40: smaller


def test_a_turn_with_composed_frames_streams_the_same_video(exported_repository, tmp_path, demo_avatar, warp,
                                                            stage_runners):
    """The orchestrator with frame_stage=lipsync_frames sends poses and visemes and forwards the stage's JPEGs:
    the same frames, at the same indices, as when it composes them itself."""
    load = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path, limits=Limits(max_sessions=1))
    load.avatars.save(demo_avatar)
    composed = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path,
                            limits=Limits(max_sessions=1), config=replace(load.config, frame_stage=LIPSYNC_FRAMES.name))
    runners = {**stage_runners, LIPSYNC_FRAMES.name: BatchRunner(LIPSYNC_FRAMES, FramesStage(FrameComposer(warp),
                                                                                              load.avatars.load))}
    calls = []

    async def infer(model, inputs, timeout_s=None):
        calls.append(model)
        result = runners[model].run([inputs])[0]
        if isinstance(result, Exception):
            raise result
        return result

    inputs = {"text": np.array([b"Good morning."], dtype=object),
              "avatar_id": np.array([demo_avatar.id.encode()], dtype=object),
              "options": np.array([b'{"action": "say", "seed": 3}'], dtype=object)}
    videos, stages, turns = [], [], []
    for service in (load, composed):
        events = []
        calls.clear()
        turns.append(asyncio.run(service.handle(inputs, infer, events.append)))
        videos.append({e.data["index"]: e.frame for e in events if e.type == ev.VIDEO})
        stages.append({c for c in calls if c.startswith("lipsync")})
    assert stages == [{"lipsync"}, {"lipsync_frames"}]
    mine, theirs = videos
    both = set(mine) & set(theirs)
    for video, turn in zip(videos, turns):  # on a loaded machine either turn may drop a frame as late, nothing else
        assert len((set(mine) | set(theirs)) - set(video)) <= turn.frames_late_dropped, (sorted(mine), sorted(theirs))
    assert len(both) > 5
    for i in sorted(both):
        a, b = (cv2.imdecode(np.frombuffer(v[i], np.uint8), cv2.IMREAD_COLOR).astype(int) for v in (mine, theirs))
        assert np.abs(a - b).mean() < 1.0, i


def _composed_turn(exported_repository, avatar_dir, avatar, warp, stage_runners, text: bytes, *,
                   stage_load=None, vocoder_s: float = 0.0) -> list:
    """The events of one `say` turn whose frames lipsync_frames makes; the stage finds avatars with `stage_load`
    (default: the orchestrator's own store), the vocoder answers after `vocoder_s`."""
    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=avatar_dir, limits=Limits(max_sessions=1))
    svc.config = replace(svc.config, frame_stage=LIPSYNC_FRAMES.name)
    runners = {**stage_runners, LIPSYNC_FRAMES.name: BatchRunner(LIPSYNC_FRAMES, FramesStage(
        FrameComposer(warp), stage_load or svc.avatars.load))}

    async def infer(model, inputs, timeout_s=None):
        if model == "vocoder":
            await asyncio.sleep(vocoder_s)
        result = runners[model].run([inputs])[0]
        if isinstance(result, Exception):
            raise result
        return result

    events = []
    inputs = {"text": np.array([text], dtype=object), "avatar_id": np.array([avatar.id.encode()], dtype=object),
              "options": np.array([b'{"action": "say", "seed": 3}'], dtype=object)}
    asyncio.run(svc.handle(inputs, infer, events.append))
    return events


def test_composed_frames_follow_the_speech_timing_not_the_vocoder(exported_repository, tmp_path, demo_avatar, warp,
                                                                  stage_runners):
    """With frames made by lipsync_frames, an utterance's frame slots are due once the acoustic model has timed it:
    a slow vocoder no longer holds the first frame back (it leaves before the first audio), and every slot the
    audio has is still made, once, with audio and video of the same length."""
    AvatarStore(tmp_path).save(demo_avatar)
    events = _composed_turn(exported_repository, tmp_path, demo_avatar, warp, stage_runners,
                            b"Good morning. How are you?", vocoder_s=0.2)  # a busy vocoder
    kinds = [e.type for e in events if e.type in (ev.AUDIO, ev.VIDEO)]
    assert kinds.index(ev.VIDEO) < kinds.index(ev.AUDIO)
    done = next(e for e in events if e.type == ev.DONE).data
    indices = [e.data["index"] for e in events if e.type == ev.VIDEO]
    assert sorted(indices) == list(range(media.video_frames_for_samples(done["audio_samples"])))
    assert done["frames_dropped"] == 0


def test_an_avatar_evicted_mid_turn_is_written_back_and_its_frames_made(exported_repository, tmp_path, demo_avatar,
                                                                        warp, stage_runners):
    """lipsync_frames reads avatars from the shared store in its own process. When the registry has evicted the
    turn's avatar (file gone, not in that process's memory), the orchestrator, which holds the turn's avatar, writes
    it back and asks again: the turn streams all its frames instead of failing."""
    AvatarStore(tmp_path).save(demo_avatar)
    stage_store = AvatarStore(tmp_path)  # the frame stage's process: nothing in memory
    path = tmp_path / f"{demo_avatar.id}.npz"
    evicted = []

    def load(avatar_id):  # the registry evicts the file as the turn's first frames are asked for
        if not evicted:
            evicted.append(path.read_bytes())
            path.unlink()
        return stage_store.load(avatar_id)

    events = _composed_turn(exported_repository, tmp_path, demo_avatar, warp, stage_runners, b"Good morning.",
                            stage_load=load)
    done = next(e for e in events if e.type == ev.DONE).data
    # every slot is made, or (on a loaded machine) dropped as late: none is lost to the eviction
    slots = media.video_frames_for_samples(done["audio_samples"])
    assert done["frames_dropped"] == done["frames_dropped_late"] <= slots // 3, done
    assert done["video_frames"] + done["frames_dropped"] == slots > 5
    assert path.is_file()


def test_frames_are_composed_at_most_max_rows_at_a_time_and_come_out_the_same(demo_avatar, warp, monkeypatch):
    whole = FrameComposer(warp, "cpu").compose_jpegs(demo_avatar, POSES[:3], VISEMES[:3], 90)
    chunked = FrameComposer(warp, "cpu", max_rows=2)
    sizes = []
    compose = chunked.compose
    monkeypatch.setattr(chunked, "compose", lambda a, poses, v: sizes.append(len(poses)) or compose(a, poses, v))
    assert chunked.compose_jpegs(demo_avatar, POSES[:3], VISEMES[:3], 90) == whole
    assert sizes == [2, 1]
