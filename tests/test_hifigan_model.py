"""HiFi-GAN generator (export/toolchain/models/hifigan.py): lengths, weight norm, names, size."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from export.contract import media
from export.contract.presets import HiFiGANConfig, get_preset
from export.contract.spec import HIFIGAN
from export.toolchain.models.hifigan import Generator, VocoderGraph, build

TINY = get_preset("tiny").hifigan
HOP = media.TTS_MEL.hop_length


def test_output_is_frames_times_hop():
    graph = VocoderGraph(build(TINY, seed=0))
    for batch, frames in [(1, 1), (2, 7), (3, 33)]:
        (mel,) = graph.example_inputs(batch=batch, seed=batch, frames=frames)
        assert mel.shape == (batch, HIFIGAN.input("mel").dims[0], frames)
        assert float(mel.min()) >= -11.0 and float(mel.max()) <= 2.0
        with torch.no_grad():
            audio = graph(mel)
        assert audio.shape == (batch, frames * HOP) and audio.dtype == torch.float32
        assert float(audio.abs().max()) <= 1.0 and float(audio.abs().max()) > 1e-3


def test_weight_norm_keys_then_identical_output_after_removal():
    gen = build(TINY, seed=0)
    keys = list(gen.state_dict())
    for k in ["conv_pre.weight_g", "conv_pre.weight_v", "ups.0.weight_g", "ups.0.weight_v",
              "resblocks.0.convs1.0.weight_g", "resblocks.0.convs2.2.weight_v", "conv_post.weight_g"]:
        assert k in keys, k
    assert not any(k.endswith(".weight") for k in keys)
    (mel,) = VocoderGraph.example_inputs(VocoderGraph(build(TINY, seed=0)), batch=2, seed=3, frames=19)
    with torch.no_grad():
        before = gen(mel)
        graph = VocoderGraph(gen)  # removes weight norm
        after = graph(mel)
    keys_after = list(gen.state_dict())
    assert "conv_pre.weight" in keys_after and "ups.3.weight" in keys_after
    assert not any("weight_g" in k or "weight_v" in k for k in keys_after)
    assert (before.squeeze(1) - after).abs().max().item() <= 1e-6


def test_official_v1_generator_names_and_shapes():
    with torch.device("meta"):
        gen = Generator(HiFiGANConfig())
    sd = gen.state_dict()
    expected = {
        "conv_pre.weight_g": (512, 1, 1), "conv_pre.weight_v": (512, 80, 7), "conv_pre.bias": (512,),
        "ups.0.weight_g": (512, 1, 1), "ups.0.weight_v": (512, 256, 16), "ups.3.weight_v": (64, 32, 4),
        "resblocks.0.convs1.0.weight_v": (256, 256, 3), "resblocks.2.convs2.2.weight_v": (256, 256, 11),
        "resblocks.11.convs1.2.weight_g": (32, 1, 1), "conv_post.weight_v": (1, 32, 7), "conv_post.bias": (1,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "resblocks.12.convs1.0.weight_v" not in sd
    n_params = sum(p.numel() for p in gen.parameters())
    print(f"HiFi-GAN V1 generator: {n_params / 1e6:.3f}M parameters")
    assert abs(n_params - 13.92e6) <= 0.02 * 13.92e6


def test_resblock2_config_v3():
    v3 = HiFiGANConfig(upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8), upsample_initial_channel=32,
                       resblock="2", resblock_kernel_sizes=(3, 5, 7), resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)))
    gen = build(v3, seed=0)
    assert "resblocks.0.convs.1.weight_v" in gen.state_dict()
    graph = VocoderGraph(gen)
    with torch.no_grad():
        assert graph(torch.zeros(1, 80, 5) - 5).shape == (1, 5 * HOP)


def test_upsampling_must_equal_the_mel_hop():
    with pytest.raises(AssertionError):
        Generator(dataclasses.replace(TINY, upsample_rates=(8, 8, 2), upsample_kernel_sizes=(16, 16, 4)))


def test_batch_items_are_independent():
    graph = VocoderGraph(build(TINY, seed=1))
    (mel,) = graph.example_inputs(batch=3, seed=4, frames=11)
    with torch.no_grad():
        audio = graph(mel)
        for i in range(3):
            assert (graph(mel[i:i + 1])[0] - audio[i]).abs().max().item() <= 1e-6
