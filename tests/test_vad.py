"""The VAD stage (silero VAD in a batch-first wrapper) and the streaming turn detector, without Triton.

The detector runs over the real wrapper graph on ONNX Runtime through the same `BatchRunner` the
`ort_cpu` backend uses; speech is a real utterance spoken by espeak-ng.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import numpy as np
import pytest

from ensemble.errors import InputError
from ensemble.vad import SPEECH_START, TURN_END, TurnDetector, VadSettings
from export.contract import media as C
from export.contract import spec
from export.runtime.batching import onnx_runner
from export.toolchain import vad as vad_export

SR = C.VAD_SAMPLE_RATE
TOLERANCE_S = 0.1


@pytest.fixture(scope="module")
def vad_path(tmp_path_factory):
    pytest.importorskip("silero_vad", reason="pip install --no-deps -r requirements-nodeps.txt")
    repo = tmp_path_factory.mktemp("vad_repo")
    vad_export.write_vad(repo)
    return repo / "vad" / "1" / "model.onnx"


@pytest.fixture(scope="module")
def runner(vad_path):
    return onnx_runner(spec.VAD, vad_path, threads=1)


def make_infer(runner, calls=None):
    async def infer(model, inputs):
        assert model == spec.VAD.name
        if calls is not None:
            calls.append(len(inputs["audio"]))
        result = runner.run([inputs])[0]
        if isinstance(result, Exception):
            raise result
        return result
    return infer


@pytest.fixture(scope="module")
def utterance(tmp_path_factory):
    """'Please tell me a story about the sea.' spoken by espeak-ng at 16 kHz, and where its speech lies."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; make test does this)")
    import soundfile as sf
    import soxr

    wav = tmp_path_factory.mktemp("speech") / "u.wav"
    subprocess.run([espeak, "-w", str(wav), "Please tell me a story about the sea."], check=True)
    audio, rate = sf.read(str(wav), dtype="float32")
    audio = soxr.resample(audio, rate, SR).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    audio = audio[loud[0]:loud[-1] + 1]  # speech from the first to the last audible sample
    return 0.5 * audio / np.abs(audio).max()


def silence(seconds: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    n = int(seconds * SR)
    return (noise * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def run(runner, audio: np.ndarray, chunk: int = 320, settings: VadSettings = VadSettings(), flush: bool = False,
        calls=None):
    det = TurnDetector(make_infer(runner, calls), settings)

    async def go():
        events = []
        for i in range(0, len(audio), chunk):
            events += await det.push(audio[i:i + chunk])
        return events + (det.flush() if flush else [])

    return asyncio.run(go()), det


def kinds(events):
    return [e.kind for e in events]


# ---------------------------------------------------------------- the stage graph

def test_wrapper_equals_silero(vad_path):
    assert vad_export.parity(vad_path, batch=3, steps=6) <= vad_export.PARITY_ATOL


def test_wrapper_is_batch_first_with_the_spec_names(vad_path):
    import onnx

    m = onnx.load(str(vad_path))
    io = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
          for v in list(m.graph.input) + list(m.graph.output)}
    assert io == {"audio": ["batch", C.VAD_INPUT], "state": ["batch", *C.VAD_STATE],
                  "probability": ["batch", 1], "next_state": ["batch", *C.VAD_STATE]}
    assert not [n for n in m.graph.node if "sr" in n.input]  # sr folded to a constant


def test_export_is_idempotent(tmp_path):
    pytest.importorskip("silero_vad")
    first = vad_export.write_vad(tmp_path)
    assert "parity vs silero" in first and "ok" in first
    mtime = (tmp_path / "vad" / "1" / "model.onnx").stat().st_mtime_ns
    assert "up to date, skipped" in vad_export.write_vad(tmp_path)
    assert (tmp_path / "vad" / "1" / "model.onnx").stat().st_mtime_ns == mtime


def test_rows_of_a_batch_are_independent_streams(runner):
    """Windows of different sessions share a batch: each row's answer is what it gets alone."""
    feeds = vad_export.example_feeds(batch=5, seed=3)
    batch = runner.run([feeds])[0]
    for i in range(5):
        alone = runner.run([{k: v[i:i + 1] for k, v in feeds.items()}])[0]
        np.testing.assert_allclose(batch["probability"][i:i + 1], alone["probability"], atol=1e-5)
        np.testing.assert_allclose(batch["next_state"][i:i + 1], alone["next_state"], atol=1e-5)


# ---------------------------------------------------------------- the turn detector

def test_one_utterance_gives_one_turn_at_the_right_times(runner, utterance):
    lead, tail = 1.0, 1.2
    audio = np.concatenate([silence(lead), utterance, silence(tail)])
    settings = VadSettings()
    events, det = run(runner, audio, settings=settings)
    assert kinds(events) == [SPEECH_START, TURN_END], events
    start, end = events
    speech_end = lead + len(utterance) / SR
    assert abs(start.t_s - lead) <= TOLERANCE_S, start
    assert abs(end.speech_end_s - speech_end) <= TOLERANCE_S, end
    assert abs(end.t_s - (speech_end + settings.min_silence_ms / 1000)) <= TOLERANCE_S, end
    assert end.silence_ms >= settings.min_silence_ms and not end.cut
    # the turn's audio: the speech plus its pads, exactly the stream's samples
    pad = settings.speech_pad_ms / 1000
    assert end.audio.dtype == np.float32 and end.audio.ndim == 1
    assert abs(end.start_s - (start.t_s - pad)) < 1e-9
    assert abs(len(end.audio) / SR - (end.speech_end_s + pad - end.start_s)) < 1e-3
    i = round(end.start_s * SR)
    np.testing.assert_array_equal(end.audio, audio[i:i + len(end.audio)])
    assert not det.in_turn


@pytest.mark.parametrize("noise", [0.0, 0.003])
def test_silence_and_low_noise_give_no_events(runner, noise):
    events, det = run(runner, silence(3.0, noise), flush=True)
    assert events == [] and not det.in_turn


def test_pause_shorter_than_min_silence_keeps_one_turn(runner, utterance):
    audio = np.concatenate([silence(0.5), utterance, silence(0.25), utterance, silence(1.0)])
    events, _ = run(runner, audio)
    assert kinds(events) == [SPEECH_START, TURN_END], events
    assert abs(len(events[1].audio) / SR - (2 * len(utterance) / SR + 0.25 + 0.2)) <= 2 * TOLERANCE_S


def test_longer_pause_gives_two_turns(runner, utterance):
    gap = 1.0
    audio = np.concatenate([silence(0.5), utterance, silence(gap), utterance, silence(1.0)])
    events, _ = run(runner, audio)
    assert kinds(events) == [SPEECH_START, TURN_END] * 2, events
    second = 0.5 + len(utterance) / SR + gap
    assert abs(events[2].t_s - second) <= TOLERANCE_S
    # the min_silence setting decides: a longer one joins the two utterances
    joined, _ = run(runner, np.concatenate([audio, silence(1.0)]), settings=VadSettings(min_silence_ms=1500))
    assert kinds(joined) == [SPEECH_START, TURN_END], joined


def test_chunk_sizes_give_the_same_events(runner, utterance):
    audio = np.concatenate([silence(0.7), utterance, silence(0.8), utterance, silence(0.9)])
    results = {chunk: run(runner, audio, chunk=chunk)[0] for chunk in (320, 480, 640, 512 * 3 + 7)}
    reference = results[320]
    assert kinds(reference) == [SPEECH_START, TURN_END] * 2
    for chunk, events in results.items():
        assert [(e.kind, e.t_s, e.silence_ms) for e in events] == [(e.kind, e.t_s, e.silence_ms) for e in reference], chunk
        for a, b in zip(events, reference):
            if a.kind == TURN_END:
                np.testing.assert_array_equal(a.audio, b.audio)


def test_one_call_per_window(runner, utterance):
    calls: list[int] = []
    audio = np.concatenate([utterance, silence(0.6)])
    _, det = run(runner, audio, chunk=640, calls=calls)
    assert len(calls) == len(audio) // C.VAD_WINDOW and set(calls) == {1}
    assert det.held_samples < len(audio)


def test_max_turn_cuts_and_bounds_memory(runner, utterance):
    speech = np.concatenate([utterance] * 3)  # ~6 s of continuous speech
    settings = VadSettings(max_turn_s=2.0)
    held = []
    det = TurnDetector(make_infer(runner), settings)

    async def go():
        events = []
        for i in range(0, len(speech), 480):
            events += await det.push(speech[i:i + 480])
            held.append(det.held_samples)
        return events + det.flush()

    events = asyncio.run(go())
    ends = [e for e in events if e.kind == TURN_END]
    assert len(ends) >= 3 and any(e.cut for e in ends)
    assert all(len(e.audio) <= int(settings.max_turn_s * SR) for e in ends)
    assert max(held) <= int(settings.max_turn_s * SR) + 2 * C.VAD_WINDOW + settings.samples(settings.speech_pad_ms)
    # the cut turns tile the stream: no sample lost or repeated between a cut and the next turn
    cuts = [e for e in ends if e.cut][:-1] or ends[:1]
    for a, b in zip(cuts, ends[1:]):
        assert abs(a.start_s + len(a.audio) / SR - b.start_s) < 1e-9


def test_short_burst_is_ignored(runner):
    t = np.arange(int(0.1 * SR)) / SR  # a 100 ms click-like burst, shorter than min_speech_ms
    burst = (0.5 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t / 0.1)).astype(np.float32)
    events, _ = run(runner, np.concatenate([silence(0.5), burst, silence(1.0)]), flush=True)
    assert events == []


def test_flush_ends_an_open_turn(runner, utterance):
    events, det = run(runner, np.concatenate([silence(0.5), utterance]), flush=True)
    assert kinds(events) == [SPEECH_START, TURN_END]
    assert events[1].cut and len(events[1].audio) > 0.8 * len(utterance) and not det.in_turn


@pytest.mark.parametrize("chunk, message", [
    (np.zeros(320, np.float64), "float32"),
    (np.zeros((2, 320), np.float32), "1-D"),
    (np.zeros((320, 2, 1), np.float32), "1-D"),
    ([0.0] * 320, "numpy"),
    (np.full(320, np.nan, np.float32), "NaN"),
    (np.full(320, 300.0, np.float32), "int16"),
    (np.zeros(SR * 2, np.float32), "limit"),
])
def test_bad_chunks_are_refused(runner, chunk, message):
    det = TurnDetector(make_infer(runner))
    with pytest.raises(InputError, match=message):
        asyncio.run(det.push(chunk))


def test_bad_settings_are_refused():
    for bad in (dict(threshold=0.0), dict(threshold=1.5), dict(neg_threshold=0.6), dict(min_silence_ms=0),
                dict(max_turn_s=31), dict(max_turn_s=0.1), dict(speech_pad_ms=-1), dict(threshold=float("nan"))):
        with pytest.raises(InputError, match="VAD setting"):
            VadSettings(**bad)


def test_accepted_chunk_shapes(runner):
    det = TurnDetector(make_infer(runner))
    for chunk in (np.zeros(0, np.float32), np.zeros((1, 320), np.float32), np.zeros((320, 1), np.float32)):
        assert asyncio.run(det.push(chunk)) == []


def test_window_cost(runner):
    """Not a timed assert: prints what one 32 ms window costs on ONNX Runtime (pytest -s)."""
    det = TurnDetector(make_infer(runner))
    audio = silence(2.0, 0.01)
    t = time.perf_counter()
    asyncio.run(det.push(audio[: SR]))
    asyncio.run(det.push(audio[SR:]))
    n = len(audio) // C.VAD_WINDOW
    ms = (time.perf_counter() - t) * 1000 / n
    feeds = vad_export.example_feeds(batch=64)
    t = time.perf_counter()
    for _ in range(5):
        runner.run([feeds])
    batch_ms = (time.perf_counter() - t) * 1000 / 5
    print(f"\nvad: {ms:.3f} ms per window at batch 1 through the detector ({n} windows, {ms / 32 * 100:.1f}% of"
          f" real time); {batch_ms:.2f} ms per batch of 64 ({batch_ms / 64 * 1000:.0f} us per window)")
