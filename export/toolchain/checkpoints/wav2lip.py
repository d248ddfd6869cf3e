"""Rudrabha/Wav2Lip checkpoints -> `export.toolchain.models.wav2lip.Wav2Lip`.

The released `wav2lip.pth` and `wav2lip_gan.pth` (and what Wav2Lip's training scripts save):
`torch.save({"state_dict": model.state_dict(), "optimizer": ..., "global_step": ..., "global_epoch": ...})`,
read with `weights_only=True`. Models trained under `nn.DataParallel` have every key prefixed with
`module.` (Wav2Lip's inference.py strips it the same way). Key names are ours
(`face_encoder_blocks.0.0.conv_block.0.weight`, `audio_encoder.0.conv_block.1.running_mean`,
`output_block.1.weight`, ...). There is no config: the channel width comes from the first face
convolution (16 output channels = the published model, width 1.0).

Wav2Lip's audio front end is fixed by its hparams.py; `contract_check.check_lipsync_model` checks
those constants against export/contract/media.py and that the checkpoint's audio encoder takes 1 x 80 x 16
mel windows (ContractError). The SyncNet expert (`lipsync_expert.pth`) and the visual-quality
discriminator (`visual_quality_disc.pth`) are recognised and refused with a message saying so.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from export.contract.presets import Wav2LipConfig
from export.toolchain.checkpoints.common import CheckpointError, load_state_dict_strict, read_torch, unwrap_state_dict
from export.toolchain.checkpoints.contract_check import check_lipsync_model
from export.toolchain.models.wav2lip import Wav2Lip

log = logging.getLogger(__name__)

FIRST_FACE_CONV = "face_encoder_blocks.0.0.conv_block.0.weight"
PUBLISHED_FIRST_WIDTH = 16  # Conv2d(6, 16, kernel_size=7) in models/wav2lip.py


@dataclass(frozen=True)
class Wav2LipFiles:
    checkpoint: Path

    def all(self) -> list[Path]:
        return [self.checkpoint]


def locate_wav2lip(path: str | os.PathLike) -> Wav2LipFiles:
    p = Path(path)
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".pth", ".pt", ".tar"))
        if len(found) != 1:
            raise CheckpointError(f"{p}: expected one Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth) in this "
                                  f"folder, found {[f.name for f in found]}; pass the file")
        p = found[0]
    elif not p.is_file():
        raise CheckpointError(f"{p}: no such file or folder")
    return Wav2LipFiles(p)


def read_wav2lip_state_dict(file: Path) -> dict[str, Tensor]:
    """The generator's state dict, without DataParallel's `module.` prefix."""
    sd = unwrap_state_dict(read_torch(file), file, ("state_dict",),
                           "a Wav2Lip checkpoint is {'state_dict': ..., 'optimizer': ..., 'global_step': ...}")
    if any(k.startswith("face_encoder.") for k in sd) and not any(k.startswith("face_decoder_blocks.") for k in sd):
        raise CheckpointError(f"{file}: this is the SyncNet lip-sync expert (face_encoder.* / audio_encoder.*, "
                              f"lipsync_expert.pth), not the Wav2Lip generator: pass wav2lip.pth or wav2lip_gan.pth")
    if any(k.startswith("binary_pred.") for k in sd):
        raise CheckpointError(f"{file}: this is Wav2Lip's visual-quality discriminator (binary_pred.*, "
                              f"visual_quality_disc.pth), not the generator: pass wav2lip.pth or wav2lip_gan.pth")
    return sd


def config_from_state_dict(sd: dict[str, Tensor], source: str) -> Wav2LipConfig:
    if FIRST_FACE_CONV not in sd:
        raise CheckpointError(f"{source}: {FIRST_FACE_CONV} is missing, so this is not a Wav2Lip generator")
    first = int(sd[FIRST_FACE_CONV].shape[0])
    return Wav2LipConfig(width=first / PUBLISHED_FIRST_WIDTH)


def load_wav2lip(path: str | os.PathLike, *, check_contract: bool = True,
                 dtype: torch.dtype = torch.float32) -> Wav2Lip:
    """Wav2Lip in eval mode from a local wav2lip.pth / wav2lip_gan.pth (or a folder holding one).

    The module carries `.checkpoint_files`. check_contract: run contract_check.check_lipsync_model.
    """
    files = locate_wav2lip(path)
    source = str(files.checkpoint)
    sd = read_wav2lip_state_dict(files.checkpoint)
    config = config_from_state_dict(sd, source)
    if config.width != 1.0:
        log.info("%s: channel width %g of the published Wav2Lip", source, config.width)
    model = Wav2Lip(config)
    for key, value in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value)
    load_state_dict_strict(model, sd, source=source)
    model = model.to(dtype).eval()
    if check_contract:
        check_lipsync_model(model, source)
    model.checkpoint_files = files
    return model
