"""jik876/hifi-gan generator checkpoint loading (export/toolchain/checkpoints/hifigan.py) and the TTS/vocoder audio contract.

Checkpoints are written into tmp_path in the official layout: `{"generator": state_dict}` with
weight-norm `weight_g` / `weight_v` keys (names and shapes spelled out below from hifi-gan's
models.py), saved as `generator_v1` / `g_<step>` beside the training config.json. Nothing is downloaded.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from export.contract.presets import HiFiGANConfig
from export.toolchain.checkpoints import CheckpointError
from export.toolchain.checkpoints.contract_check import (
    AudioSettings,
    ContractError,
    check_tts_audio,
    tts_audio_from_preprocess,
    vocoder_audio_from_config,
)
from export.toolchain.checkpoints.hifigan import load_hifigan
from export.toolchain.models import hifigan
from export.toolchain.weights import check_tts_vocoder

V1 = HiFiGANConfig(upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4), upsample_initial_channel=32,
                   resblock="1", resblock_kernel_sizes=(3, 7), resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)))
V3 = HiFiGANConfig(upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8), upsample_initial_channel=32,
                   resblock="2", resblock_kernel_sizes=(3, 5, 7), resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)))


def generator_shapes(h: HiFiGANConfig) -> dict[str, tuple[int, ...]]:
    """Every key of hifi-gan's Generator.state_dict() (weight norm applied) and its shape."""
    s: dict[str, tuple[int, ...]] = {}

    def wn(prefix: str, cin: int, cout: int, k: int, transposed: bool = False) -> None:
        w = (cin, cout, k) if transposed else (cout, cin, k)  # ConvTranspose1d stores [in, out, k]
        s[prefix + ".weight_g"] = (w[0], 1, 1)  # weight_norm(dim=0)
        s[prefix + ".weight_v"] = w
        s[prefix + ".bias"] = (cout,)

    c = h.upsample_initial_channel
    wn("conv_pre", h.num_mels, c, 7)
    for i, k in enumerate(h.upsample_kernel_sizes):
        wn(f"ups.{i}", c // 2 ** i, c // 2 ** (i + 1), k, transposed=True)
    n = len(h.resblock_kernel_sizes)
    for i in range(len(h.upsample_rates)):
        ch = c // 2 ** (i + 1)
        for j, (k, dil) in enumerate(zip(h.resblock_kernel_sizes, h.resblock_dilation_sizes)):
            p = f"resblocks.{i * n + j}"
            if h.resblock == "1":
                for m in range(3):
                    wn(f"{p}.convs1.{m}", ch, ch, k)
                    wn(f"{p}.convs2.{m}", ch, ch, k)
            else:
                for m in range(len(dil[:2])):
                    wn(f"{p}.convs.{m}", ch, ch, k)
    wn("conv_post", c // 2 ** len(h.upsample_rates), 1, 7)
    return s


def config_json(h: HiFiGANConfig = V1, **over) -> dict:
    """The keys of hifi-gan's config_v1.json (architecture from h)."""
    cfg = {
        "resblock": h.resblock, "num_gpus": 0, "batch_size": 16, "learning_rate": 0.0002, "adam_b1": 0.8,
        "adam_b2": 0.99, "lr_decay": 0.999, "seed": 1234,
        "upsample_rates": list(h.upsample_rates), "upsample_kernel_sizes": list(h.upsample_kernel_sizes),
        "upsample_initial_channel": h.upsample_initial_channel,
        "resblock_kernel_sizes": list(h.resblock_kernel_sizes),
        "resblock_dilation_sizes": [list(d) for d in h.resblock_dilation_sizes],
        "segment_size": 8192, "num_mels": 80, "num_freq": 1025, "n_fft": 1024, "hop_size": 256, "win_size": 1024,
        "sampling_rate": 22050, "fmin": 0, "fmax": 8000, "fmax_for_loss": None, "num_workers": 4,
        "dist_config": {"dist_backend": "nccl", "dist_url": "tcp://localhost:54321", "world_size": 1},
    }
    cfg.update(over)
    return cfg


def write_hifigan(folder, h: HiFiGANConfig = V1, seed: int = 0, *, name: str = "generator_v1", config: dict | None = None,
                  sd_edit=None):
    """(generator file, the reference generator with weight norm removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    ref = hifigan.build(h, seed)
    sd = ref.state_dict()
    if sd_edit is not None:
        sd = sd_edit(dict(sd))
    torch.save({"generator": sd}, folder / name)
    (folder / "config.json").write_text(json.dumps(config or config_json(h)))
    ref.remove_weight_norm()  # the file is written: fold g and v into plain weights for the reference
    return folder / name, ref


def mel(frames: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 80, frames, generator=torch.Generator().manual_seed(seed)) * 13.0 - 11.0


def assert_same(a, b):
    with torch.no_grad():
        x, y = a(mel()), b(mel())
    assert x.shape == (2, 1, 12 * 256)
    torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- layout

@pytest.mark.parametrize("h", [V1, V3], ids=["resblock1", "resblock2"])
def test_state_dict_names_and_shapes_are_hifigans(h):
    model = hifigan.Generator(h)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == generator_shapes(h)


@pytest.mark.parametrize("h", [V1, V3], ids=["resblock1", "resblock2"])
def test_load_generator_and_remove_weight_norm(tmp_path, h):
    path, ref = write_hifigan(tmp_path, h, seed=3)
    model = load_hifigan(path)
    assert model.h == h and not model.training
    assert not model.has_weight_norm()
    assert not any(k.endswith(("weight_g", "weight_v")) for k in model.state_dict())
    assert_same(model, ref)
    assert model.checkpoint_files.config == tmp_path / "config.json"
    assert model.audio_settings.values["sample_rate"] == 22050


def test_folder_picks_latest_g_step_and_generator_names(tmp_path):
    write_hifigan(tmp_path / "run", seed=1, name="g_00100000")
    path, ref = write_hifigan(tmp_path / "run", seed=2, name="g_00200000")
    torch.save({"mpd": {}, "msd": {}, "optim_g": {}, "optim_d": {}, "steps": 1, "epoch": 1}, tmp_path / "run" / "do_00200000")
    model = load_hifigan(tmp_path / "run")
    assert model.checkpoint_files.checkpoint == path
    assert_same(model, ref)
    _, ref = write_hifigan(tmp_path / "ming024", seed=4, name="generator_LJSpeech.pth.tar")
    assert_same(load_hifigan(tmp_path / "ming024"), ref)


def test_discriminator_file_is_refused_with_a_hint(tmp_path):
    write_hifigan(tmp_path)
    torch.save({"mpd": {}, "msd": {}, "steps": 1}, tmp_path / "do_00000100")
    with pytest.raises(CheckpointError, match="do_<step>"):
        load_hifigan(tmp_path / "do_00000100")


def test_weight_norm_already_removed_parametrizations_and_module_prefix(tmp_path):
    plain = hifigan.build(V1, 5)
    plain.remove_weight_norm()
    torch.save({"generator": plain.state_dict()}, (tmp_path / "a").mkdir() or tmp_path / "a" / "generator_v1")
    (tmp_path / "a" / "config.json").write_text(json.dumps(config_json()))
    assert_same(load_hifigan(tmp_path / "a"), plain)

    def param(k: str) -> str:  # torch.nn.utils.parametrizations.weight_norm's names
        return k.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1")

    path, ref2 = write_hifigan(tmp_path / "b", seed=5, sd_edit=lambda sd: {"module." + param(k): v for k, v in sd.items()})
    assert_same(load_hifigan(path), ref2)


def test_config_json_required_or_given(tmp_path):
    path, ref = write_hifigan(tmp_path)
    (tmp_path / "config.json").rename(tmp_path / "config_v1.json")
    with pytest.raises(CheckpointError, match=r"no config.json beside it \(there is \['config_v1.json'\]"):
        load_hifigan(path)
    assert_same(load_hifigan(path, config=tmp_path / "config_v1.json"), ref)


def test_missing_key_and_shape_mismatch_are_named(tmp_path):
    path, _ = write_hifigan(tmp_path / "a", sd_edit=lambda sd: {k: v for k, v in sd.items() if k != "ups.1.weight_g"})
    with pytest.raises(CheckpointError, match="1 missing") as err:
        load_hifigan(path)
    assert "ups.1.weight_g" in str(err.value)
    # a config with a wider first layer than the weights: every layer mismatches, each named with both shapes
    path, _ = write_hifigan(tmp_path / "b", config=config_json(V1, upsample_initial_channel=64))
    with pytest.raises(CheckpointError) as err:
        load_hifigan(path)
    assert "conv_pre.weight_v: checkpoint has [32, 80, 7], model expects [64, 80, 7]" in str(err.value)


def test_bad_config_and_structure(tmp_path):
    path, _ = write_hifigan(tmp_path / "a", config={k: v for k, v in config_json().items() if k != "resblock"})
    with pytest.raises(CheckpointError, match="needs resblock"):
        load_hifigan(path)
    path, _ = write_hifigan(tmp_path / "b", config=config_json(resblock="3"))
    with pytest.raises(CheckpointError, match="resblock '3'"):
        load_hifigan(path)
    (tmp_path / "c").mkdir()
    torch.save({"model": {}}, tmp_path / "c" / "generator_v1")
    (tmp_path / "c" / "config.json").write_text(json.dumps(config_json()))
    with pytest.raises(CheckpointError, match=r"\{'generator': state_dict\}"):
        load_hifigan(tmp_path / "c")


# ----------------------------------------------------------------------------- audio contract

def test_vocoder_config_mismatch_names_field_values_and_file(tmp_path):
    path, _ = write_hifigan(tmp_path, config=config_json(sampling_rate=16000, fmax=7600))
    with pytest.raises(ContractError) as err:
        load_hifigan(path)
    msg, cfg = str(err.value), str(tmp_path / "config.json")
    assert f"sample_rate: vocoder 16000 ({cfg}: sampling_rate), contract 22050 " \
           f"(export/contract/media.py TTS_MEL.sample_rate)" in msg
    assert f"fmax: vocoder 7600 ({cfg}: fmax)" in msg
    assert "n_fft:" not in msg and "hop_length:" not in msg
    assert load_hifigan(path, check_contract=False).audio_settings.values["sample_rate"] == 16000


def test_upsample_product_must_equal_hop(tmp_path):
    h = HiFiGANConfig(upsample_rates=(8, 8, 2), upsample_kernel_sizes=(16, 16, 4), upsample_initial_channel=32,
                      resblock="2", resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 2),))
    (tmp_path / "generator_v1").write_bytes(b"")  # never read: the config is refused first
    (tmp_path / "config.json").write_text(json.dumps(config_json(h)))
    for check in (True, False):  # our generator is built for the contract's hop either way
        with pytest.raises(ContractError, match=r"upsample_rates: prod\(\[8, 8, 2\]\) = 128 .* != vocoder hop_size 256 "
                                                r".*contract hop 256"):
            load_hifigan(tmp_path, check_contract=check)


def _tts_folder(folder, **audio):
    pre = {"preprocessing": {
        "audio": {"sampling_rate": audio.get("sampling_rate", 22050), "max_wav_value": 32768.0},
        "stft": {"filter_length": 1024, "hop_length": audio.get("hop", 256), "win_length": 1024},
        "mel": {"n_mel_channels": 80, "mel_fmin": 0, "mel_fmax": audio.get("fmax", 8000)}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "900000.pth.tar").write_bytes(b"")  # the contract is checked from the configs, before any weights
    (folder / "preprocess.yaml").write_text(yaml.safe_dump(pre))
    return folder


def test_tts_and_vocoder_must_agree_naming_both(tmp_path):
    tts = _tts_folder(tmp_path / "tts")
    write_hifigan(tmp_path / "voc", config=config_json(sampling_rate=16000))
    with pytest.raises(ContractError) as err:
        check_tts_vocoder(tts, tmp_path / "voc")
    msg = str(err.value)
    assert (f"sample_rate: TTS 22050 ({tts / 'preprocess.yaml'}: preprocessing.audio.sampling_rate), "
            f"vocoder 16000 ({tmp_path / 'voc' / 'config.json'}: sampling_rate), contract 22050") in msg
    assert "TTS and vocoder" in msg
    # agreeing configs pass, and say what was compared
    write_hifigan(tmp_path / "voc2")
    assert "TTS (preprocess.yaml) and vocoder (config.json" in check_tts_vocoder(tts, tmp_path / "voc2")


def test_check_tts_audio_on_settings():
    tts = tts_audio_from_preprocess({"preprocessing": {
        "audio": {"sampling_rate": 22050}, "stft": {"filter_length": 1024, "hop_length": 256, "win_length": 1024},
        "mel": {"n_mel_channels": 80, "mel_fmin": 0, "mel_fmax": None}}}, "p.yaml")
    voc = vocoder_audio_from_config(config_json(), "c.json")
    with pytest.raises(ContractError, match=r"fmax: TTS null \(p.yaml: preprocessing.mel.mel_fmax\), "
                                            r"vocoder 8000 \(c.json: fmax\), contract 8000"):
        check_tts_audio(tts, voc, upsample_rates=(8, 8, 2, 2))
    check_tts_audio(None, voc, upsample_rates=(8, 8, 2, 2))  # agrees with the contract
    partial = AudioSettings("vocoder", "c.json", {"n_mels": 80}, {"n_mels": "c.json: num_mels"})
    with pytest.raises(ContractError, match="sample_rate: vocoder config c.json does not state it"):
        check_tts_audio(vocoder=partial)
