"""The `lipsync` stage without learned weights: a viseme-driven warp of the mouth and jaw.

Input: face crops [B, 3, S, S] (BGR 0..1, S = media.MOUTH_CROP) centred on the mouth keypoint and one face-box
width a side, and viseme parameters [B, 3] = open (0..1), width (-1 rounded .. +1 spread), teeth (0..1, the lower
lip under the upper teeth for f/v). Output: the crops with the jaw dropped, the lips parted, spread or rounded,
and a mouth interior (a dark cavity with the upper teeth as a lighter band) where they part.

In the crop's coordinates (u, v) in [-1, 1] (v down) the mouth is at (0, 0), the chin near v = 0.7. Every
displacement is multiplied by a taper that is exactly 0 on the crop's border and the interior's mask vanishes
there too, so the output equals the input along the border: pasted back, the crop leaves no seam. With
open = teeth = width = 0 the output is the input (closed in silence). No parameter is learned: the buffers are a
coordinate grid, the shapes below are constants.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.contract import media
from export.contract.spec import LIPSYNC

JAW = 0.22  # jaw drop at open = 1, in half-crop units (0.11 face widths)
UPPER = 0.25  # the upper lip rises this fraction of the jaw drop
SPREAD = 0.22  # horizontal stretch of the mouth region at width = +1 (a narrowing at -1)
TUCK = 0.07  # the lower lip's rise at teeth = 1
MOUTH_HALF_WIDTH = 0.40  # the mouth's half width, half-crop units
LIP = 0.03  # the lips' inner rims: the cavity shows inside them
CAVITY_BGR = (0.10, 0.09, 0.22)  # dark red-brown mouth interior
TEETH_BGR = (0.80, 0.82, 0.86)  # upper teeth
FEATHER = 0.02  # soft edge of the cavity, half-crop units


def _smoothstep(x: Tensor) -> Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class MouthWarp(nn.Module):
    def __init__(self, size: int = media.MOUTH_CROP):
        super().__init__()
        axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0  # pixel centres, align_corners False
        v, u = torch.meshgrid(axis, axis, indexing="ij")  # [S, S]
        self.register_buffer("u", u, persistent=False)
        self.register_buffer("v", v, persistent=False)
        border = 1.0 - torch.maximum(u.abs(), v.abs())  # 0 on the border, 1 at the centre
        self.register_buffer("taper", _smoothstep(border / 0.35), persistent=False)  # exactly 0 on the border

    def forward(self, faces: Tensor, visemes: Tensor) -> Tensor:
        u, v, taper = self.u, self.v, self.taper
        open_ = visemes[:, 0].clamp(0.0, 1.0).view(-1, 1, 1)  # [B, 1, 1]
        width = visemes[:, 1].clamp(-1.0, 1.0).view(-1, 1, 1)
        teeth = visemes[:, 2].clamp(0.0, 1.0).view(-1, 1, 1)
        jaw = JAW * open_
        below = torch.sigmoid((v - 0.03) / 0.04)  # the lower lip, chin and jaw
        lower = below * torch.exp(-(u / 0.75) ** 2) * taper  # the jaw moves as a whole, wide
        upper = (1.0 - below) * torch.exp(-((v + 0.06) / 0.14) ** 2 - (u / 0.5) ** 2) * taper
        lip = below * torch.exp(-((v - 0.09) / 0.09) ** 2 - (u / 0.45) ** 2) * taper
        mouth = torch.exp(-(u / 0.6) ** 2 - (v / 0.3) ** 2) * taper
        dy = jaw * lower - UPPER * jaw * upper - TUCK * teeth * lip  # [B, S, S], down positive
        dx = SPREAD * width * u * mouth
        grid = torch.stack([u - dx, v - dy], dim=-1)  # where each output pixel comes from
        warped = F.grid_sample(faces, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # the opening between the lips: from the raised upper lip to the dropped lower lip, minus the lips
        top, bottom = -UPPER * jaw + LIP / 2, jaw - LIP / 2
        half_h = ((bottom - top) / 2).clamp_min(0.0)
        centre = (top + bottom) / 2
        half_w = MOUTH_HALF_WIDTH * 0.75 * (1.0 + 0.45 * width.clamp(max=0.0) + 0.25 * width.clamp(min=0.0))
        r = ((u / half_w) ** 2 + ((v - centre) / (half_h + 1e-4)) ** 2).sqrt()  # 1 on the opening's edge
        edge = FEATHER / (half_h + FEATHER)  # a soft rim, thinner than the opening
        inside = _smoothstep((1.0 - r) / edge) * _smoothstep(half_h / FEATHER) * taper  # [B, S, S]
        teeth_band = torch.sigmoid(((top + 0.45 * half_h) - v) / 0.015) * (1.0 - teeth * 0.5)
        cavity = torch.tensor(CAVITY_BGR, device=faces.device).view(1, 3, 1, 1)
        white = torch.tensor(TEETH_BGR, device=faces.device).view(1, 3, 1, 1)
        shade = (1.0 - 0.5 * (1.0 - r).clamp(0.0, 1.0)).unsqueeze(1)  # darker towards the throat
        interior = cavity * shade + (white - cavity * shade) * teeth_band.unsqueeze(1)
        m = inside.unsqueeze(1)
        return warped * (1.0 - m) + interior * m


class LipsyncGraph(nn.Module):
    """lipsync: (faces [B, 3, S, S] float32 BGR 0..1, visemes [B, 3] float32) -> frames [B, 3, S, S]."""

    SPEC = LIPSYNC

    def __init__(self, warp: MouthWarp | None = None):
        super().__init__()
        self.warp = warp or MouthWarp()

    def forward(self, faces: Tensor, visemes: Tensor) -> Tensor:
        return self.warp(faces, visemes)

    def example_inputs(self, batch: int = 1, seed: int = 0, **sizes: int) -> tuple[Tensor, ...]:
        """Smooth random crops and visemes covering the range (open 0..1, width -1..1, teeth 0..1)."""
        gen = torch.Generator().manual_seed(seed)
        coarse = torch.rand(batch, 3, 8, 8, generator=gen)
        faces = F.interpolate(coarse, size=(media.MOUTH_CROP, media.MOUTH_CROP), mode="bilinear", align_corners=False)
        visemes = torch.rand(batch, 3, generator=gen) * torch.tensor([1.0, 2.0, 1.0]) - torch.tensor([0.0, 1.0, 0.0])
        return faces, visemes


def build(config=None, seed: int = 0) -> MouthWarp:
    """The warp (nothing to seed: no learned weights)."""
    return MouthWarp().eval()
