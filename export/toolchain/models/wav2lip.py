"""Wav2Lip generator (Rudrabha/Wav2Lip models/wav2lip.py + models/conv.py), 96x96 faces, inference only.

Module and parameter names are exactly the original's (`face_encoder_blocks.0.0.conv_block.0.weight`,
`audio_encoder.0.conv_block.1.running_mean`, `face_decoder_blocks.1.0.conv_block.0.weight`,
`output_block.0.conv_block.0.weight`, `output_block.1.weight`, ...), so with `width=1.0` the released
`wav2lip.pth` / `wav2lip_gan.pth` state dict (after stripping a `module.` prefix) loads with strict=True.

`Wav2LipConfig.width` multiplies every published channel count (round, at least 1); input channels
(6 face, 1 mel) and the 3 output channels are fixed, and the decoder's concatenations are sized from
the scaled widths, so any width gives a consistent network (0.125: 16, 32, 64 ... 512 -> 2, 4, 8 ... 64).
Only the single-frame path is kept: inputs are already 4-D (the original folds a time axis into the
batch when given 5-D inputs).

Shapes: audio_sequences [B, 1, 80, 16] (one mel window), face_sequences [B, 6, 96, 96] (lower-half-
masked target and reference, BGR in 0..1) -> [B, 3, 96, 96] in 0..1.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from export.contract.presets import Wav2LipConfig, preset_with
from export.contract.spec import WAV2LIP, sample_shape

# ---------------------------------------------------------------- models/conv.py

class Conv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size, stride, padding, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size, stride, padding, output_padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_block(x))


# ---------------------------------------------------------------- models/wav2lip.py

class Wav2Lip(nn.Module):
    def __init__(self, config: Wav2LipConfig = Wav2LipConfig()):
        super().__init__()
        self.config = config
        w = config.width

        def c(n: int) -> int:
            return max(1, round(n * w))

        def res(n: int) -> Conv2d:
            return Conv2d(c(n), c(n), kernel_size=3, stride=1, padding=1, residual=True)

        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(6, c(16), kernel_size=7, stride=1, padding=3)),  # 96,96

            nn.Sequential(Conv2d(c(16), c(32), kernel_size=3, stride=2, padding=1),  # 48,48
                          res(32), res(32)),

            nn.Sequential(Conv2d(c(32), c(64), kernel_size=3, stride=2, padding=1),  # 24,24
                          res(64), res(64), res(64)),

            nn.Sequential(Conv2d(c(64), c(128), kernel_size=3, stride=2, padding=1),  # 12,12
                          res(128), res(128)),

            nn.Sequential(Conv2d(c(128), c(256), kernel_size=3, stride=2, padding=1),  # 6,6
                          res(256), res(256)),

            nn.Sequential(Conv2d(c(256), c(512), kernel_size=3, stride=2, padding=1),  # 3,3
                          res(512)),

            nn.Sequential(Conv2d(c(512), c(512), kernel_size=3, stride=1, padding=0),  # 1,1
                          Conv2d(c(512), c(512), kernel_size=1, stride=1, padding=0)),
        ])
        face_channels = [c(16), c(32), c(64), c(128), c(256), c(512), c(512)]  # each block's output

        self.audio_encoder = nn.Sequential(
            Conv2d(1, c(32), kernel_size=3, stride=1, padding=1),
            res(32), res(32),

            Conv2d(c(32), c(64), kernel_size=3, stride=(3, 1), padding=1),
            res(64), res(64),

            Conv2d(c(64), c(128), kernel_size=3, stride=3, padding=1),
            res(128), res(128),

            Conv2d(c(128), c(256), kernel_size=3, stride=(3, 2), padding=1),
            res(256),

            Conv2d(c(256), c(512), kernel_size=3, stride=1, padding=0),
            Conv2d(c(512), c(512), kernel_size=1, stride=1, padding=0),
        )

        # decoder block i outputs dec[i] channels, then concatenates face_channels[-1 - i]
        dec = [c(512), c(512), c(512), c(384), c(256), c(128), c(64)]
        cat = [d + f for d, f in zip(dec, reversed(face_channels))]  # 1024, 1024, 768, 512, 320, 160, 80

        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(c(512), dec[0], kernel_size=1, stride=1, padding=0)),

            nn.Sequential(Conv2dTranspose(cat[0], dec[1], kernel_size=3, stride=1, padding=0),  # 3,3
                          res(512)),

            nn.Sequential(Conv2dTranspose(cat[1], dec[2], kernel_size=3, stride=2, padding=1, output_padding=1),
                          res(512), res(512)),  # 6,6

            nn.Sequential(Conv2dTranspose(cat[2], dec[3], kernel_size=3, stride=2, padding=1, output_padding=1),
                          res(384), res(384)),  # 12,12

            nn.Sequential(Conv2dTranspose(cat[3], dec[4], kernel_size=3, stride=2, padding=1, output_padding=1),
                          res(256), res(256)),  # 24,24

            nn.Sequential(Conv2dTranspose(cat[4], dec[5], kernel_size=3, stride=2, padding=1, output_padding=1),
                          res(128), res(128)),  # 48,48

            nn.Sequential(Conv2dTranspose(cat[5], dec[6], kernel_size=3, stride=2, padding=1, output_padding=1),
                          res(64), res(64)),  # 96,96
        ])

        self.output_block = nn.Sequential(
            Conv2d(cat[6], c(32), kernel_size=3, stride=1, padding=1),
            nn.Conv2d(c(32), 3, kernel_size=1, stride=1, padding=0),
            nn.Sigmoid())

    def forward(self, audio_sequences: Tensor, face_sequences: Tensor) -> Tensor:
        """audio_sequences [B, 1, 80, 16], face_sequences [B, 6, 96, 96] -> [B, 3, 96, 96]."""
        audio_embedding = self.audio_encoder(audio_sequences)  # B, 512, 1, 1

        feats = []
        x = face_sequences
        for f in self.face_encoder_blocks:
            x = f(x)
            feats.append(x)

        x = audio_embedding
        for f in self.face_decoder_blocks:
            x = f(x)
            x = torch.cat((x, feats[-1]), dim=1)
            feats.pop()

        return self.output_block(x)


# ---------------------------------------------------------------- construction and export

@torch.no_grad()
def init_weights(model: Wav2Lip, seed: int = 0) -> Wav2Lip:
    """Deterministic weights: PyTorch's default conv init under `seed`; BatchNorm with running
    statistics (mean ~0, var ~1), weight ~1 shrunk in residual layers, small bias."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.reset_parameters()
    for m in model.modules():
        if isinstance(m, (Conv2d, Conv2dTranspose)):
            bn = m.conv_block[1]
            n = bn.num_features
            scale = 0.5 if getattr(m, "residual", False) else 1.0
            bn.weight.copy_(scale * (1.0 + 0.1 * torch.randn(n, generator=gen)))
            bn.bias.copy_(0.1 * torch.randn(n, generator=gen))
            bn.running_mean.copy_(0.05 * torch.randn(n, generator=gen))
            bn.running_var.copy_(0.2 + 0.1 * torch.rand(n, generator=gen))
            bn.num_batches_tracked.fill_(1000)
    return model


def build(config: Wav2LipConfig, seed: int = 0) -> Wav2Lip:
    return init_weights(Wav2Lip(config), seed).eval()



class LipsyncGraph(nn.Module):
    """wav2lip: (mel [B, 1, 80, 16], faces [B, 6, 96, 96]) -> frames [B, 3, 96, 96]."""

    SPEC = WAV2LIP

    def __init__(self, model: Wav2Lip):
        super().__init__()
        self.model = model
        self.preset = preset_with("wav2lip", model.config)
        self.eval()

    def forward(self, mel: Tensor, faces: Tensor) -> Tensor:
        return self.model(mel, faces)

    def example_inputs(self, batch: int = 1, seed: int = 0, **sizes: int) -> tuple[Tensor, ...]:
        """Mel in Wav2Lip's symmetric [-4, 4] range; faces in 0..1 with the target's lower half masked."""
        shapes = sample_shape(self.SPEC, self.preset, batch, **sizes)
        gen = torch.Generator().manual_seed(seed)
        mel = torch.rand(shapes["mel"], generator=gen) * 8.0 - 4.0
        faces = torch.rand(shapes["faces"], generator=gen)
        faces[:, :3, faces.shape[2] // 2:] = 0.0  # Wav2Lip masks the lower half of the target frame
        return mel, faces
