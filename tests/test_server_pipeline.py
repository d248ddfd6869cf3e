"""Whole sessions through the real embedded tritonserver (CPU variant) and the client SDK."""
from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from rawgrpc import bytes_array, infer_input, raw_turn

from client import media
from deploy.admin import admin_headers
from export.contract import events as ev
from export.contract import media as C
from export.contract import spec
from export.contract.presets import get_preset

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def question16k(tmp_path_factory):
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is required (make test installs it)"
    wav = tmp_path_factory.mktemp("q") / "question.wav"
    subprocess.run([espeak, "-w", str(wav), "What can you do for me today?"], check=True)
    return media.read_audio(wav, rate=C.INPUT_SAMPLE_RATE)


@pytest.fixture(scope="module")
def spoken_turn(client, avatar, question16k):
    events = list(client.ask(avatar_id=avatar.id, audio=question16k))
    return events


def test_spoken_turn_streams_every_kind_of_event(spoken_turn):
    kinds = [e.type for e in spoken_turn]
    assert kinds[-1] == ev.DONE
    assert kinds[0] == ev.TRANSCRIPT
    assert kinds.count(ev.TEXT) > 1, "reply text must arrive incrementally"
    assert kinds.count(ev.AUDIO) > 1 and kinds.count(ev.VIDEO) > 1


def test_first_audio_arrives_before_the_last_token(spoken_turn):
    kinds = [e.type for e in spoken_turn]
    first_audio = kinds.index(ev.AUDIO)
    last_text = len(kinds) - 1 - kinds[::-1].index(ev.TEXT)
    assert first_audio < last_text
    # the client's own clock agrees with the order of arrival
    assert spoken_turn[first_audio].received_at < spoken_turn[last_text].received_at


def test_video_frames_match_audio_duration(spoken_turn):
    audio = [e for e in spoken_turn if e.type == ev.AUDIO]
    frames = [e for e in spoken_turn if e.type == ev.VIDEO]
    samples = sum(e.audio.size for e in audio)
    assert all(e.data["sample_rate"] == C.OUTPUT_SAMPLE_RATE for e in audio)
    expected = samples / C.OUTPUT_SAMPLE_RATE * C.VIDEO_FPS
    done = spoken_turn[-1].data
    # every slot of the 25 fps clock is either sent or counted as dropped (audio first, on a busy machine)
    assert abs(len(frames) + done["frames_dropped"] - expected) <= 1
    indices = [f.data["index"] for f in frames]
    assert indices[0] == 0 and indices == sorted(set(indices))
    assert all(f.data["pts"] == f.data["index"] / C.VIDEO_FPS for f in frames)
    assert frames[0].frame[:2] == b"\xff\xd8"  # JPEG
    assert done["video_frames"] == len(frames) and done["audio_samples"] == samples


def test_answer_mp4_has_one_h264_and_one_aac_stream(client, avatar, tmp_path):
    result = client.turn(avatar_id=avatar.id, text="Tell me something nice.")
    path = tmp_path / "answer.mp4"
    media.write_mp4(path, result.frames, result.audio, result.sample_rate)
    with av.open(str(path)) as container:
        video = [s for s in container.streams if s.type == "video"]
        audio = [s for s in container.streams if s.type == "audio"]
        assert [s.codec_context.name for s in video] == ["h264"]
        assert [s.codec_context.name for s in audio] == ["aac"]
        assert video[0].average_rate == C.VIDEO_FPS
        n = sum(1 for _ in container.decode(video=0))
    # a constant 25 fps to the end of the audio: a slot the server dropped repeats the frame before it
    assert n == C.video_frames_for_samples(result.audio.size) and n >= len(result.frames)


def test_every_stage_model_executed(server, spoken_turn):
    with grpcclient.InferenceServerClient(server.options.grpc_url) as c:
        stats = c.get_inference_statistics(headers=admin_headers(server.options.admin_key), as_json=True)["model_stats"]
    executed = {m["name"]: int(m.get("execution_count", 0)) for m in stats}
    for stage in spec.pipeline_stages(get_preset("tiny")):
        assert executed.get(stage.name, 0) > 0, f"{stage.name} never executed"


def test_two_concurrent_sessions_complete(client, avatar):
    texts = ["Hello, who are you?", "What is the weather like?"]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda t: client.turn(avatar_id=avatar.id, text=t), texts))
    for r in results:
        assert r.done is not None and r.audio.size > 0 and len(r.frames) > 0


def _audio_inputs(audio: np.ndarray, rate: int, avatar_id: str, dtype: str = "FP32") -> list:
    return [infer_input("audio", audio, dtype), infer_input("sample_rate", np.array([rate], np.int32), "INT32"),
            infer_input("avatar_id", bytes_array(avatar_id.encode()), "BYTES")]


def _text_inputs(text: bytes, avatar_id: str) -> list:
    return [infer_input("text", bytes_array(text), "BYTES"), infer_input("avatar_id", bytes_array(avatar_id.encode()), "BYTES")]


BAD_INPUTS = {
    "empty audio": (lambda a: _audio_inputs(np.zeros(0, np.float32), 16000, a), "audio is empty"),
    "silent audio": (lambda a: _audio_inputs(np.zeros(16000, np.float32), 16000, a), "silent"),
    "8 kHz audio": (lambda a: _audio_inputs(np.full(8000, 0.1, np.float32), 8000, a), "8000 Hz"),
    "int16 audio": (lambda a: _audio_inputs(np.full(16000, 100, np.int16), 16000, a, "INT16"), "INT16"),
    "stereo audio": (lambda a: _audio_inputs(np.full((2, 16000), 0.1, np.float32), 16000, a), "unexpected shape"),
    "text over the limit": (lambda a: _text_inputs(b"word " * 1000, a), "limit"),
    "non-UTF-8 text": (lambda a: _text_inputs(b"caf\xe9 au lait", a), "UTF-8"),
    "unknown avatar": (lambda a: _text_inputs(b"hello", "0123456789abcdef"), "unknown avatar"),
    "unknown option": (lambda a: _text_inputs(b"hello", a) + [infer_input("options", bytes_array(b'{"colour": 1}'), "BYTES")],
                       "unknown option"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_named_and_other_sessions_continue(server, client, avatar, case):
    make_inputs, expected = BAD_INPUTS[case]
    with ThreadPoolExecutor(2) as pool:
        healthy = pool.submit(client.turn, avatar_id=avatar.id, text="Hello again.")
        events, error = raw_turn(server.options.grpc_url, make_inputs(avatar.id))
        good = healthy.result(timeout=120)
    assert error is not None, f"{case}: no error, got {[e.type for e in events]}"
    assert expected.lower() in error.lower(), f"{case}: {error}"
    assert ev.DONE not in [e.type for e in events]
    assert good.done is not None and good.audio.size > 0


def test_turn_deadline_fails_clearly_and_others_continue(server, client, avatar):
    inputs = _text_inputs(b"Tell me a long story.", avatar.id) + [
        infer_input("options", bytes_array(b'{"deadline_s": 0.05, "max_reply_tokens": 64}'), "BYTES")]
    with ThreadPoolExecutor(2) as pool:
        healthy = pool.submit(client.turn, avatar_id=avatar.id, text="Hello again.")
        events, error = raw_turn(server.options.grpc_url, inputs)
        good = healthy.result(timeout=120)
    assert error is not None and "deadline exceeded" in error, error
    assert ev.DONE not in [e.type for e in events]
    assert good.done is not None and good.audio.size > 0
