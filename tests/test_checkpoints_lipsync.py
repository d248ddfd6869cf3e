"""Rudrabha/Wav2Lip checkpoint loading (export/toolchain/checkpoints/wav2lip.py) and the lip-sync contract.

Checkpoints are written into tmp_path in the released layout (`wav2lip.pth` / `wav2lip_gan.pth`:
`{"state_dict": ..., "optimizer": ..., "global_step": ..., "global_epoch": ...}`, keys with or without
DataParallel's `module.`), names and shapes spelled out below from Wav2Lip's models/wav2lip.py,
values seeded random, channel width 1/8 to keep them small. Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from export.contract import media
from export.contract.presets import Wav2LipConfig
from export.toolchain.checkpoints import CheckpointError
from export.toolchain.checkpoints.contract_check import ContractError, check_lipsync_constants, check_lipsync_model
from export.toolchain.checkpoints.wav2lip import load_wav2lip
from export.toolchain.models import wav2lip

WIDTH = 0.125

# models/wav2lip.py, as published: (input channels as the terms concatenated, output channels, kernel, transposed)
FACE_ENCODER = [
    [((6,), 16, 7)],
    [((16,), 32, 3), ((32,), 32, 3), ((32,), 32, 3)],
    [((32,), 64, 3), ((64,), 64, 3), ((64,), 64, 3), ((64,), 64, 3)],
    [((64,), 128, 3), ((128,), 128, 3), ((128,), 128, 3)],
    [((128,), 256, 3), ((256,), 256, 3), ((256,), 256, 3)],
    [((256,), 512, 3), ((512,), 512, 3)],
    [((512,), 512, 3), ((512,), 512, 1)],
]
AUDIO_ENCODER = [((1,), 32, 3), ((32,), 32, 3), ((32,), 32, 3), ((32,), 64, 3), ((64,), 64, 3), ((64,), 64, 3),
                 ((64,), 128, 3), ((128,), 128, 3), ((128,), 128, 3), ((128,), 256, 3), ((256,), 256, 3),
                 ((256,), 512, 3), ((512,), 512, 1)]
FACE_DECODER = [  # the first layer of blocks 1-6 is a Conv2dTranspose over [decoder output, skip connection]
    [((512,), 512, 1, False)],
    [((512, 512), 512, 3, True), ((512,), 512, 3, False)],
    [((512, 512), 512, 3, True), ((512,), 512, 3, False), ((512,), 512, 3, False)],
    [((512, 256), 384, 3, True), ((384,), 384, 3, False), ((384,), 384, 3, False)],
    [((384, 128), 256, 3, True), ((256,), 256, 3, False), ((256,), 256, 3, False)],
    [((256, 64), 128, 3, True), ((128,), 128, 3, False), ((128,), 128, 3, False)],
    [((128, 32), 64, 3, True), ((64,), 64, 3, False), ((64,), 64, 3, False)],
]


def wav2lip_shapes(width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """Every key of Wav2Lip().state_dict() and its shape (published widths scaled by `width`)."""
    fixed = {1, 6}  # the mel and face input channels are not scaled

    def c(n: int) -> int:
        return n if n in fixed else max(1, round(n * width))

    s: dict[str, tuple[int, ...]] = {}

    def block(prefix: str, cin_terms, cout: int, k: int, transposed: bool = False) -> None:
        cin, cout = sum(c(t) for t in cin_terms), c(cout)
        s[f"{prefix}.conv_block.0.weight"] = (cin, cout, k, k) if transposed else (cout, cin, k, k)
        s[f"{prefix}.conv_block.0.bias"] = (cout,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            s[f"{prefix}.conv_block.1.{name}"] = (cout,)
        s[f"{prefix}.conv_block.1.num_batches_tracked"] = ()

    for i, layers in enumerate(FACE_ENCODER):
        for j, (cin, cout, k) in enumerate(layers):
            block(f"face_encoder_blocks.{i}.{j}", cin, cout, k)
    for j, (cin, cout, k) in enumerate(AUDIO_ENCODER):
        block(f"audio_encoder.{j}", cin, cout, k)
    for i, layers in enumerate(FACE_DECODER):
        for j, (cin, cout, k, transposed) in enumerate(layers):
            block(f"face_decoder_blocks.{i}.{j}", cin, cout, k, transposed)
    block("output_block.0", (64, 16), 32, 3)
    s["output_block.1.weight"] = (3, c(32), 1, 1)
    s["output_block.1.bias"] = (3,)
    return s


def write_wav2lip(folder, seed: int = 0, *, name: str = "wav2lip.pth", data_parallel: bool = True, sd_edit=None,
                  width: float = WIDTH):
    folder.mkdir(parents=True, exist_ok=True)
    ref = wav2lip.build(Wav2LipConfig(width=width), seed)
    sd = ref.state_dict()
    if sd_edit is not None:
        sd = sd_edit(dict(sd))
    if data_parallel:
        sd = {"module." + k: v for k, v in sd.items()}
    torch.save({"state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "global_step": 250000, "global_epoch": 40}, folder / name)
    return folder / name, ref


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, 80, 16, generator=gen) * 8 - 4, torch.rand(2, 6, 96, 96, generator=gen)


def assert_same(a, b):
    with torch.no_grad():
        x, y = a(*inputs()), b(*inputs())
    assert x.shape == (2, 3, 96, 96)
    assert torch.equal(x, y)


@pytest.mark.parametrize("width", [1.0, WIDTH])
def test_state_dict_names_and_shapes_are_wav2lips(width):
    model = wav2lip.Wav2Lip(Wav2LipConfig(width=width))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == wav2lip_shapes(width)


@pytest.mark.parametrize("data_parallel", [True, False], ids=["module-prefix", "plain"])
def test_load_with_and_without_module_prefix(tmp_path, data_parallel):
    path, ref = write_wav2lip(tmp_path, seed=2, data_parallel=data_parallel)
    model = load_wav2lip(path)
    assert model.config.width == WIDTH and not model.training
    assert_same(model, ref)
    assert model.checkpoint_files.checkpoint == path


def test_folder_with_one_checkpoint(tmp_path):
    _, ref = write_wav2lip(tmp_path, seed=3, name="wav2lip_gan.pth")
    assert_same(load_wav2lip(tmp_path), ref)
    write_wav2lip(tmp_path, seed=4, name="wav2lip.pth")
    with pytest.raises(CheckpointError, match=r"expected one Wav2Lip checkpoint .*wav2lip.pth"):
        load_wav2lip(tmp_path)


def test_missing_key_and_shape_mismatch_are_named(tmp_path):
    path, _ = write_wav2lip(tmp_path / "a", sd_edit=lambda sd: {k: v for k, v in sd.items()
                                                                 if k != "audio_encoder.3.conv_block.1.running_var"})
    with pytest.raises(CheckpointError, match="1 missing") as err:
        load_wav2lip(path)
    assert "audio_encoder.3.conv_block.1.running_var" in str(err.value)

    def bad(sd):
        sd["output_block.1.weight"] = torch.zeros(3, 8, 1, 1)
        return sd

    path, _ = write_wav2lip(tmp_path / "b", sd_edit=bad)
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(path)
    assert "output_block.1.weight (-> output_block.1.weight)" not in str(err.value)
    assert "output_block.1.weight: checkpoint has [3, 8, 1, 1], model expects [3, 4, 1, 1]" in str(err.value)


def test_unexpected_key_is_named(tmp_path):
    path, _ = write_wav2lip(tmp_path, sd_edit=lambda sd: {**sd, "face_decoder_blocks.7.0.conv_block.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="1 unexpected") as err:
        load_wav2lip(path)
    assert "face_decoder_blocks.7.0.conv_block.0.weight" in str(err.value)


def test_syncnet_and_discriminator_are_refused(tmp_path):
    (tmp_path / "s").mkdir()
    syncnet = {"module.face_encoder.0.conv_block.0.weight": torch.zeros(32, 15, 7, 7),
               "module.audio_encoder.0.conv_block.0.weight": torch.zeros(32, 1, 3, 3)}
    torch.save({"state_dict": syncnet, "optimizer": None, "global_step": 1}, tmp_path / "s" / "lipsync_expert.pth")
    with pytest.raises(CheckpointError, match="SyncNet lip-sync expert"):
        load_wav2lip(tmp_path / "s" / "lipsync_expert.pth")
    disc = {"face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(32, 3, 7, 7), "binary_pred.0.weight": torch.zeros(1)}
    torch.save({"state_dict": disc}, tmp_path / "s" / "visual_quality_disc.pth")
    with pytest.raises(CheckpointError, match="visual-quality discriminator"):
        load_wav2lip(tmp_path / "s" / "visual_quality_disc.pth")
    torch.save({"model": {}}, tmp_path / "s" / "other.pth")
    with pytest.raises(CheckpointError, match=r"\{'state_dict': \.\.\."):
        load_wav2lip(tmp_path / "s" / "other.pth")


# ----------------------------------------------------------------------------- contract

def test_wav2lip_hparams_are_the_contract(monkeypatch):
    check_lipsync_constants()
    assert media.LIPSYNC_MEL == media.MelSpec(16000, 800, 800, 200, 80, 55.0, 7600.0)
    monkeypatch.setattr(media, "LIPSYNC_MEL", dataclasses.replace(media.LIPSYNC_MEL, fmin=0.0, hop_length=160))
    with pytest.raises(ContractError) as err:
        check_lipsync_constants()
    msg = str(err.value)
    assert "fmin: Wav2Lip hparams.py 55 != 0 (export/contract/media.py LIPSYNC_MEL.fmin)" in msg
    assert "hop_length: Wav2Lip hparams.py 200 != 160" in msg


def test_audio_encoder_must_take_one_80x16_window(tmp_path):
    path, _ = write_wav2lip(tmp_path)
    model = load_wav2lip(path)
    check_lipsync_model(model, "ok")
    # a mel encoder over two channels
    first = model.audio_encoder[0].conv_block[0]
    model.audio_encoder[0].conv_block[0] = torch.nn.Conv2d(2, first.out_channels, 3, 1, 1)
    with pytest.raises(ContractError, match="audio_encoder.0.conv_block.0.weight takes 2 input channels"):
        check_lipsync_model(model, str(path))
    model.audio_encoder[0].conv_block[0] = first
    # an encoder whose strides do not reduce 80 x 16 to 1 x 1
    model.audio_encoder[3].conv_block[0].stride = (1, 1)
    with pytest.raises(ContractError, match=r"maps a \[1, 1, 80, 16\] mel window to \[1, 64, \d+, \d+\], "
                                            r"the face decoder expects \[1, 64, 1, 1\]"):
        check_lipsync_model(model, str(path))
