"""Wav2Lip (export/toolchain/models/wav2lip.py): shapes, width scaling, names, size."""
from __future__ import annotations

import torch

from export.contract.presets import Wav2LipConfig, get_preset
from export.contract.spec import WAV2LIP
from export.toolchain.models.wav2lip import LipsyncGraph, Wav2Lip, build

TINY = get_preset("tiny").wav2lip


def test_shapes_and_range():
    graph = LipsyncGraph(build(TINY, seed=0))
    mel, faces = graph.example_inputs(batch=3, seed=1)
    assert mel.shape == (3, *WAV2LIP.input("mel").dims) and faces.shape == (3, *WAV2LIP.input("faces").dims)
    assert float(mel.min()) >= -4.0 and float(mel.max()) <= 4.0
    assert float(faces.min()) >= 0.0 and float(faces.max()) <= 1.0
    with torch.no_grad():
        frames = graph(mel, faces)
    assert frames.shape == (3, *WAV2LIP.output("frames").dims) and frames.dtype == torch.float32
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.0
    with torch.no_grad():
        for i in range(3):
            assert (graph(mel[i:i + 1], faces[i:i + 1])[0] - frames[i]).abs().max().item() <= 1e-5


def test_width_scales_every_published_channel_count():
    model = Wav2Lip(Wav2LipConfig(width=0.125))
    face_out = [blk[0].conv_block[0].out_channels for blk in model.face_encoder_blocks]
    assert face_out == [2, 4, 8, 16, 32, 64, 64]
    assert model.face_encoder_blocks[0][0].conv_block[0].in_channels == 6
    assert model.audio_encoder[0].conv_block[0].in_channels == 1
    assert model.audio_encoder[-1].conv_block[0].out_channels == 64
    dec_in = [blk[0].conv_block[0].in_channels for blk in model.face_decoder_blocks]
    assert dec_in == [64, 128, 128, 96, 64, 40, 20]  # 512, 1024, 1024, 768, 512, 320, 160 x 0.125
    assert model.output_block[0].conv_block[0].in_channels == 10  # 80 x 0.125
    assert model.output_block[1].out_channels == 3


EXPECTED = {
    "face_encoder_blocks.0.0.conv_block.0.weight": (16, 6, 7, 7),
    "face_encoder_blocks.0.0.conv_block.1.running_var": (16,),
    "face_encoder_blocks.1.2.conv_block.0.weight": (32, 32, 3, 3),
    "face_encoder_blocks.2.3.conv_block.1.weight": (64,),
    "face_encoder_blocks.6.1.conv_block.0.weight": (512, 512, 1, 1),
    "audio_encoder.0.conv_block.0.weight": (32, 1, 3, 3),
    "audio_encoder.12.conv_block.0.weight": (512, 512, 1, 1),
    "face_decoder_blocks.0.0.conv_block.0.weight": (512, 512, 1, 1),
    "face_decoder_blocks.1.0.conv_block.0.weight": (1024, 512, 3, 3),  # ConvTranspose2d: [in, out, k, k]
    "face_decoder_blocks.3.0.conv_block.0.weight": (768, 384, 3, 3),
    "face_decoder_blocks.6.2.conv_block.1.bias": (64,),
    "output_block.0.conv_block.0.weight": (32, 80, 3, 3),
    "output_block.1.weight": (3, 32, 1, 1),
    "output_block.1.bias": (3,),
}


def test_state_dict_names_match_the_original_and_base_size():
    with torch.device("meta"):
        model = Wav2Lip(Wav2LipConfig())
    sd = model.state_dict()
    for k, shape in EXPECTED.items():
        assert tuple(sd[k].shape) == shape, k
    assert "audio_encoder.13.conv_block.0.weight" not in sd and "face_decoder_blocks.7.0.conv_block.0.weight" not in sd
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Wav2Lip base: {n_params / 1e6:.2f}M parameters")
    assert abs(n_params - 36.3e6) <= 0.03 * 36.3e6


def test_build_is_deterministic_and_in_eval_mode():
    a, b = build(TINY, seed=3), build(TINY, seed=3)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert not any(m.training for m in a.modules())
    b.load_state_dict(build(TINY, seed=4).state_dict(), strict=True)
