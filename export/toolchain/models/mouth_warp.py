"""The `lipsync` stage without learned weights: a viseme-driven warp of the lips, jaw and chin in a mouth crop.

Inputs (export/contract/mouth.py): `faces` [B, 3, S, S] BGR 0..1, square crops centred on the mouth and upright
with the face; `visemes` [B, 5] = open, spread, press, dental, teeth (ensemble/visemes.py); `mouth` [B, 6] = where
the avatar's lips are in the crop at rest: lip line centre (x, y), half width, the rest opening above and below
the lip line (an avatar smiling with its teeth shown has one), and the corners' lift. Output `frames`
[B, 3, S, S]: the crops with the mouth moved.

How (backward mapping, F.grid_sample; crop coordinates u, v in [-1, 1], v down, `a` = the mouth half width):
  - spread/round: a horizontal stretch (or squeeze) of the mouth region about its centre;
  - the face splits along the avatar's lip opening into an upper part (upper lip, cheeks, nose: raised a little
    when the mouth opens) and a lower part (lower lip rigid near its edge, blending below it into the jaw/chin
    drop, which fades out under the chin). Each part is sampled with its own field; the lip edges move by the
    column profile of a lens (1 - x^2)^0.7 that is zero at the corners, so past the corners both parts move alike
    and the face stays continuous;
  - press (p b m) brings the two lip edges together (past each other by a squeeze), covering even the avatar's own
    rest opening; dental (f v) lifts the lower lip to just under the upper teeth edge;
  - where the moved lip edges leave a gap, the mouth interior is drawn behind them: the avatar's own rest opening
    (its own teeth, fixed to the skull), else a dark cavity coloured from the avatar's own lips, a tongue, the
    lower teeth riding on the jaw and the upper teeth fixed to the skull (ivory scaled to the skin's brightness,
    with faint gaps, shadowed under the lip). Edges are anti-aliased over ~0.8 pixel.
Every displacement is multiplied by a border taper that is exactly 0 on the outer 2 % of the crop and 1 inside
0.80, and the interior only appears between parted lips, so on the crop's border the output IS the input (to
float rounding): pasted back, the crop leaves no seam. visemes = 0 and press = 0 gives the input back.
No parameter is learned: the buffers are the pixel-centre grid and the border taper; the shapes are the
constants below.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.contract.mouth import CROP_SIZE, MOUTH_DIMS, VISEMES
from export.contract.spec import LIPSYNC

# Lip and jaw travel, in mouth half widths (a) at parameter 1
LOWER_LIP_DROP = 0.75  # the lower lip's edge at open = 1
UPPER_LIP_RAISE = 0.10  # the upper lip's edge at open = 1
TEETH_LIP_RAISE = 0.05  # the upper lip's edge at teeth = 1
CHIN_DROP = 0.55  # the chin and jaw at open = 1
DENTAL_UPPER_RAISE = 0.08  # the upper lip at dental = 1
DENTAL_TUCK = 0.03  # the lower lip's edge sits this far above the upper teeth's edge at dental = 1
PRESS_SQUEEZE = 0.04  # each lip edge goes this far past the meeting line at press = 1 (lips look pressed)
PRESS_RANGE = (0.15, 0.70)  # press below the first value leaves the lips alone, above the second shuts them
SPREAD_OUT = 0.12  # the corners move out this much at spread = +1
ROUND_IN = 0.30  # ... and in this much at spread = -1 (the lip corners then cover the sides of a rest opening)
ROUND_UNSMILE = 0.7  # rounding lowers the corners' smile lift by this fraction at spread = -1
SEAM = 0.30  # shut lips: the line where they meet is darkened by up to this much (times SEAM_BGR)
SEAM_BGR = (1.0, 1.0, 0.7)  # ... less in red: the line is a darker lip colour, not grey
SEAM_WIDTH = 0.05  # ... over this half height, in a
LENS_POWER = 0.7  # the lip-edge profile (1 - x^2)^p: 0.5 an ellipse, higher more pointed corners
# Zones, in a, relative to the lip line / the lips' rest edges
UPPER_RIGID, UPPER_FREE = 0.40, 0.95  # above the upper lip's edge: moves fully up to the first, not at all past the second
LOWER_LIP = (0.05, 0.45)  # below the lower lip's edge: its own travel blends into the jaw's over this band
CHIN = (1.5, 2.4)  # below the lip line: the jaw drop holds to the first and is gone at the second
JAW_HALF_WIDTH = 2.6  # the jaw moves with a compact profile this wide (half width)
SPREAD_ZONE = (1.9, 1.1)  # the spread/round stretch's half width and half height
# Border taper on |u|, |v|: 1 inside the first, 0 from the second outwards
TAPER = (0.80, 0.96)
# Interior (BGR 0..1 multipliers)
CAVITY_BGR = (0.12, 0.14, 0.30)  # the cavity: these times the avatar's lip colour (dark red)
CAVITY_CORE = 0.45  # ... darkened by up to this much in the middle
TONGUE_BGR = (0.30, 0.33, 0.56)  # the tongue: these times the lip colour (in the mouth's shade)
TONGUE_HALF_WIDTH = 0.62  # in a
TEETH_BGR = (0.80, 0.88, 0.92)  # ivory, scaled by the skin's brightness / SKIN_REF (clamped to TEETH_GAIN)
SKIN_REF = 0.62
TEETH_GAIN = (0.55, 1.05)
UPPER_TEETH = (0.06, 0.10)  # synthetic upper teeth reach this far below the lip line: first + second * teeth
LOWER_TEETH = (0.02, 0.06)  # lower teeth show this much above the lower lip: first + second * teeth (when open)
TOOTH_WIDTH = 0.26  # in a: faint gaps between teeth this far apart, one at the centre
EDGE_PIXELS = 0.8  # anti-aliasing width of every edge, pixels


def _sat(x: Tensor) -> Tensor:
    return x.clamp(0.0, 1.0)


def _smoothstep(e0, e1, x: Tensor) -> Tensor:
    t = _sat((x - e0) / (e1 - e0))
    return t * t * (3.0 - 2.0 * t)


def _compact(z: Tensor) -> Tensor:
    """(1 - z^2)^2 inside |z| < 1, exactly 0 outside: a smooth bump of compact support."""
    w = (1.0 - z * z).clamp(min=0.0)
    return w * w


class MouthWarp(nn.Module):
    """(faces [B, 3, S, S], visemes [B, 5], mouth [B, 6]) -> frames [B, 3, S, S]; see the module docstring."""

    def __init__(self, size: int = CROP_SIZE):
        super().__init__()
        self.size = size
        axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0  # pixel centres, align_corners False
        v, u = torch.meshgrid(axis, axis, indexing="ij")  # [S, S]
        self.register_buffer("u", u[None], persistent=False)  # [1, S, S]
        self.register_buffer("v", v[None], persistent=False)
        taper = _smoothstep(TAPER[1], TAPER[0], u.abs()) * _smoothstep(TAPER[1], TAPER[0], v.abs())
        self.register_buffer("taper", taper[None], persistent=False)
        # where the avatar's colours are read, in a from the lip line's centre: lower lip (x) and skin (x, y)
        self.register_buffer("lip_x", torch.tensor([-0.3, 0.0, 0.3]).view(1, 1, 3), persistent=False)
        self.register_buffer("skin_x", torch.tensor([-1.25, 1.25, 0.0]).view(1, 1, 3), persistent=False)
        self.register_buffer("skin_y", torch.tensor([0.6, 0.6, 1.15]).view(1, 1, 3), persistent=False)
        for name, bgr in (("teeth_bgr", TEETH_BGR), ("cavity_bgr", CAVITY_BGR), ("tongue_bgr", TONGUE_BGR),
                          ("seam_bgr", SEAM_BGR)):
            self.register_buffer(name, torch.tensor(bgr).view(1, 3, 1, 1), persistent=False)
        self.eps = EDGE_PIXELS * 2.0 / size  # one edge width in crop units

    def forward(self, faces: Tensor, visemes: Tensor, mouth: Tensor) -> Tensor:
        u, v, taper, eps = self.u, self.v, self.taper, self.eps

        def col(t: Tensor, i: int) -> Tensor:
            return t[:, i].reshape(-1, 1, 1)  # [B, 1, 1]

        x0, y0, a = col(mouth, 0), col(mouth, 1), col(mouth, 2).clamp(min=0.02)
        gu, gl, smile = col(mouth, 3).clamp(min=0.0), col(mouth, 4).clamp(min=0.0), col(mouth, 5)
        o, s = col(visemes, 0).clamp(0.0, 1.0), col(visemes, 1).clamp(-1.0, 1.0)
        p, f, t = col(visemes, 2).clamp(0.0, 1.0), col(visemes, 3).clamp(0.0, 1.0), col(visemes, 4).clamp(0.0, 1.0)
        q = _smoothstep(PRESS_RANGE[0], PRESS_RANGE[1], p)  # lips shut

        # 1. spread / round: where each output column comes from horizontally
        xr = (u - x0) / a
        yr = (v - (y0 - smile * a * xr.clamp(-1.0, 1.0) ** 2)) / a
        r = (-s).clamp(min=0.0)  # rounding
        gain = SPREAD_OUT * s.clamp(min=0.0) - ROUND_IN * r
        zone = _compact(xr / SPREAD_ZONE[0]) * _compact(yr / SPREAD_ZONE[1]) * taper
        x1 = u - gain * (u - x0) * zone
        xr1 = (x1 - x0) / a
        d_round = ROUND_UNSMILE * r * smile * a * xr1.clamp(-1.0, 1.0) ** 2 * zone  # corners down, both parts

        # 2. the lips at rest, at the source column: lip line, upper lip's edge Ur, lower lip's edge Lr
        lens = (1.0 - xr1 * xr1).clamp(min=0.0) ** LENS_POWER
        line = y0 - smile * a * xr1.clamp(-1.0, 1.0) ** 2
        ur, lr = line - gu * lens, line + gl * lens

        # 3. where the lip edges go (at the centre; positive is down)
        du = -(UPPER_LIP_RAISE * o + TEETH_LIP_RAISE * t) * a
        dl = LOWER_LIP_DROP * o * a
        teeth_edge = torch.maximum(gl, (UPPER_TEETH[0] + UPPER_TEETH[1]) * a)  # the upper teeth's lower edge
        du = du * (1.0 - f) - DENTAL_UPPER_RAISE * a * f
        dl = dl * (1.0 - f) + (teeth_edge - DENTAL_TUCK * a - gl) * f
        meet = (gu + gl) / 2 + PRESS_SQUEEZE * a
        du = du * (1.0 - q) + meet * q
        dl = dl * (1.0 - q) - meet * q
        top, bottom = ur + du * lens, lr + dl * lens  # the moved edges
        gap = bottom - top  # the opening's height at this column (<= 0: lips touch)

        # 4. the upper part: lip edge travel, rigid over the upper lip, gone below the nose
        d_up = du * lens * _smoothstep(ur - UPPER_FREE * a, ur - UPPER_RIGID * a, v) * taper
        ys_up = v - d_up - d_round
        # 5. the lower part: the lip's own travel near its edge, the jaw's below, gone under the chin
        below_lip = _smoothstep(lr + LOWER_LIP[0] * a, lr + LOWER_LIP[1] * a, v - dl * lens)
        chin = CHIN_DROP * o * (1.0 - 0.8 * f) * a * _compact(xr1 / JAW_HALF_WIDTH)
        fade = 1.0 - _smoothstep(line + CHIN[0] * a, line + CHIN[1] * a, v)
        d_low = (dl * lens * (1.0 - below_lip) + chin * below_lip) * fade * taper
        ys_low = v - d_low - d_round

        upper = F.grid_sample(faces, torch.stack([x1, ys_up], dim=-1), mode="bilinear", padding_mode="border",
                              align_corners=False)
        lower = F.grid_sample(faces, torch.stack([x1, ys_low], dim=-1), mode="bilinear", padding_mode="border",
                              align_corners=False)

        # 6. which part shows: the lower lip in front, then the upper, the interior where they part
        m_low = _sat((ys_low - lr) / eps + 0.5)
        m_up = _sat((ur - ys_up) / eps + 0.5)
        m_in = (1.0 - m_low) * (1.0 - m_up) * _sat(gap / eps)

        interior = self._interior(faces, u, v, x0, y0, a, gu, gl, smile, o, t, top, bottom, gap, xr, xr1)
        m_low, m_up, m_in = m_low.unsqueeze(1), m_up.unsqueeze(1), m_in.unsqueeze(1)
        out = m_low * lower + (1.0 - m_low - m_in) * upper + m_in * interior
        # shut lips: a darker line where they meet (fades out towards the corners)
        meet_line = line + d_round + (gl - gu) / 2 * lens
        seam = SEAM * q * lens.sqrt() * torch.exp(-(((v - meet_line) / (SEAM_WIDTH * a + eps)) ** 2)) * taper
        return (out * (1.0 - seam.unsqueeze(1) * self.seam_bgr)).clamp(0.0, 1.0)

    def _interior(self, faces, u, v, x0, y0, a, gu, gl, smile, o, t, top, bottom, gap, xr, xr1) -> Tensor:
        """What shows between parted lips [B, 3, S, S]: the avatar's own rest opening, else a drawn mouth."""
        eps = self.eps
        # the avatar's colours: its lower lip (3 points just under the rest edge) and skin (beside and under it)
        lip_pts = torch.cat([x0 + a * self.lip_x, (y0 + gl + 0.15 * a).expand(-1, 1, 3)], dim=1)  # [B, 2, 3]: x, y
        skin_pts = torch.cat([x0 + a * self.skin_x, y0 + a * self.skin_y], dim=1)
        pts = torch.cat([lip_pts, skin_pts], dim=2).transpose(1, 2).unsqueeze(1)  # [B, 1, 6, 2]
        samples = F.grid_sample(faces, pts, mode="bilinear", padding_mode="border", align_corners=False)  # [B,3,1,6]
        lip = samples[..., :3].mean(dim=-1, keepdim=True)  # [B, 3, 1, 1]
        skin = samples[..., 3:].mean(dim=-1, keepdim=True)
        luma = 0.114 * skin[:, 0:1] + 0.587 * skin[:, 1:2] + 0.299 * skin[:, 2:3]  # BGR -> Y
        ivory = self.teeth_bgr * (luma / SKIN_REF).clamp(*TEETH_GAIN)

        # cavity, darkest in the middle of the opening
        depth = _sat((v - top) / (gap + eps))
        core = torch.exp(-(xr1 / 0.6) ** 2) * 4.0 * depth * (1.0 - depth)
        cavity = lip * self.cavity_bgr * (1.0 - CAVITY_CORE * core).unsqueeze(1)
        # tongue: a low mound in the bottom of the opening, when it is open enough to show one
        tongue_top = bottom - 0.35 * gap * _sat(gap / (0.35 * a))
        tongue_m = _sat((v - tongue_top) / eps + 0.5) * _compact(xr1 / TONGUE_HALF_WIDTH).sqrt()
        tongue = lip * self.tongue_bgr * (0.75 + 0.25 * _sat((v - tongue_top) / (0.2 * a))).unsqueeze(1)
        # teeth: faint gaps (one at the centre), the upper ones dimmer towards the corners
        g = 0.5 + 0.5 * torch.cos(2.0 * torch.pi * (u - x0) / (TOOTH_WIDTH * a))
        g2 = g * g
        g4 = g2 * g2
        g8 = g4 * g4
        gaps = 1.0 - 0.18 * g8 * g8
        lower_h = (LOWER_TEETH[0] + LOWER_TEETH[1] * t) * a * _sat(gap / (0.25 * a))
        lower_m = _sat((v - (bottom - lower_h)) / eps + 0.5) * _compact(xr1 / 0.8)
        lower_teeth = ivory * (gaps * (0.62 + 0.18 * _sat((bottom - v) / (lower_h + eps)))).unsqueeze(1)
        line0 = y0 - smile * a * xr.clamp(-1.0, 1.0) ** 2  # the lip line at the output column (skull-fixed teeth)
        upper_m = _sat((line0 + (UPPER_TEETH[0] + UPPER_TEETH[1] * t) * a - v) / eps + 0.5) * _compact(xr / 0.9)
        shadow = 0.7 + 0.3 * _sat((v - top) / (0.1 * a))  # under the upper lip
        upper_teeth = ivory * (gaps * (0.55 + 0.45 * (1.0 - xr * xr).clamp(min=0.0)) * shadow).unsqueeze(1)
        drawn = cavity
        for m, layer in ((tongue_m, tongue), (lower_m, lower_teeth), (upper_m, upper_teeth)):
            m = m.unsqueeze(1)
            drawn = drawn * (1.0 - m) + layer * m
        # the avatar's own rest opening (its teeth), fixed to the skull; one and a half edge widths wider than the
        # lips' masks, so that at rest, where the interior shows it is all own (the output is the input exactly)
        lens0 = (1.0 - xr * xr).clamp(min=0.0) ** LENS_POWER
        own = (_sat((v - (line0 - gu * lens0)) / eps + 1.5) * _sat((line0 + gl * lens0 - v) / eps + 1.5)
               * _sat((gu + gl) / eps)).unsqueeze(1)
        return own * faces + (1.0 - own) * drawn


class LipsyncGraph(nn.Module):
    """lipsync: (faces [B, 3, S, S], visemes [B, 5], mouth [B, 6]) float32 -> frames [B, 3, S, S] float32."""

    SPEC = LIPSYNC

    def __init__(self, warp: MouthWarp | None = None):
        super().__init__()
        self.warp = warp or MouthWarp()

    def forward(self, faces: Tensor, visemes: Tensor, mouth: Tensor) -> Tensor:
        return self.warp(faces, visemes, mouth)

    def example_inputs(self, batch: int = 1, seed: int = 0, **sizes: int) -> tuple[Tensor, ...]:
        """Smooth random crops, visemes over their whole range, mouths of plausible size and place."""
        gen = torch.Generator().manual_seed(seed)
        size = self.warp.size
        coarse = torch.rand(batch, 3, 8, 8, generator=gen)
        faces = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        lo = torch.tensor([0.0, -1.0, 0.0, 0.0, 0.0])
        visemes = lo + torch.rand(batch, VISEMES, generator=gen) * (torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]) - lo)
        mouth = torch.tensor([-0.05, -0.05, 0.25, 0.0, 0.0, 0.0]) + torch.rand(batch, MOUTH_DIMS, generator=gen) \
            * torch.tensor([0.1, 0.1, 0.1, 0.06, 0.06, 0.3])
        return faces, visemes, mouth


def build(config=None, seed: int = 0) -> MouthWarp:
    """The warp (nothing to seed: no learned weights)."""
    return MouthWarp().eval()
