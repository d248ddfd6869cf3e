"""Piper VITS (rhasspy/piper piper_train/vits/models.py SynthesizerTrn.infer), inference only, as two stage graphs.

    model = load_piper_voice("en_US-joe-medium.onnx")          # export/toolchain/checkpoints/piper.py
    tts, vocoder = TtsGraph(model), VocoderGraph(model)
    latents, latent_lengths, durations = tts(phonemes, phoneme_lengths, scales, seed)
    audio = vocoder(latents)                                     # or chunk by chunk (VocoderStream)

`SynthesizerTrn.infer` is: text encoder -> stochastic duration predictor (reverse, noise * noise_w) ->
durations ceil(exp(logw) * length_scale) -> length regulation of the prior (m_p, logs_p) ->
z_p = m_p + noise * exp(logs_p) * noise_scale -> flow (reverse) -> z -> HiFi-GAN generator `dec`.
TtsGraph runs everything up to z; VocoderGraph runs `dec`, a stack of convolutions whose receptive field is a
few latent frames, so it streams over overlapping chunks (ensemble/vocoder_stream.py).

Randomness. Piper draws both noises with torch.randn inside the graph (ONNX RandomNormalLike): a fresh draw per
call that no caller can reproduce and that differs between backends. Here the noise comes from a fixed table of
standard-normal values (`NoiseTable`, a seeded buffer stored in the graph, [C + 2, 4096]) read at an offset chosen
by a per-row `seed` input: row b starts at column s_b = ((seed_b mod L) * 2531) mod L and uses columns
(s_b + t) mod L for phoneme t (duration noise, 2 rows) and (s_b + f) mod L for latent frame f (prior noise, the
C other rows). Within an utterance the values are i.i.d. N(0, 1), as Piper's; there are L = 4096 distinct
realizations (seed mod 4096). No random op is left in the graph, so a seed gives the same noise on every backend
(checked: ONNX Runtime == PyTorch), and a row's noise depends only on its own seed and positions, so batching
does not change a row. The orchestrator picks seeds (random per utterance, or fixed for reproducible output).
With noise_scale = noise_w = 0 the seed has no effect.

Batching: padded phonemes (id 0 at positions >= phoneme_lengths) and padded frames are masked as in Piper, so a
padded batch gives each row what a batch of one gives. Shapes: B batch, T phonemes, F latent frames,
C inter channels (192), H hidden channels (192), S = F * hop samples.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from export.contract.presets import VitsConfig
from export.contract.spec import TTS, VOCODER
from export.toolchain.models.vits_modules import (
    Generator,
    ResidualCouplingBlock,
    StochasticDurationPredictor,
    TextEncoder,
)

NOISE_TABLE_SEED = 20240229  # the torch.Generator seed that fills NoiseTable (part of the stage's contract)
NOISE_TABLE_FRAMES = 4096  # table columns: noise repeats after this many frames (47.5 s at 86 frames/s)
NOISE_SEED_STRIDE = 2531  # odd, ~ L / golden ratio: seed s starts at column (s * 2531) mod L, so consecutive seeds
#                           start far apart (Fibonacci hashing) instead of at shifted copies of one another


class NoiseTable(nn.Module):
    """Standard-normal values [C + 2, L] read at per-row offsets: rows 0..C-1 for the prior, C..C+1 for durations."""

    def __init__(self, channels: int, frames: int = NOISE_TABLE_FRAMES, seed: int = NOISE_TABLE_SEED,
                 stride: int = NOISE_SEED_STRIDE):
        super().__init__()
        self.channels, self.frames, self.stride = channels, frames, stride
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn(channels + 2, frames, generator=gen), persistent=False)

    def _read(self, rows: Tensor, seed: Tensor, length: Tensor | int) -> Tensor:
        """rows [R, L], seed [B, 1] int64 -> [B, R, length]: column (start + i) mod L for position i, where
        start = ((seed mod L) * stride) mod L (a permutation of the L start columns: stride is odd, L a power of 2)."""
        start = torch.remainder(torch.remainder(seed, self.frames) * self.stride, self.frames)  # [B, 1]
        cols = torch.remainder(start + torch.arange(length, device=seed.device).view(1, -1), self.frames)  # [B, n]
        picked = torch.index_select(rows, 1, cols.reshape(-1))  # [R, B * n]
        return picked.view(rows.shape[0], seed.shape[0], -1).transpose(0, 1)

    def durations(self, seed: Tensor, length: Tensor | int) -> Tensor:
        return self._read(self.table[self.channels:], seed, length)  # [B, 2, T]

    def prior(self, seed: Tensor, length: Tensor | int) -> Tensor:
        return self._read(self.table[:self.channels], seed, length)  # [B, C, F]


def sequence_mask(lengths: Tensor, max_len: Tensor | int) -> Tensor:
    """lengths [B] -> [B, 1, max_len] float, 1 on valid positions (commons.sequence_mask)."""
    pos = torch.arange(max_len, device=lengths.device)
    return (pos.view(1, -1) < lengths.view(-1, 1)).unsqueeze(1).to(torch.float32)


def frame_lengths(durations: Tensor) -> Tensor:
    """durations [B, T] float holding whole numbers -> latent frames per row [B] int64 (at least 1)."""
    return torch.clamp_min(durations.sum(1), 1).to(torch.int64)


def regulate_length(stats: Tensor, durations: Tensor, frames: int | None = None) -> tuple[Tensor, Tensor]:
    """Repeat each phoneme's column `durations` times (commons.generate_path + matmul, as a gather).

    stats [B, D, T]; durations [B, T] float holding whole numbers (0 at padding) ->
    (expanded [B, D, F] with zero columns beyond each row's length, frame lengths [B] int64),
    F = `frames`, by default the largest length in the batch (a row longer than `frames` is cut there); a row
    whose durations sum to 0 still gets one (zero) frame.
    """
    cum = torch.cumsum(durations, dim=1)  # [B, T] end frame (exclusive) of each phoneme, exact in float32
    lengths = frame_lengths(durations)  # [B]
    f = torch.arange(lengths.max() if frames is None else frames, device=stats.device).to(cum.dtype)  # [F]
    index = (cum.unsqueeze(1) <= f.view(1, -1, 1)).to(torch.int64).sum(-1)  # [B, F] phoneme of frame, T past end
    padded = torch.cat([stats, torch.zeros_like(stats[:, :, :1])], dim=2)  # column T: zeros
    out = torch.gather(padded, 2, index.unsqueeze(1).expand(-1, stats.shape[1], -1))
    return out, lengths


class VitsModel(nn.Module):
    """SynthesizerTrn's inference modules: enc_p, dp (stochastic), flow, dec (names as in Piper)."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        c = config
        if c.n_speakers > 1 or c.gin_channels:
            raise ValueError("multi-speaker VITS (speaker embedding emb_g, gin_channels > 0) is not supported")
        self.config = c
        self.enc_p = TextEncoder(c.n_vocab, c.inter_channels, c.hidden_channels, c.filter_channels, c.n_heads,
                                 c.n_layers, c.kernel_size)
        self.dp = StochasticDurationPredictor(c.hidden_channels, c.dp_kernel_size, c.dp_n_flows)
        self.flow = ResidualCouplingBlock(c.inter_channels, c.hidden_channels, c.flow_kernel_size,
                                          c.flow_dilation_rate, c.flow_n_layers, c.flow_n_flows)
        self.dec = Generator(c.inter_channels, c.resblock, c.resblock_kernel_sizes, c.resblock_dilation_sizes,
                             c.upsample_rates, c.upsample_initial_channel, c.upsample_kernel_sizes)
        self.noise = NoiseTable(c.inter_channels)

    def latents(self, ids: Tensor, lengths: Tensor, noise_scale: Tensor, length_scale: Tensor, noise_w: Tensor,
                seed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ids [B, T] int64, lengths [B], scales [B, 1, 1] each, seed [B, 1] int64 ->
        (z [B, C, F] zero beyond each length, frame lengths [B] int64, durations [B, T] float, 0 at padding)."""
        m_p, logs_p, w_ceil = self.text(ids, lengths, length_scale, noise_w, seed)
        z_p, y_mask, y_lengths = self.prior(m_p, logs_p, w_ceil, noise_scale, seed)
        return self.flow(z_p, y_mask) * y_mask, y_lengths, w_ceil

    def text(self, ids: Tensor, lengths: Tensor, length_scale: Tensor, noise_w: Tensor,
             seed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The phoneme-rate half: -> (m_p, logs_p [B, C, T], durations [B, T] float), all 0 at padding."""
        x_mask = sequence_mask(lengths, ids.shape[1])  # [B, 1, T]
        x, m_p, logs_p = self.enc_p(ids, x_mask)
        dp_noise = self.noise.durations(seed, ids.shape[1]) * noise_w  # [B, 2, T]
        logw = self.dp(x, x_mask, dp_noise)  # [B, 1, T]
        return m_p, logs_p, torch.ceil(torch.exp(logw) * x_mask * length_scale)[:, 0]

    def prior(self, m_p: Tensor, logs_p: Tensor, w_ceil: Tensor, noise_scale: Tensor, seed: Tensor,
              frames: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The frame-rate prior the flow inverts: -> (z_p [B, C, F], y_mask [B, 1, F], frame lengths [B]);
        F: `frames` (regulate_length), by default the longest row."""
        stats, y_lengths = regulate_length(torch.cat([m_p, logs_p], 1), w_ceil, frames)  # [B, 2C, F]
        m_p, logs_p = torch.split(stats, self.config.inter_channels, dim=1)
        y_mask = sequence_mask(y_lengths, stats.shape[2])  # [B, 1, F]
        z_p = m_p + self.noise.prior(seed, stats.shape[2]) * torch.exp(logs_p) * noise_scale
        return z_p, y_mask, y_lengths

    def forward(self, ids: Tensor, lengths: Tensor, noise_scale: float = 0.667, length_scale: float = 1.0,
                noise_w: float = 0.8, seed: int = 0) -> Tensor:
        """Whole-utterance synthesis (Piper's infer for a batch): -> audio [B, F * hop] (zero past each length)."""
        b = ids.shape[0]
        scale = lambda v: torch.full((b, 1, 1), float(v))
        z, _, _ = self.latents(ids, lengths, scale(noise_scale), scale(length_scale), scale(noise_w),
                               torch.full((b, 1), seed, dtype=torch.int64))
        return self.dec(z)[:, 0]


def build(config: VitsConfig, seed: int = 0) -> VitsModel:
    """Seeded random weights (the presets' `tiny` and `base`): PyTorch's default initialization under `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VitsModel(config).eval()


# ---------------------------------------------------------------- stage graphs

class TtsGraph(nn.Module):
    """tts: (phonemes [B, T] int64 (0-padded), phoneme_lengths [B, 1] int64, scales [B, 3] float32 =
    noise_scale, length_scale, noise_w; seed [B, 1] int64) -> (latents [B, C, F] float32, zero beyond each
    length; latent_lengths [B, 1] int64; durations [B, T] int64, frames per phoneme, 0 at padding)."""

    INPUTS = ("phonemes", "phoneme_lengths", "scales", "seed")
    OUTPUTS = ("latents", "latent_lengths", "durations")

    def __init__(self, model: VitsModel):
        super().__init__()
        self.model = model.eval()

    def forward(self, phonemes: Tensor, phoneme_lengths: Tensor, scales: Tensor, seed: Tensor):
        s = scales.unsqueeze(-1)  # [B, 3, 1]
        z, lengths, durations = self.model.latents(phonemes, phoneme_lengths.reshape(-1), s[:, 0:1], s[:, 1:2],
                                                   s[:, 2:3], seed)
        return z, lengths.unsqueeze(1), durations.to(torch.int64)

    def example_inputs(self, batch: int = 2, seed: int = 0, noise: bool = True, phonemes: int | None = None):
        """Random ids in 1..n_vocab-1, lengths in [T/2, T] (row 0 full; T: the spec's opt unless given), Piper's
        default scales (noise=True) or noise off with length_scale 1 (noise=False), seeds 0..B-1 offset by `seed`."""
        phonemes = phonemes or TTS.axis("phonemes").opt
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, self.model.config.n_vocab, (batch, phonemes), generator=gen)
        lengths = torch.randint(max(1, phonemes // 2), phonemes + 1, (batch,), generator=gen)
        lengths[0] = phonemes
        ids = ids.masked_fill(torch.arange(phonemes).view(1, -1) >= lengths.view(-1, 1), 0)
        scales = torch.tensor([[0.667, 1.0, 0.8] if noise else [0.0, 1.0, 0.0]]).repeat(batch, 1)
        seeds = torch.arange(batch, dtype=torch.int64).view(-1, 1) + seed
        return ids, lengths.view(-1, 1), scales, seeds


class VocoderGraph(nn.Module):
    """vocoder: latents [B, C, F] float32 (0-padded) -> audio [B, F * hop] float32 in [-1, 1]."""

    INPUTS = ("latents",)
    OUTPUTS = ("audio",)

    def __init__(self, model: VitsModel):
        super().__init__()
        self.dec = model.dec.eval()
        self.config = model.config

    def forward(self, latents: Tensor) -> Tensor:
        return self.dec(latents)[:, 0]

    def example_inputs(self, batch: int = 2, seed: int = 0, frames: int | None = None):
        """Latent-like values: N(0, 1) (z of a real voice has per-channel std ~0.5-1.5); frames: the spec's opt
        unless given."""
        frames = frames or VOCODER.axis("frames").opt
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, self.config.inter_channels, frames, generator=gen),)


@torch.no_grad()
def receptive_field_samples(dec: Generator, channels: int, frames: int = 96, seed: int = 0) -> tuple[int, int]:
    """(before, after): how many output samples before the first / after the last sample of a latent frame its
    value reaches, measured by perturbing one middle frame of a random input and finding the samples that change.
    A streamed chunk needs context_frames >= (max(before, after) + crossfade_samples / 2) / hop to be exact."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, frames, generator=gen)
    base = dec(x).reshape(-1)
    hop = base.shape[0] // frames
    mid = frames // 2
    x[:, :, mid] += torch.randn(channels, generator=gen)
    changed = torch.nonzero((dec(x).reshape(-1) - base).abs() > 0).reshape(-1)
    return mid * hop - int(changed[0]), int(changed[-1]) - ((mid + 1) * hop - 1)


def stream_context_frames(dec: Generator, channels: int, hop: int, crossfade_frames: int = 2) -> int:
    """The smallest VocoderStream context_frames for which streamed audio equals whole-utterance audio."""
    reach = max(receptive_field_samples(dec, channels))
    return -(-(reach + crossfade_frames * hop // 2) // hop)
