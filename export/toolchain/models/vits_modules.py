"""Building blocks of Piper's VITS (rhasspy/piper src/python/piper_train/vits: attentions.py, modules.py,
transforms.py, models.py), inference direction only, weight norm folded (plain `weight` tensors).

Module and parameter names are Piper's, so the names in a Piper voice's ONNX graph (and, with weight norm
removed, in its training checkpoint) address these parameters: `enc_p.encoder.attn_layers.0.emb_rel_k`,
`dp.flows.3.convs.convs_sep.0.weight`, `flow.flows.0.enc.in_layers.0.weight`, `dec.resblocks.0.convs.0.weight`.

Differences from the original, none of which change a value beyond float rounding:

* relative-position attention gathers the 2*window+1 relative logits / weights with a [L, L] index instead of
  the pad-reshape-slice skew (the same products; no Python `max()` on traced sizes, so any length exports);
* the rational-quadratic spline (ConvFlow, inverse only) runs on every element and `torch.where` keeps the
  identity outside [-tail_bound, tail_bound] (the original scatters through boolean indexing), with the spline's
  input clamped and its bin index clipped so that the branch not taken stays finite;
* WN's `fused_add_tanh_sigmoid_multiply` with a zero conditioning is written out (single speaker only);
* dropout layers are left out (inference).

Shapes: B batch, T phonemes, F latent frames, H hidden channels (192), C inter channels (192), K spline bins.
Masks are float 0/1 with 1 on valid positions, [B, 1, T] or [B, 1, F], as in Piper.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.1  # HiFi-GAN generator and its residual blocks


class LayerNorm(nn.Module):
    """Layer norm over the channel axis of [B, H, T] (modules.LayerNorm: `gamma`, `beta`)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


# ---------------------------------------------------------------- text encoder (attentions.py)

class MultiHeadAttention(nn.Module):
    """Self-attention with relative position keys and values within +-window_size (attentions.py)."""

    def __init__(self, channels: int, n_heads: int, window_size: int = 4):
        super().__init__()
        assert channels % n_heads == 0, f"{channels} channels do not split into {n_heads} heads"
        self.n_heads, self.k_channels, self.window_size = n_heads, channels // n_heads, window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        n_rel = 2 * window_size + 1
        self.emb_rel_k = nn.Parameter(torch.zeros(1, n_rel, self.k_channels))  # heads_share: one table
        self.emb_rel_v = nn.Parameter(torch.zeros(1, n_rel, self.k_channels))

    def _offsets(self, length: int | Tensor, device) -> tuple[Tensor, Tensor]:
        """(index [L, L] into the 2w+1 relative slots for key j of query i, in-window mask [L, L])."""
        pos = torch.arange(length, device=device)
        rel = pos.view(1, -1) - pos.view(-1, 1)  # j - i
        w = self.window_size
        return (rel.clamp(-w, w) + w), (rel.abs() <= w)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """x [B, H, T], attn_mask [B, 1, T, T] (1 = attend) -> [B, H, T]."""
        b, d, t = x.shape
        q = self.conv_q(x).view(b, self.n_heads, self.k_channels, t).transpose(2, 3)  # [B, h, T, dk]
        k = self.conv_k(x).view(b, self.n_heads, self.k_channels, t).transpose(2, 3)
        v = self.conv_v(x).view(b, self.n_heads, self.k_channels, t).transpose(2, 3)
        q = q / math.sqrt(self.k_channels)
        scores = torch.matmul(q, k.transpose(-2, -1))  # [B, h, T, T]
        index, inside = self._offsets(t, x.device)
        rel_logits = torch.matmul(q, self.emb_rel_k.unsqueeze(0).transpose(-2, -1))  # [B, h, T, 2w+1]
        local = torch.gather(rel_logits, 3, index.expand(b, self.n_heads, t, t))  # [B, h, T, T]
        scores = scores + local * inside.to(scores.dtype)
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p_attn = F.softmax(scores, dim=-1)  # [B, h, T, T]
        out = torch.matmul(p_attn, v)  # [B, h, T, dk]
        # weight of relative slot r for query i: p_attn[i, i + r - w] (0 outside the sequence)
        n_rel = 2 * self.window_size + 1
        slots = torch.arange(n_rel, device=x.device).view(1, -1) - self.window_size  # [1, 2w+1]
        key = torch.arange(t, device=x.device).view(-1, 1) + slots  # [T, 2w+1]
        valid = (key >= 0) & (key < t)
        rel_w = torch.gather(p_attn, 3, key.clamp(0, t - 1).expand(b, self.n_heads, t, n_rel))
        rel_w = rel_w * valid.to(rel_w.dtype)  # [B, h, T, 2w+1]
        out = out + torch.matmul(rel_w, self.emb_rel_v.unsqueeze(0))
        return self.conv_o(out.transpose(2, 3).reshape(b, d, t))


class FFN(nn.Module):
    """Two 'same'-padded convolutions with ReLU, inputs masked (attentions.FFN, non-causal)."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)

    def _same(self, x: Tensor) -> Tensor:
        return F.pad(x, ((self.kernel_size - 1) // 2, self.kernel_size // 2))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        x = torch.relu(self.conv_1(self._same(x * x_mask)))
        return self.conv_2(self._same(x * x_mask)) * x_mask


class Encoder(nn.Module):
    """attentions.Encoder: n_layers x (relative self-attention, LayerNorm, FFN, LayerNorm), post-norm."""

    def __init__(self, hidden: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int,
                 window_size: int = 4):
        super().__init__()
        self.attn_layers = nn.ModuleList(MultiHeadAttention(hidden, n_heads, window_size) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(FFN(hidden, filter_channels, kernel_size) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers,
                                             self.norm_layers_2):
            x = norm_1(x + attn(x, attn_mask))
            x = norm_2(x + ffn(x, x_mask))
        return x * x_mask


class TextEncoder(nn.Module):
    """models.TextEncoder: ids [B, T] -> (x [B, H, T], m [B, C, T], logs [B, C, T]), all zero at padding."""

    def __init__(self, n_vocab: int, out_channels: int, hidden: int, filter_channels: int, n_heads: int,
                 n_layers: int, kernel_size: int):
        super().__init__()
        self.hidden, self.out_channels = hidden, out_channels
        self.emb = nn.Embedding(n_vocab, hidden)
        self.encoder = Encoder(hidden, filter_channels, n_heads, n_layers, kernel_size)
        self.proj = nn.Conv1d(hidden, out_channels * 2, 1)

    def forward(self, ids: Tensor, x_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = (self.emb(ids) * math.sqrt(self.hidden)).transpose(1, -1)  # [B, H, T]
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return x, m, logs


# ---------------------------------------------------------------- stochastic duration predictor (reverse)

class DDSConv(nn.Module):
    """Dilated depth-separable convolutions (dilation kernel_size**i), GELU, residual (modules.DDSConv)."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int):
        super().__init__()
        self.convs_sep, self.convs_1x1 = nn.ModuleList(), nn.ModuleList()
        self.norms_1, self.norms_2 = nn.ModuleList(), nn.ModuleList()
        for i in range(n_layers):
            dilation = kernel_size ** i
            self.convs_sep.append(nn.Conv1d(channels, channels, kernel_size, groups=channels, dilation=dilation,
                                            padding=(kernel_size * dilation - dilation) // 2))
            self.convs_1x1.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(LayerNorm(channels))
            self.norms_2.append(LayerNorm(channels))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        if g is not None:
            x = x + g
        for sep, c1x1, n1, n2 in zip(self.convs_sep, self.convs_1x1, self.norms_1, self.norms_2):
            y = F.gelu(n1(sep(x * x_mask)))
            x = x + F.gelu(n2(c1x1(y)))
        return x * x_mask


def rq_spline_inverse(y: Tensor, uw: Tensor, uh: Tensor, ud: Tensor, tail_bound: float,
                      min_bin_width: float = 1e-3, min_bin_height: float = 1e-3,
                      min_derivative: float = 1e-3) -> Tensor:
    """Inverse of transforms.unconstrained_rational_quadratic_spline (linear tails), element-wise.

    y [...]; uw, uh [..., K] unnormalized bin widths / heights; ud [..., K-1] inner knot derivatives.
    Outside [-tail_bound, tail_bound] the transform is the identity.
    """
    lo, hi = -tail_bound, tail_bound
    inside = (y >= lo) & (y <= hi)
    yc = y.clamp(lo, hi)
    k = uw.shape[-1]
    edge = math.log(math.exp(1 - min_derivative) - 1)  # the linear tails' derivative 1 at both ends
    ud = F.pad(ud, (1, 1), value=edge)

    def knots(u: Tensor, min_size: float) -> tuple[Tensor, Tensor]:
        size = min_size + (1 - min_size * k) * F.softmax(u, dim=-1)
        cum = (hi - lo) * torch.cumsum(size, dim=-1) + lo  # knot 1..K, the last one forced to hi
        cum = torch.cat([torch.full_like(cum[..., :1], lo), cum[..., :-1], torch.full_like(cum[..., :1], hi)], -1)
        return cum, cum[..., 1:] - cum[..., :-1]  # [..., K+1], [..., K]

    cumwidths, widths = knots(uw, min_bin_width)
    cumheights, heights = knots(uh, min_bin_height)
    derivatives = min_derivative + F.softplus(ud)  # [..., K+1]
    # searchsorted(cumheights with the last knot + 1e-6, y): the bin holding y, clipped into [0, K-1]
    upper = torch.cat([cumheights[..., :-1], cumheights[..., -1:] + 1e-6], -1)
    idx = ((yc.unsqueeze(-1) >= upper).to(torch.int64).sum(-1, keepdim=True) - 1).clamp(0, k - 1)

    def pick(t: Tensor) -> Tensor:
        return torch.gather(t, -1, idx)[..., 0]

    cw, w, ch, h = pick(cumwidths), pick(widths), pick(cumheights), pick(heights)
    delta = pick(heights / widths)
    d0, d1 = pick(derivatives[..., :-1]), pick(derivatives[..., 1:])
    s = d0 + d1 - 2 * delta
    dy = yc - ch
    a = dy * s + h * (delta - d0)
    b = h * d0 - dy * s
    c = -delta * dy
    disc = (b.pow(2) - 4 * a * c).clamp(min=0.0)
    root = (2 * c) / (-b - torch.sqrt(disc))
    return torch.where(inside, root * w + cw, y)


class ConvFlow(nn.Module):
    """modules.ConvFlow (2 channels: x0 conditions a rational-quadratic spline of x1), reverse direction."""

    def __init__(self, filter_channels: int, kernel_size: int, n_layers: int = 3, num_bins: int = 10,
                 tail_bound: float = 5.0):
        super().__init__()
        self.filter_channels, self.num_bins, self.tail_bound = filter_channels, num_bins, tail_bound
        self.pre = nn.Conv1d(1, filter_channels, 1)
        self.convs = DDSConv(filter_channels, kernel_size, n_layers)
        self.proj = nn.Conv1d(filter_channels, num_bins * 3 - 1, 1)

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor) -> Tensor:
        """x [B, 2, T], g [B, H, T] -> [B, 2, T]."""
        x0, x1 = x[:, :1], x[:, 1:]
        h = self.proj(self.convs(self.pre(x0), x_mask, g=g)) * x_mask  # [B, 3K-1, T]
        h = h.transpose(1, 2)  # [B, T, 3K-1]
        scale = math.sqrt(self.filter_channels)
        nb = self.num_bins
        y = rq_spline_inverse(x1[:, 0], h[..., :nb] / scale, h[..., nb:2 * nb] / scale, h[..., 2 * nb:],
                              self.tail_bound)
        return torch.cat([x0, y.unsqueeze(1)], 1) * x_mask


class ElementwiseAffine(nn.Module):
    """modules.ElementwiseAffine (`m`, `logs` [2, 1]), reverse: (x - m) * exp(-logs)."""

    def __init__(self, channels: int = 2):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(channels, 1))
        self.logs = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        return (x - self.m) * torch.exp(-self.logs) * x_mask


class StochasticDurationPredictor(nn.Module):
    """models.StochasticDurationPredictor, reverse only: noise [B, 2, T] -> log durations [B, 1, T].

    Piper's reverse pass runs flows 7, 5, 3 (ConvFlows, each after a channel flip), a flip, then flow 0; flow 1
    is the "useless vflow" it drops, and the posterior `post_*` modules serve training only. `flows` keeps the
    original indices (ModuleDict keys "0", "3", "5", "7") so the parameter names match.
    """

    def __init__(self, channels: int, kernel_size: int = 3, n_flows: int = 4):
        super().__init__()
        self.pre = nn.Conv1d(channels, channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        self.convs = DDSConv(channels, kernel_size, n_layers=3)
        self.flow_ids = [2 * i + 1 for i in range(n_flows)][::-1][:-1]  # 7, 5, 3 (flow 1 unused)
        flows: dict[str, nn.Module] = {"0": ElementwiseAffine(2)}
        flows.update({str(i): ConvFlow(channels, kernel_size, n_layers=3) for i in self.flow_ids})
        self.flows = nn.ModuleDict(flows)

    def forward(self, x: Tensor, x_mask: Tensor, noise: Tensor) -> Tensor:
        """x [B, H, T] encoder output, noise [B, 2, T] (already scaled by noise_w) -> logw [B, 1, T]."""
        x = self.proj(self.convs(self.pre(x), x_mask)) * x_mask
        z = noise
        for i in self.flow_ids:
            z = self.flows[str(i)](torch.flip(z, [1]), x_mask, g=x)  # Flip, then ConvFlow
        z = self.flows["0"](torch.flip(z, [1]), x_mask)
        return z[:, :1]


# ---------------------------------------------------------------- flow (modules.WN, ResidualCouplingLayer)

class WN(nn.Module):
    """WaveNet-like gated dilated convolutions (modules.WN) without speaker conditioning."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int):
        super().__init__()
        self.hidden, self.n_layers = hidden, n_layers
        self.in_layers, self.res_skip_layers = nn.ModuleList(), nn.ModuleList()
        for i in range(n_layers):
            d = dilation_rate ** i
            self.in_layers.append(nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=d,
                                            padding=(kernel_size * d - d) // 2))
            self.res_skip_layers.append(nn.Conv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for i, (inl, rs) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            x_in = inl(x)
            acts = rs(torch.tanh(x_in[:, :self.hidden]) * torch.sigmoid(x_in[:, self.hidden:]))
            if i < self.n_layers - 1:
                x = (x + acts[:, :self.hidden]) * x_mask
                out = out + acts[:, self.hidden:]
            else:
                out = out + acts
        return out * x_mask


class ResidualCouplingLayer(nn.Module):
    """modules.ResidualCouplingLayer with mean_only=True, reverse: x1 <- (x1 - m(x0)) * mask."""

    def __init__(self, channels: int, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.enc = WN(hidden, kernel_size, dilation_rate, n_layers)
        self.post = nn.Conv1d(hidden, self.half, 1)

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        x0, x1 = x[:, :self.half], x[:, self.half:]
        h = self.enc(self.pre(x0) * x_mask, x_mask)
        m = self.post(h) * x_mask
        return torch.cat([x0, (x1 - m) * x_mask], 1)


class ResidualCouplingBlock(nn.Module):
    """models.ResidualCouplingBlock, reverse: for each coupling layer from the last: Flip, then the layer.

    `flows` is a ModuleDict keyed "0", "2", "4", "6" (the Flip modules 1, 3, 5, 7 hold no parameters).
    """

    def __init__(self, channels: int, hidden: int, kernel_size: int = 5, dilation_rate: int = 1,
                 n_layers: int = 4, n_flows: int = 4):
        super().__init__()
        self.flows = nn.ModuleDict({str(2 * i): ResidualCouplingLayer(channels, hidden, kernel_size, dilation_rate,
                                                                      n_layers) for i in range(n_flows)})

    def forward(self, z: Tensor, mask: Tensor) -> Tensor:
        for key in reversed(list(self.flows.keys())):
            z = self.flows[key](torch.flip(z, [1]), mask)
        return z


# ---------------------------------------------------------------- decoder (models.Generator, HiFi-GAN)

class ResBlock1(nn.Module):
    def __init__(self, ch: int, k: int, dilation: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(ch, ch, k, dilation=d, padding=(k * d - d) // 2) for d in dilation)
        self.convs2 = nn.ModuleList(nn.Conv1d(ch, ch, k, padding=(k - 1) // 2) for _ in dilation)

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    def __init__(self, ch: int, k: int, dilation: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(ch, ch, k, dilation=d, padding=(k * d - d) // 2) for d in dilation)

    def forward(self, x: Tensor) -> Tensor:
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """models.Generator (HiFi-GAN): z [B, C, F] -> audio [B, 1, F * prod(upsample_rates)] in [-1, 1].

    conv_post has no bias (Piper's, unlike jik876's HiFi-GAN)."""

    def __init__(self, in_channels: int, resblock: str, resblock_kernel_sizes: tuple[int, ...],
                 resblock_dilation_sizes: tuple[tuple[int, ...], ...], upsample_rates: tuple[int, ...],
                 upsample_initial_channel: int, upsample_kernel_sizes: tuple[int, ...]):
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(in_channels, upsample_initial_channel, 7, 1, padding=3)
        block = ResBlock1 if resblock == "1" else ResBlock2
        self.ups, self.resblocks = nn.ModuleList(), nn.ModuleList()
        ch = upsample_initial_channel
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, k, u, padding=(k - u) // 2))
            ch //= 2
            for rk, rd in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(block(ch, rk, tuple(rd)))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for blk in blocks[1:]:
                xs = xs + blk(x)
            x = xs / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))  # default slope 0.01, as in the original
