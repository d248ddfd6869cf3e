"""HiFi-GAN generator (jik876/hifi-gan models.py: Generator, ResBlock1, ResBlock2), inference only.

Weight norm is applied at construction with `torch.nn.utils.weight_norm`, as in the original, so the
state-dict keys are those of the official generator checkpoints (`conv_pre.weight_g`,
`conv_pre.weight_v`, `ups.0.weight_g`, `resblocks.0.convs1.0.weight_v`, `conv_post.bias`, ...):
`generator.load_state_dict(torch.load("generator_v1")["generator"])` works, then
`remove_weight_norm()` folds g and v into plain weights for inference and export.

The only change from the original: `conv_pre` takes `config.num_mels` input channels (the original
hard-codes 80, the value of every published config).

Shapes: B batch, M = 80 mel channels, F mel frames, S = F * prod(upsample_rates) = F * 256 samples.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Conv1d, ConvTranspose1d

from export.contract import media
from export.contract.presets import HiFiGANConfig, preset_with
from export.contract.spec import HIFIGAN, sample_shape

LRELU_SLOPE = 0.1


def weight_norm(module: nn.Module) -> nn.Module:
    """torch.nn.utils.weight_norm (the legacy hook form, which stores `weight_g`/`weight_v` like the
    official checkpoints), without its deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module)


def remove_weight_norm(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.remove_weight_norm(module)


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return int((kernel_size * dilation - dilation) / 2)


def init_weights(m: nn.Module, mean: float = 0.0, std: float = 0.01) -> None:
    """utils.py (kept for fidelity; with weight norm it only touches the derived `weight` attribute)."""
    if m.__class__.__name__.find("Conv") != -1:
        m.weight.data.normal_(mean, std)


class ResBlock1(nn.Module):
    def __init__(self, h: HiFiGANConfig, channels: int, kernel_size: int = 3, dilation=(1, 3, 5)):
        super().__init__()
        self.h = h
        self.convs1 = nn.ModuleList([
            weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation[:3]])
        self.convs1.apply(init_weights)
        self.convs2 = nn.ModuleList([
            weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=get_padding(kernel_size, 1)))
            for _ in range(3)])
        self.convs2.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            xt = c1(xt)
            xt = F.leaky_relu(xt, LRELU_SLOPE)
            xt = c2(xt)
            x = xt + x
        return x

    def remove_weight_norm(self) -> None:
        for layer in self.convs1:
            remove_weight_norm(layer)
        for layer in self.convs2:
            remove_weight_norm(layer)


class ResBlock2(nn.Module):
    def __init__(self, h: HiFiGANConfig, channels: int, kernel_size: int = 3, dilation=(1, 3)):
        super().__init__()
        self.h = h
        self.convs = nn.ModuleList([
            weight_norm(Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation[:2]])
        self.convs.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        for c in self.convs:
            xt = F.leaky_relu(x, LRELU_SLOPE)
            xt = c(xt)
            x = xt + x
        return x

    def remove_weight_norm(self) -> None:
        for layer in self.convs:
            remove_weight_norm(layer)


class Generator(nn.Module):
    def __init__(self, h: HiFiGANConfig):
        super().__init__()
        assert math.prod(h.upsample_rates) == media.TTS_MEL.hop_length, (
            f"prod(upsample_rates) = {math.prod(h.upsample_rates)} != mel hop {media.TTS_MEL.hop_length}")
        for u, k in zip(h.upsample_rates, h.upsample_kernel_sizes):
            assert (k - u) % 2 == 0, f"upsample kernel {k} and rate {u}: output would not be F * rate"
        self.h = h
        self.num_kernels = len(h.resblock_kernel_sizes)
        self.num_upsamples = len(h.upsample_rates)
        self.conv_pre = weight_norm(Conv1d(h.num_mels, h.upsample_initial_channel, 7, 1, padding=3))
        resblock = ResBlock1 if h.resblock == "1" else ResBlock2

        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(h.upsample_rates, h.upsample_kernel_sizes)):
            self.ups.append(weight_norm(ConvTranspose1d(
                h.upsample_initial_channel // (2 ** i), h.upsample_initial_channel // (2 ** (i + 1)),
                k, u, padding=(k - u) // 2)))

        self.resblocks = nn.ModuleList()
        ch = h.upsample_initial_channel
        for i in range(len(self.ups)):
            ch = h.upsample_initial_channel // (2 ** (i + 1))
            for k, d in zip(h.resblock_kernel_sizes, h.resblock_dilation_sizes):
                self.resblocks.append(resblock(h, ch, k, d))

        self.conv_post = weight_norm(Conv1d(ch, 1, 7, 1, padding=3))
        self.ups.apply(init_weights)
        self.conv_post.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        """mel [B, M, F] -> audio [B, 1, F * hop] in [-1, 1]."""
        x = self.conv_pre(x)
        for i in range(self.num_upsamples):
            x = F.leaky_relu(x, LRELU_SLOPE)
            x = self.ups[i](x)
            xs = None
            for j in range(self.num_kernels):
                y = self.resblocks[i * self.num_kernels + j](x)
                xs = y if xs is None else xs + y
            x = xs / self.num_kernels
        x = F.leaky_relu(x)  # default slope 0.01, as in the original
        x = self.conv_post(x)
        return torch.tanh(x)

    def has_weight_norm(self) -> bool:
        return hasattr(self.conv_pre, "weight_g")

    def remove_weight_norm(self) -> None:
        for layer in self.ups:
            remove_weight_norm(layer)
        for layer in self.resblocks:
            layer.remove_weight_norm()
        remove_weight_norm(self.conv_pre)
        remove_weight_norm(self.conv_post)


# ---------------------------------------------------------------- construction and export

@torch.no_grad()
def init_generator(model: Generator, seed: int = 0, gain: float = 1.0) -> Generator:
    """Deterministic weights: each weight-normed conv gets a random direction `weight_v` and a magnitude
    `weight_g` that keeps activations of order one (what a trained HiFi-GAN roughly has); biases small."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (Conv1d, ConvTranspose1d)):
            v = m.weight_v if hasattr(m, "weight_v") else m.weight
            v.copy_(torch.randn(v.shape, generator=gen))
            if hasattr(m, "weight_g"):
                # dim 0 norm: Conv1d weight [out, in, k] (per output channel); ConvTranspose1d [in, out, k]
                fan = v[0].numel() if isinstance(m, Conv1d) else v.shape[0] * v.shape[2] // max(1, m.stride[0])
                g = v.flatten(1).norm(dim=1) * gain / math.sqrt(fan)
                m.weight_g.copy_(g.view_as(m.weight_g))
            else:
                v.mul_(gain / math.sqrt(v[0].numel()))
            if m.bias is not None:
                m.bias.copy_(0.01 * torch.randn(m.bias.shape, generator=gen))
    # a quieter last layer keeps tanh out of saturation (speech-like amplitudes, not a square wave)
    post = model.conv_post
    (post.weight_g if hasattr(post, "weight_g") else post.weight).mul_(0.1)
    return model


def build(config: HiFiGANConfig, seed: int = 0) -> Generator:
    """A generator with weight norm still applied (state dict like the official checkpoints)."""
    return init_generator(Generator(config), seed).eval()



class VocoderGraph(nn.Module):
    """hifigan: mel [B, 80, F] -> audio [B, F * 256]. Removes the generator's weight norm (in place)."""

    SPEC = HIFIGAN

    def __init__(self, generator: Generator):
        super().__init__()
        if generator.has_weight_norm():
            generator.remove_weight_norm()
        self.generator = generator
        self.preset = preset_with("hifigan", generator.h)
        self.eval()

    def forward(self, mel: Tensor) -> Tensor:
        return self.generator(mel).squeeze(1)

    def example_inputs(self, batch: int = 1, seed: int = 0, **sizes: int) -> tuple[Tensor, ...]:
        """Log-mel values in [-11, 2] (HiFi-GAN's natural-log mel: silence ~ log(1e-5) = -11.5)."""
        shapes = sample_shape(self.SPEC, self.preset, batch, **sizes)
        gen = torch.Generator().manual_seed(seed)
        return (torch.rand(shapes["mel"], generator=gen) * 13.0 - 11.0,)
