"""The split graphs (tts -> vocoder, PyTorch) against the published Piper voice on ONNX Runtime."""
import numpy as np
import pytest
import torch
from piper_ref import SENTENCES, piper_audio

NOISE_OFF = (0.0, 1.0, 0.0)  # noise_scale, length_scale, noise_w
DEFAULTS = (0.667, 1.0, 0.8)  # the voice's json inference defaults
TOLERANCE = 2e-4  # max |ours - piper| / peak |piper| (measured <= 7e-5: float32 summation order)


def synthesize(graphs, ids, scales, seed=0):
    tts, voc = graphs
    with torch.inference_mode():
        z, lengths, durations = tts(torch.tensor([ids]), torch.tensor([[len(ids)]]), torch.tensor([scales]),
                                    torch.tensor([[seed]]))
        return voc(z)[0].numpy(), int(lengths), durations[0].numpy()


def rel_err(a, ref):
    assert a.shape == ref.shape, f"{a.shape} samples vs Piper's {ref.shape}"
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("k", range(len(SENTENCES)))
def test_noise_off_equals_piper(graphs, piper, k):
    audio, frames, durations = synthesize(graphs, SENTENCES[k], NOISE_OFF)
    ref = piper_audio(piper, SENTENCES[k], NOISE_OFF)
    assert audio.shape == (frames * 256,) and durations.sum() == frames
    assert rel_err(audio, ref) <= TOLERANCE


@pytest.mark.parametrize("length_scale", [0.8, 1.3])
def test_length_scale_equals_piper(graphs, piper, length_scale):
    scales = (0.0, length_scale, 0.0)
    audio, _, _ = synthesize(graphs, SENTENCES[1], scales)
    assert rel_err(audio, piper_audio(piper, SENTENCES[1], scales)) <= TOLERANCE


@pytest.mark.parametrize("seed", [0, 1234, -5])
def test_noise_on_equals_piper_fed_the_same_noise(model, graphs, piper_noise_in, seed):
    """Piper's RandomNormalLike outputs replaced by inputs holding the NoiseTable values the seed selects."""
    ids = SENTENCES[2]
    audio, frames, _ = synthesize(graphs, ids, DEFAULTS, seed)
    s = torch.tensor([[seed]])
    ref = piper_audio(piper_noise_in, ids, DEFAULTS, model.noise.durations(s, len(ids)).numpy(),
                      model.noise.prior(s, frames).numpy())
    assert rel_err(audio, ref) <= TOLERANCE


def test_seed_decides_the_noise(graphs):
    a, fa, _ = synthesize(graphs, SENTENCES[1], DEFAULTS, seed=3)
    b, _, _ = synthesize(graphs, SENTENCES[1], DEFAULTS, seed=3)
    c, fc, _ = synthesize(graphs, SENTENCES[1], DEFAULTS, seed=4)
    assert np.array_equal(a, b)
    assert fa != fc or not np.allclose(a, c, atol=1e-3)
    # with both noise scales 0 the seed has no effect
    off3, off4 = synthesize(graphs, SENTENCES[1], NOISE_OFF, 3)[0], synthesize(graphs, SENTENCES[1], NOISE_OFF, 4)[0]
    assert np.array_equal(off3, off4)


def test_noise_table_is_standard_normal(model):
    t = model.noise.table
    assert t.shape == (model.config.inter_channels + 2, 4096)
    assert abs(float(t.mean())) < 0.01 and abs(float(t.std()) - 1) < 0.01
    # neighbouring columns and the two duration rows are uncorrelated
    assert abs(float((t[:, 1:] * t[:, :-1]).mean())) < 0.01
    assert abs(float(np.corrcoef(t[-2].numpy(), t[-1].numpy())[0, 1])) < 0.05


def test_seeds_pick_distinct_far_apart_windows(model):
    noise = model.noise
    seeds = torch.arange(4096).view(-1, 1)
    starts = noise.durations(seeds, 1)[:, 0, 0]  # the first value of each seed's window
    assert len(set(starts.tolist())) == 4096  # every start column is used once: a permutation
    first = noise.prior(torch.tensor([[0], [1], [4096], [-4096]]), 200)
    assert torch.equal(first[0], first[2]) and torch.equal(first[0], first[3])  # seeds are taken mod 4096
    # consecutive seeds do not read shifted copies of one window (columns 2531 apart)
    a, b = first[0].reshape(-1), first[1].reshape(-1)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.05
