"""FastSpeech2 (export/toolchain/models/fastspeech2.py): shapes, masking, length regulation, names, size."""
from __future__ import annotations

import pytest
import torch

from export.contract.presets import get_preset
from export.contract.spec import FASTSPEECH2
from export.toolchain.models.fastspeech2 import (
    FastSpeech2,
    LengthRegulator,
    SinusoidPositions,
    TtsGraph,
    build,
    get_sinusoid_encoding_table,
)

TINY = get_preset("tiny").fastspeech2


@pytest.fixture(scope="module")
def graph() -> TtsGraph:
    return TtsGraph(build(TINY, seed=0))


def test_shapes_and_dtypes_follow_the_spec(graph):
    phonemes, lengths, controls = graph.example_inputs(batch=3, seed=1, phonemes=17)
    assert phonemes.shape == (3, 17) and phonemes.dtype == torch.int64
    assert lengths.shape == (3, 1) and lengths.dtype == torch.int64
    assert controls.shape == (3, 3) and controls.dtype == torch.float32
    assert int(lengths.max()) == 17 and int(lengths.min()) >= 1
    for row, n in zip(phonemes, lengths[:, 0]):
        assert bool((row[:n] >= 1).all()) and bool((row[:n] < TINY.n_symbols).all())
        assert bool((row[n:] == 0).all())
    with torch.no_grad():
        mel, mel_lengths, durations = graph(phonemes, lengths, controls)
    n_mels = FASTSPEECH2.output("mel").dims[0]
    assert mel.dtype == torch.float32 and mel.ndim == 3 and mel.shape[:2] == (3, n_mels)
    assert mel_lengths.dtype == torch.int64 and mel_lengths.shape == (3, 1)
    assert mel.shape[2] == int(mel_lengths.max())
    # frames per symbol: what the lip-sync times its visemes with; they add up to each row's mel length
    assert durations.dtype == torch.int64 and durations.shape == phonemes.shape
    assert torch.equal(durations.sum(1, keepdim=True), mel_lengths) and bool((durations[phonemes == 0] == 0).all())
    assert bool(torch.isfinite(mel).all())


def test_padded_batch_equals_single_runs(graph):
    phonemes, lengths, controls = graph.example_inputs(batch=4, seed=2, phonemes=21)
    controls[1] = torch.tensor([1.3, 0.7, 1.6])
    controls[2] = torch.tensor([0.8, 1.2, 0.6])
    with torch.no_grad():
        mel, mel_lengths, _ = graph(phonemes, lengths, controls)
        for i in range(4):
            n = int(lengths[i])
            one, one_len, _ = graph(phonemes[i:i + 1, :n], lengths[i:i + 1], controls[i:i + 1])
            f = int(one_len)
            assert f == int(mel_lengths[i]) and one.shape[2] == f
            err = (mel[i, :, :f] - one[0]).abs().max().item()
            assert err <= 1e-5, f"item {i}: padded batch differs from a single run by {err}"
            assert bool((mel[i, :, f:] == 0).all()), "mel must be zero beyond its length"


def test_durations_follow_ming024_and_are_zero_on_padding():
    model = build(TINY, seed=0)
    phonemes, lengths, _ = TtsGraph(model).example_inputs(batch=3, seed=3, phonemes=15)
    d_control = torch.tensor([[1.0], [1.5], [0.5]])
    with torch.no_grad():
        out = model(phonemes, lengths[:, 0], 1.0, 1.0, d_control)
    log_d, duration, src_mask, mel_len = out[4], out[5], out[6], out[8]
    expected = torch.clamp(torch.round(torch.exp(log_d) - 1) * d_control, min=0).long()  # int() truncation
    expected = expected.masked_fill(src_mask, 0)
    assert torch.equal(duration, expected)
    assert bool((duration[src_mask] == 0).all())
    assert torch.equal(mel_len, duration.sum(1))
    assert int(duration.sum(1).min()) > 0


def test_at_least_one_frame_per_item(graph):
    phonemes, lengths, controls = graph.example_inputs(batch=2, seed=4, phonemes=9)
    controls[:, 2] = 0.0  # every duration rounds to 0
    with torch.no_grad():
        mel, mel_lengths, _ = graph(phonemes, lengths, controls)
    assert mel_lengths[:, 0].tolist() == [1, 1] and mel.shape[2] == 1


def test_pitch_and_energy_controls_change_the_mel_not_the_length(graph):
    phonemes, lengths, controls = graph.example_inputs(batch=1, seed=5, phonemes=12)
    with torch.no_grad():
        ref, ref_len, _ = graph(phonemes, lengths, controls)
        for k in (0, 1):
            c = controls.clone()
            c[0, k] = 3.0
            mel, mel_len, _ = graph(phonemes, lengths, c)
            assert torch.equal(mel_len, ref_len)
            assert (mel - ref).abs().max() > 1e-4


def test_length_regulator_matches_repeat_interleave():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 4, generator=gen)
    duration = torch.tensor([[2, 0, 3, 1, 0, 0], [1, 1, 1, 1, 1, 4], [0, 5, 0, 0, 0, 0]])
    out, mel_len = LengthRegulator()(x, duration)
    assert mel_len.tolist() == [6, 9, 5] and out.shape == (3, 9, 4)
    for b in range(3):
        ref = torch.repeat_interleave(x[b], duration[b], dim=0)
        assert torch.equal(out[b, :len(ref)], ref)
        assert bool((out[b, len(ref):] == 0).all())


def test_positions_beyond_the_table_continue_the_sinusoids():
    d = TINY.decoder_hidden
    table = get_sinusoid_encoding_table(TINY.max_seq_len + 1, d).unsqueeze(0)
    full = get_sinusoid_encoding_table(2500, d)
    pe = SinusoidPositions(d)(table, torch.zeros(1, 2500, d))[0]
    assert torch.equal(pe[:TINY.max_seq_len + 1], table[0])
    assert (pe - full).abs().max().item() < 1e-3  # float32 angles past 1000 vs ming024's float64 table


EXPECTED_KEYS = [
    "encoder.src_word_emb.weight",
    "encoder.position_enc",
    "encoder.layer_stack.0.slf_attn.w_qs.weight",
    "encoder.layer_stack.0.slf_attn.w_ks.bias",
    "encoder.layer_stack.0.slf_attn.w_vs.weight",
    "encoder.layer_stack.0.slf_attn.fc.weight",
    "encoder.layer_stack.0.slf_attn.layer_norm.weight",
    "encoder.layer_stack.0.pos_ffn.w_1.weight",
    "encoder.layer_stack.0.pos_ffn.w_2.bias",
    "encoder.layer_stack.0.pos_ffn.layer_norm.bias",
    "variance_adaptor.duration_predictor.conv_layer.conv1d_1.conv.weight",
    "variance_adaptor.duration_predictor.conv_layer.layer_norm_1.weight",
    "variance_adaptor.duration_predictor.conv_layer.conv1d_2.conv.bias",
    "variance_adaptor.duration_predictor.conv_layer.layer_norm_2.bias",
    "variance_adaptor.duration_predictor.linear_layer.weight",
    "variance_adaptor.pitch_predictor.conv_layer.conv1d_1.conv.weight",
    "variance_adaptor.energy_predictor.linear_layer.bias",
    "variance_adaptor.pitch_bins",
    "variance_adaptor.energy_bins",
    "variance_adaptor.pitch_embedding.weight",
    "variance_adaptor.energy_embedding.weight",
    "decoder.position_enc",
    "decoder.layer_stack.0.slf_attn.w_qs.weight",
    "decoder.layer_stack.0.pos_ffn.w_1.weight",
    "mel_linear.weight",
    "mel_linear.bias",
    "postnet.convolutions.0.0.conv.weight",
    "postnet.convolutions.0.1.running_mean",
    "postnet.convolutions.1.0.conv.weight",
    "postnet.convolutions.1.1.num_batches_tracked",
]


def test_state_dict_names_match_ming024():
    base = get_preset("base").fastspeech2
    with torch.device("meta"):
        model = FastSpeech2(base)
    sd = model.state_dict()
    missing = [k for k in EXPECTED_KEYS if k not in sd]
    assert not missing, missing
    assert "postnet.convolutions.4.1.running_var" in sd and "postnet.convolutions.5.0.conv.weight" not in sd
    assert "encoder.layer_stack.3.pos_ffn.w_2.weight" in sd and "encoder.layer_stack.4.slf_attn.fc.weight" not in sd
    assert "decoder.layer_stack.5.pos_ffn.w_2.weight" in sd
    assert tuple(sd["encoder.src_word_emb.weight"].shape) == (361, 256)
    assert tuple(sd["encoder.position_enc"].shape) == (1, 1001, 256)
    assert tuple(sd["encoder.layer_stack.0.pos_ffn.w_1.weight"].shape) == (1024, 256, 9)
    assert tuple(sd["encoder.layer_stack.0.pos_ffn.w_2.weight"].shape) == (256, 1024, 1)
    assert tuple(sd["variance_adaptor.pitch_bins"].shape) == (255,)
    assert tuple(sd["postnet.convolutions.0.0.conv.weight"].shape) == (512, 80, 5)
    assert not any("positions" in k or "inv_timescale" in k for k in sd)  # helpers stay out of the state dict
    # a state dict round-trips strictly (what loading a checkpoint does)
    tiny = build(TINY, seed=1)
    build(TINY, seed=2).load_state_dict(tiny.state_dict(), strict=True)


def test_base_parameter_count_is_fastspeech2_ljspeech():
    with torch.device("meta"):
        model = FastSpeech2(get_preset("base").fastspeech2)
    n_params = sum(p.numel() for p in model.parameters())
    n_state = n_params + sum(b.numel() for b in model.buffers())  # ming024 keeps position_enc/bins as Parameters
    print(f"FastSpeech2 base: {n_params / 1e6:.2f}M parameters, {n_state / 1e6:.2f}M incl. position tables")
    assert abs(n_params - 35.0e6) <= 0.15 * 35.0e6
    assert abs(n_state - 35.2e6) <= 0.02 * 35.2e6


def test_build_is_deterministic():
    a, b = build(TINY, seed=7), build(TINY, seed=7)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert not torch.equal(a.mel_linear.weight, build(TINY, seed=8).mel_linear.weight)
    assert not any(m.training for m in a.modules())
