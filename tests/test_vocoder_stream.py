from __future__ import annotations

import numpy as np
import pytest

from ensemble.vocoder_stream import VocoderStream, VocoderStreamOptions
from export.contract import media as C

HOP = C.TTS_MEL.hop_length
GUARANTEED_MAX_ABS = 1e-5  # the documented bound when context covers the receptive field


class ConvVocoder:
    """A random 1-D conv net stand-in for HiFi-GAN with a finite receptive field.

    mel [80, F] -> frame conv (kernel 5: 2 frames each side) -> tanh -> repeat x hop
    -> three zero-padded FIR filters (64 + 32 + 128 = 224 samples each side) with tanh between.
    Receptive field: 2 frames + 224 samples < 3 frames each side.
    """

    rf_frames = 3

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w_mel = (rng.standard_normal((80, 5)) / 20).astype(np.float32)
        self.firs = [(rng.standard_normal(t) / np.sqrt(t)).astype(np.float32) for t in (129, 65, 257)]

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        assert mel.ndim == 2 and mel.shape[0] == 80 and mel.dtype == np.float32
        f = mel.shape[1]
        padded = np.pad(mel, ((0, 0), (2, 2)))
        h = np.zeros(f, np.float32)
        for k in range(5):
            h += self.w_mel[:, k] @ padded[:, k:k + f]
        x = np.repeat(np.tanh(h), HOP)
        for fir in self.firs:
            x = np.tanh(np.convolve(x, fir)[fir.size // 2: fir.size // 2 + x.size]).astype(np.float32)  # "same", zero-padded
        assert x.shape == (f * HOP,)
        return x


def _mel(f: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((80, f)) * 2 - 5).astype(np.float32)


def _stream_sync(voc, mel, rng, **opts):
    vs = VocoderStream(voc, **opts)
    out, i = [], 0
    while i < mel.shape[1]:
        n = int(rng.integers(0, 20))
        out += vs.push(mel[:, i:i + n])
        i += n
    out += vs.finish()
    return np.concatenate(out) if out else np.zeros(0, np.float32), vs


@pytest.mark.parametrize("f", [0, 1, 2, 5, 31, 32, 33, 40, 41, 64, 65, 100, 257])
@pytest.mark.parametrize("opts", [
    {},  # defaults: chunk 32, context 8, crossfade 2
    {"chunk_frames": 8, "context_frames": 4, "crossfade_frames": 2},  # context = rf + crossfade/2
    {"chunk_frames": 5, "context_frames": 5, "crossfade_frames": 4},
    {"chunk_frames": 16, "context_frames": 3, "crossfade_frames": 0},  # hard cut
])
def test_stream_equals_whole_utterance(f, opts):
    voc = ConvVocoder()
    mel = _mel(f)
    got, vs = _stream_sync(voc, mel, np.random.default_rng(f), **opts)
    assert got.shape == (f * HOP,) and vs.samples_emitted == f * HOP and vs.done
    if f:
        ref = voc(mel)
        assert np.abs(got - ref).max() <= GUARANTEED_MAX_ABS
        assert np.abs(ref).max() > 0.1  # the comparison is not trivially between zeros


def test_short_context_breaks_exactness():
    """Below the receptive field the guarantee does not hold (and the test above would catch it)."""
    voc = ConvVocoder()
    mel = _mel(100)
    got, _ = _stream_sync(voc, mel, np.random.default_rng(0), chunk_frames=16, context_frames=1,
                          crossfade_frames=2)
    assert got.shape == (100 * HOP,)
    assert np.abs(got - voc(mel)).max() > 1e-3


def test_first_chunk_ready_after_chunk_plus_context():
    mel = _mel(200)
    vs = VocoderStream()
    vs.append(mel[:, :39])
    assert vs.chunks_ready() == []
    vs.append(mel[:, 39:40])  # 32 + 8 frames
    work = vs.chunks_ready()
    assert [w.chunk_id for w in work] == [0]
    np.testing.assert_array_equal(work[0].mel, mel[:, :40])  # no left context at the start
    out = vs.accept(0, ConvVocoder()(work[0].mel))
    # everything up to the first boundary minus the held cross-fade half
    assert sum(o.size for o in out) == 32 * HOP - HOP
    vs.append(mel[:, 40:72])
    work = vs.chunks_ready()
    assert [w.chunk_id for w in work] == [1]
    np.testing.assert_array_equal(work[0].mel, mel[:, 24:72])  # 8 left context, 32 core, 8 right


def test_async_out_of_order_accept_matches_sync():
    voc = ConvVocoder(3)
    mel = _mel(150, seed=4)
    sync, _ = _stream_sync(voc, mel, np.random.default_rng(9))
    vs = VocoderStream(chunk_frames=32, context_frames=8, crossfade_frames=2)
    vs.append(mel[:, :100])
    first = vs.chunks_ready()
    vs.append(mel[:, 100:])
    vs.close()
    work = first + vs.chunks_ready()
    assert [w.chunk_id for w in work] == list(range(len(work))) and len(work) == 5
    out = []
    rng = np.random.default_rng(2)
    for i in rng.permutation(len(work)):  # audio comes back in any order
        emitted = vs.accept(work[i].chunk_id, voc(work[i].mel))
        if work[i].chunk_id != 0 and not out:
            assert emitted == []  # nothing may overtake chunk 0
        out += emitted
    assert vs.done
    np.testing.assert_array_equal(np.concatenate(out), sync)


def test_crossfade_joins_mismatched_chunks_smoothly():
    """A vocoder with a per-call DC offset: the cross-fade ramps between offsets instead of jumping."""
    calls = []

    def offset_vocoder(mel):
        calls.append(len(calls))
        return np.full(mel.shape[1] * HOP, float(len(calls)), np.float32)

    vs = VocoderStream(offset_vocoder, chunk_frames=4, context_frames=2, crossfade_frames=2)
    out = np.concatenate(vs.push(_mel(12)) + vs.finish())
    assert out.shape == (12 * HOP,)
    assert np.abs(np.diff(out)).max() <= 1.0 / (2 * HOP) + 1e-6  # linear ramp over 2*hop samples
    assert out[0] == 1.0 and out[-1] == float(len(calls))


def test_bad_inputs_and_options():
    with pytest.raises(ValueError):
        VocoderStreamOptions(chunk_frames=0)
    with pytest.raises(ValueError):
        VocoderStreamOptions(context_frames=-1)
    with pytest.raises(ValueError):
        VocoderStreamOptions(context_frames=0, crossfade_frames=2)  # no room for the fade
    with pytest.raises(ValueError):
        VocoderStreamOptions(chunk_frames=2, crossfade_frames=4)
    vs = VocoderStream(chunk_frames=4, context_frames=1, crossfade_frames=2)
    with pytest.raises(ValueError):
        vs.append(np.zeros((10, 80), np.float32))  # frames-first
    vs.append(_mel(10))
    w = vs.chunks_ready()[0]
    with pytest.raises(ValueError):
        vs.accept(w.chunk_id, np.zeros(w.mel.shape[1] * HOP - 1, np.float32))  # wrong length
    with pytest.raises(ValueError):
        vs.accept(99, np.zeros(HOP, np.float32))  # never planned
    vs.accept(w.chunk_id, np.zeros(w.mel.shape[1] * HOP, np.float32))
    with pytest.raises(ValueError):
        vs.accept(w.chunk_id, np.zeros(w.mel.shape[1] * HOP, np.float32))  # twice
    assert vs.push(_mel(1)) == []  # no vocode callable: push is append
    assert vs.frames_in == 11
    vs.close()
    with pytest.raises(RuntimeError):
        vs.append(_mel(1))


def test_mel_buffer_is_bounded():
    vs = VocoderStream(ConvVocoder())
    total = 0
    for _ in range(100):
        total += sum(a.size for a in vs.push(_mel(7)))
        assert vs._mel.shape[1] <= 32 + 2 * 8 + 7
    total += sum(a.size for a in vs.finish())
    assert total == 700 * HOP


def test_async_push_finish_without_callable():
    """push/finish as append/close, then drive chunks_ready/accept (the orchestrator's pattern)."""
    voc = ConvVocoder(5)
    mel = _mel(77, seed=6)
    vs = VocoderStream()
    assert vs.push(mel) == [] and vs.finish() == []
    assert not vs.done  # chunks still to vocode
    out = []
    for chunk_id, mel_chunk in vs.chunks_ready():
        out += vs.accept(chunk_id, voc(mel_chunk)[None])  # [1, n] from a batched model is fine
    assert vs.done and vs.chunks_ready() == []
    got = np.concatenate(out)
    assert got.shape == (77 * HOP,)
    assert np.abs(got - voc(mel)).max() <= GUARANTEED_MAX_ABS
