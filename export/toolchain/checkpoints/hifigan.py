"""jik876/hifi-gan generator checkpoints -> `export.toolchain.models.hifigan.Generator` (weight norm removed).

The official layout (the released `LJ_V1/generator_v1`, `LJ_V3/generator_v3`, `UNIVERSAL_V1/g_02500000`,
ming024's `hifigan/generator_LJSpeech.pth.tar`, and what hifi-gan's train.py writes as `g_<step>`):

* the generator file: `torch.save({"generator": generator.state_dict()})`, read with
  `weights_only=True`; weight-norm names (`conv_pre.weight_g`, `conv_pre.weight_v`, `ups.0.weight_g`,
  `resblocks.0.convs1.0.weight_v`, `conv_post.bias`, ...). A state dict whose weight norm was
  already removed (`conv_pre.weight`), or made with torch's newer parametrization
  (`conv_pre.parametrizations.weight.original0/1`), loads too.
* `config.json` beside it (or given): resblock, upsample_rates, upsample_kernel_sizes,
  upsample_initial_channel, resblock_kernel_sizes, resblock_dilation_sizes, num_mels, n_fft,
  hop_size, win_size, sampling_rate, fmin, fmax. Required: the architecture is not in the shapes.

`load_hifigan(path)` takes the generator file or a folder holding it (`generator*` or `g_*`; the
highest step among several `g_*`, as hifi-gan's scan_checkpoint does). Its audio settings are checked
against export/contract/media.py TTS_MEL, and prod(upsample_rates) against the hop, before the model is
built (ContractError).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from export.contract import media
from export.contract.presets import HiFiGANConfig
from export.toolchain.checkpoints.common import (
    CheckpointError,
    load_state_dict_strict,
    read_json,
    read_torch,
    unwrap_state_dict,
)
from export.toolchain.checkpoints.contract_check import (
    AudioSettings,
    ContractError,
    check_tts_audio,
    vocoder_audio_from_config,
)
from export.toolchain.models.hifigan import Generator

log = logging.getLogger(__name__)

ARCH_KEYS = ("resblock", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
             "resblock_kernel_sizes", "resblock_dilation_sizes")


@dataclass(frozen=True)
class HiFiGANFiles:
    checkpoint: Path
    config: Path

    def all(self) -> list[Path]:
        return [self.checkpoint, self.config]


def _is_generator_file(p: Path) -> bool:
    return p.is_file() and not p.name.endswith(".zip") and (
        p.name.startswith("generator") or re.fullmatch(r"g_\d+(\..*)?", p.name) is not None)


def locate_hifigan(path: str | os.PathLike, config: str | os.PathLike | None = None) -> HiFiGANFiles:
    p = Path(path)
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if _is_generator_file(f))
        if not found:
            zips = sorted(f.name for f in p.glob("*.zip"))
            hint = f" (unzip {zips} first: ming024 ships its generator zipped)" if zips else ""
            raise CheckpointError(f"{p}: no HiFi-GAN generator file (generator_v1, g_02500000, ...) in this "
                                  f"folder{hint}")
        if len(found) > 1:
            steps = sorted(f for f in found if f.name.startswith("g_"))
            if len(steps) != len(found):
                raise CheckpointError(f"{p}: several generator files ({[f.name for f in found]}); pass one")
            log.info("%s: %d generator checkpoints, using the latest %s", p, len(found), steps[-1].name)
            found = steps[-1:]
        p = found[0]
    elif not p.is_file():
        raise CheckpointError(f"{p}: no such file or folder")
    if config is not None:
        cfg = Path(config)
        if not cfg.is_file():
            raise CheckpointError(f"{cfg}: no such file (given as the HiFi-GAN config.json)")
    else:
        cfg = p.parent / "config.json"
        if not cfg.is_file():
            others = sorted(x.name for x in p.parent.glob("config*.json"))
            hint = f" (there is {others}: name it config.json or pass config=)" if others else ""
            raise CheckpointError(f"{p}: no config.json beside it{hint}; HiFi-GAN needs the config it was "
                                  f"trained with (config_v1.json, config_v3.json, ...)")
    return HiFiGANFiles(p, cfg)


def config_from_json(cfg: dict, source: str) -> HiFiGANConfig:
    """HiFiGANConfig from a jik876/hifi-gan config.json (parsed)."""
    absent = [k for k in ARCH_KEYS if k not in cfg]
    if absent:
        raise CheckpointError(f"{source}: a HiFi-GAN config.json needs {', '.join(absent)}")
    resblock = str(cfg["resblock"])
    problems = []
    if resblock not in ("1", "2"):
        problems.append(f"resblock {cfg['resblock']!r} (jik876's generator has '1' and '2')")
    rates, kernels = list(cfg["upsample_rates"]), list(cfg["upsample_kernel_sizes"])
    if len(rates) != len(kernels):
        problems.append(f"{len(rates)} upsample_rates but {len(kernels)} upsample_kernel_sizes")
    for u, k in zip(rates, kernels):
        if (k - u) % 2:
            problems.append(f"upsample kernel {k} with rate {u}: the output would not be frames * rate long")
    if len(cfg["resblock_kernel_sizes"]) != len(cfg["resblock_dilation_sizes"]):
        problems.append("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
    if problems:
        raise CheckpointError(f"{source}: unsupported HiFi-GAN config: " + "; ".join(problems))
    return HiFiGANConfig(
        num_mels=int(cfg.get("num_mels", media.TTS_MEL.n_mels)), upsample_rates=tuple(int(u) for u in rates),
        upsample_kernel_sizes=tuple(int(k) for k in kernels),
        upsample_initial_channel=int(cfg["upsample_initial_channel"]), resblock=resblock,
        resblock_kernel_sizes=tuple(int(k) for k in cfg["resblock_kernel_sizes"]),
        resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in cfg["resblock_dilation_sizes"]))


def read_generator_state_dict(file: Path) -> dict[str, Tensor]:
    ckpt = read_torch(file)
    hint = (" (a discriminator/optimizer checkpoint do_<step>: pass the g_<step> file)"
            if isinstance(ckpt, dict) and {"mpd", "msd"} & set(ckpt) else "")
    sd = unwrap_state_dict(ckpt, file, ("generator",),
                           "a HiFi-GAN generator checkpoint is {'generator': state_dict}", hint)
    # torch.nn.utils.parametrizations.weight_norm names -> the legacy weight_g / weight_v
    return {re.sub(r"\.parametrizations\.weight\.original([01])$",
                   lambda m: ".weight_g" if m.group(1) == "0" else ".weight_v", k): v for k, v in sd.items()}


def read_hifigan_config(path: str | os.PathLike, config: str | os.PathLike | None = None):
    """(HiFiGANFiles, parsed config.json, HiFiGANConfig, AudioSettings) without reading the weights."""
    files = locate_hifigan(path, config)
    raw = read_json(files.config)
    return files, raw, config_from_json(raw, str(files.config)), vocoder_audio_from_config(raw, str(files.config))


def load_hifigan(path: str | os.PathLike, *, config: str | os.PathLike | None = None, check_contract: bool = True,
                 dtype: torch.dtype = torch.float32) -> Generator:
    """The generator in eval mode with weight norm removed, from a local generator file or a folder holding one.

    The module carries `.checkpoint_files` (HiFiGANFiles) and `.audio_settings` (from config.json).
    check_contract: raise ContractError when config.json disagrees with export/contract/media.py TTS_MEL
    (prod(upsample_rates) == hop is required either way: our generator is built for that hop).
    """
    files, raw, h, audio = read_hifigan_config(path, config)
    if check_contract:
        check_tts_audio(vocoder=audio, upsample_rates=h.upsample_rates, upsample_source=str(files.config))
    elif math.prod(h.upsample_rates) != media.TTS_MEL.hop_length:
        hop_only = AudioSettings("vocoder", audio.file, {k: v for k, v in audio.values.items() if k == "hop_length"},
                                 audio.sources, complete=False)
        check_tts_audio(vocoder=hop_only, upsample_rates=h.upsample_rates, upsample_source=str(files.config))
    sd = read_generator_state_dict(files.checkpoint)
    model = Generator(h)
    if "conv_pre.weight" in sd and "conv_pre.weight_g" not in sd:
        model.remove_weight_norm()  # a checkpoint saved after remove_weight_norm()
    load_state_dict_strict(model, sd, source=str(files.checkpoint))
    if model.has_weight_norm():
        model.remove_weight_norm()
    model = model.to(dtype).eval()
    model.checkpoint_files = files
    model.audio_settings = audio
    model.config_json = raw
    return model


__all__ = ["ContractError", "HiFiGANFiles", "config_from_json", "load_hifigan", "locate_hifigan",
           "read_generator_state_dict", "read_hifigan_config"]
