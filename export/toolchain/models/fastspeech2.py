"""FastSpeech2 (ming024/FastSpeech2: model/fastspeech2.py, model/modules.py, transformer/*), inference only.

Module and parameter names are exactly ming024's, so a released LJSpeech checkpoint's
`model` state dict loads with `load_state_dict(strict=True)` (e.g. `encoder.src_word_emb.weight`,
`encoder.position_enc`, `encoder.layer_stack.0.slf_attn.w_qs.weight`,
`variance_adaptor.duration_predictor.conv_layer.conv1d_1.conv.weight`, `variance_adaptor.pitch_bins`,
`decoder.layer_stack.0.pos_ffn.w_1.weight`, `mel_linear.weight`, `postnet.convolutions.0.0.conv.weight`).
Configuration: LJSpeech (single speaker, phoneme-level pitch and energy, linear quantization).

Differences from the original, none of which touch the weights:

* the length regulator is tensor-only (cumsum of the durations, frame indices compared with the
  cumsum boundaries to build a gather index), so the legacy ONNX exporter (`dynamo=False`,
  opset 17) keeps batch, phoneme and frame axes dynamic; the output length is the largest total
  duration in the batch;
* `torch.bucketize(x, bins)` is written as `(x[..., None] > bins).sum(-1)` (identical for
  `right=False`; bucketize has no ONNX symbolic);
* padding is masked everywhere, also where ming024 does not need it for single-sentence inference
  (variance-predictor inputs and hidden layer, mel_linear output, every postnet layer input), so a
  padded batch gives, per item, what a batch of one gives;
* at least one output frame per item (if every duration rounds to 0, the first phoneme gets 1);
* positions beyond the `max_seq_len + 1` sinusoid table are computed in-graph (ming024 rebuilds
  the table in float64 for such inputs in eval mode); positions inside it read the table;
* `position_enc`, `pitch_bins`, `energy_bins` are buffers instead of `nn.Parameter(requires_grad=False)`
  (same state-dict keys); the energy predictor's output is scaled by `e_control`.

Shapes: B batch, T phonemes, F mel frames, D hidden width, M = 80 mel channels.
Masks follow ming024: True marks padding.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.contract.presets import FastSpeech2Config, preset_with
from export.contract.spec import FASTSPEECH2, sample_shape

PAD = 0  # transformer/Constants.py

# LJSpeech preprocessed stats.json (normalized pitch / energy min and max); the bins are
# buffers in the state dict, so a real checkpoint overwrites them.
LJSPEECH_PITCH_MIN_MAX = (-2.917079304729967, 11.391254536985784)
LJSPEECH_ENERGY_MIN_MAX = (-1.431044578552246, 8.184337615966797)


def get_mask_from_lengths(lengths: Tensor, max_len: Tensor | int | None = None) -> Tensor:
    """utils/tools.py: [B] lengths -> [B, L] bool, True beyond each length."""
    if max_len is None:
        max_len = lengths.max()
    ids = torch.arange(max_len, device=lengths.device)
    return ids.unsqueeze(0) >= lengths.unsqueeze(1)


def get_sinusoid_encoding_table(n_position: int, d_hid: int, padding_idx: int | None = None) -> Tensor:
    """transformer/Models.py (float64 numpy, then float32)."""
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    hid = np.arange(d_hid)[None, :]
    table = pos / np.power(10000, 2 * (hid // 2) / d_hid)
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    if padding_idx is not None:
        table[padding_idx] = 0.0
    return torch.tensor(table, dtype=torch.float32)


class SinusoidPositions(nn.Module):
    """Reads rows of the `position_enc` table; rows past its end are computed in-graph."""

    def __init__(self, d_hid: int):
        super().__init__()
        j = np.arange(d_hid)
        inv = 1.0 / np.power(10000, 2 * (j // 2) / d_hid)
        self.register_buffer("inv_timescale", torch.tensor(inv, dtype=torch.float32), persistent=False)
        self.register_buffer("is_even", torch.tensor(j % 2 == 0), persistent=False)

    def forward(self, table: Tensor, length_of: Tensor) -> Tensor:
        """table [1, N, D], length_of [B, L, ...] -> positions [1, L, D]."""
        pos = torch.arange(length_of.shape[1], device=length_of.device)
        n = table.shape[1]
        rows = table[0].index_select(0, pos.clamp(max=n - 1))
        angle = pos.to(torch.float32).unsqueeze(1) * self.inv_timescale.unsqueeze(0)
        computed = torch.where(self.is_even.unsqueeze(0), torch.sin(angle), torch.cos(angle))
        return torch.where((pos < n).unsqueeze(1), rows, computed).unsqueeze(0)


# ---------------------------------------------------------------- transformer/

class ScaledDotProductAttention(nn.Module):
    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        attn = torch.matmul(q, k.transpose(-1, -2)) / self.temperature
        if mask is not None:
            attn = attn.masked_fill(mask, float("-inf"))
        attn = self.softmax(attn)
        return torch.matmul(attn, v), attn


class MultiHeadAttention(nn.Module):
    def __init__(self, n_head: int, d_model: int, d_k: int, d_v: int, dropout: float = 0.1):
        super().__init__()
        self.n_head, self.d_k, self.d_v = n_head, d_k, d_v
        self.w_qs = nn.Linear(d_model, n_head * d_k)
        self.w_ks = nn.Linear(d_model, n_head * d_k)
        self.w_vs = nn.Linear(d_model, n_head * d_v)
        self.attention = ScaledDotProductAttention(temperature=float(np.power(d_k, 0.5)))
        self.layer_norm = nn.LayerNorm(d_model)
        self.fc = nn.Linear(n_head * d_v, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q, k, v [B, L, D]; mask [B, Lq, Lk] (True = masked key) -> [B, Lq, D]."""
        n_head, d_k, d_v = self.n_head, self.d_k, self.d_v
        b = q.shape[0]
        residual = q
        # [B, L, H, dk] -> [B, H, L, dk] (ming024 folds heads into the batch: same math)
        q = self.w_qs(q).view(b, -1, n_head, d_k).transpose(1, 2)
        k = self.w_ks(k).view(b, -1, n_head, d_k).transpose(1, 2)
        v = self.w_vs(v).view(b, -1, n_head, d_v).transpose(1, 2)
        if mask is not None:
            mask = mask.unsqueeze(1)  # [B, 1, Lq, Lk]
        output, attn = self.attention(q, k, v, mask=mask)
        output = output.transpose(1, 2).reshape(b, -1, n_head * d_v)
        output = self.dropout(self.fc(output))
        output = self.layer_norm(output + residual)
        return output, attn


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_in: int, d_hid: int, kernel_size, dropout: float = 0.1):
        super().__init__()
        self.w_1 = nn.Conv1d(d_in, d_hid, kernel_size=kernel_size[0], padding=(kernel_size[0] - 1) // 2)
        self.w_2 = nn.Conv1d(d_hid, d_in, kernel_size=kernel_size[1], padding=(kernel_size[1] - 1) // 2)
        self.layer_norm = nn.LayerNorm(d_in)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        output = x.transpose(1, 2)
        output = self.w_2(F.relu(self.w_1(output)))
        output = output.transpose(1, 2)
        output = self.dropout(output)
        return self.layer_norm(output + residual)


class FFTBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, d_k: int, d_v: int, d_inner: int, kernel_size,
                 dropout: float = 0.1):
        super().__init__()
        self.slf_attn = MultiHeadAttention(n_head, d_model, d_k, d_v, dropout=dropout)
        self.pos_ffn = PositionwiseFeedForward(d_model, d_inner, kernel_size, dropout=dropout)

    def forward(self, enc_input: Tensor, mask: Tensor, slf_attn_mask: Tensor) -> tuple[Tensor, Tensor]:
        enc_output, enc_slf_attn = self.slf_attn(enc_input, enc_input, enc_input, mask=slf_attn_mask)
        enc_output = enc_output.masked_fill(mask.unsqueeze(-1), 0)
        enc_output = self.pos_ffn(enc_output)
        enc_output = enc_output.masked_fill(mask.unsqueeze(-1), 0)
        return enc_output, enc_slf_attn


class Encoder(nn.Module):
    def __init__(self, config: FastSpeech2Config):
        super().__init__()
        c = config
        n_position = c.max_seq_len + 1
        d_model = c.encoder_hidden
        d_k = d_v = c.encoder_hidden // c.encoder_head
        self.max_seq_len = c.max_seq_len
        self.d_model = d_model
        self.src_word_emb = nn.Embedding(c.n_symbols, d_model, padding_idx=PAD)
        self.register_buffer("position_enc", get_sinusoid_encoding_table(n_position, d_model).unsqueeze(0))
        self.positions = SinusoidPositions(d_model)
        self.layer_stack = nn.ModuleList([
            FFTBlock(d_model, c.encoder_head, d_k, d_v, c.conv_filter_size, c.conv_kernel_size, dropout=0.2)
            for _ in range(c.encoder_layer)])

    def forward(self, src_seq: Tensor, mask: Tensor) -> Tensor:
        slf_attn_mask = mask.unsqueeze(1).expand(-1, src_seq.shape[1], -1)
        enc_output = self.src_word_emb(src_seq) + self.positions(self.position_enc, src_seq)
        for enc_layer in self.layer_stack:
            enc_output, _ = enc_layer(enc_output, mask=mask, slf_attn_mask=slf_attn_mask)
        return enc_output


class Decoder(nn.Module):
    def __init__(self, config: FastSpeech2Config):
        super().__init__()
        c = config
        n_position = c.max_seq_len + 1
        d_model = c.decoder_hidden
        d_k = d_v = c.decoder_hidden // c.decoder_head
        self.max_seq_len = c.max_seq_len
        self.d_model = d_model
        self.register_buffer("position_enc", get_sinusoid_encoding_table(n_position, d_model).unsqueeze(0))
        self.positions = SinusoidPositions(d_model)
        self.layer_stack = nn.ModuleList([
            FFTBlock(d_model, c.decoder_head, d_k, d_v, c.conv_filter_size, c.conv_kernel_size, dropout=0.2)
            for _ in range(c.decoder_layer)])

    def forward(self, enc_seq: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        slf_attn_mask = mask.unsqueeze(1).expand(-1, enc_seq.shape[1], -1)
        dec_output = enc_seq + self.positions(self.position_enc, enc_seq)
        for dec_layer in self.layer_stack:
            dec_output, _ = dec_layer(dec_output, mask=mask, slf_attn_mask=slf_attn_mask)
        return dec_output, mask


class ConvNorm(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, bias: bool = True, w_init_gain: str = "linear"):
        super().__init__()
        if padding is None:
            assert kernel_size % 2 == 1
            padding = int(dilation * (kernel_size - 1) / 2)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                              padding=padding, dilation=dilation, bias=bias)

    def forward(self, signal: Tensor) -> Tensor:
        return self.conv(signal)


class PostNet(nn.Module):
    """Five 1-d convolutions (conv + BatchNorm, tanh between) with 512 channels and kernel 5."""

    def __init__(self, n_mel_channels: int = 80, postnet_embedding_dim: int = 512,
                 postnet_kernel_size: int = 5, postnet_n_convolutions: int = 5):
        super().__init__()
        pad = int((postnet_kernel_size - 1) / 2)
        dims = [n_mel_channels] + [postnet_embedding_dim] * (postnet_n_convolutions - 1) + [n_mel_channels]
        self.convolutions = nn.ModuleList()
        for i in range(postnet_n_convolutions):
            last = i == postnet_n_convolutions - 1
            self.convolutions.append(nn.Sequential(
                ConvNorm(dims[i], dims[i + 1], kernel_size=postnet_kernel_size, stride=1, padding=pad,
                         dilation=1, w_init_gain="linear" if last else "tanh"),
                nn.BatchNorm1d(dims[i + 1])))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, F, M], mask [B, F] (True = padding; zeroed before every convolution) -> [B, F, M]."""
        keep = None if mask is None else (~mask).unsqueeze(1).to(x.dtype)  # [B, 1, F]
        x = x.transpose(1, 2)
        for i, conv in enumerate(self.convolutions):
            if keep is not None:
                x = x * keep
            x = conv(x)
            if i < len(self.convolutions) - 1:
                x = torch.tanh(x)
            x = F.dropout(x, 0.5, self.training)
        return x.transpose(1, 2)


# ---------------------------------------------------------------- model/modules.py

class Conv(nn.Module):
    """Conv1d on [B, L, C] (transposes around nn.Conv1d)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True, w_init: str = "linear"):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                              padding=padding, dilation=dilation, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class VariancePredictor(nn.Module):
    """Duration, pitch and energy predictor: (conv1d -> relu -> LayerNorm -> dropout) x2 -> linear."""

    def __init__(self, config: FastSpeech2Config):
        super().__init__()
        self.input_size = config.encoder_hidden
        self.filter_size = config.variance_predictor_filter_size
        self.kernel = config.variance_predictor_kernel_size
        self.conv_output_size = config.variance_predictor_filter_size
        self.dropout = 0.5
        pad = (self.kernel - 1) // 2  # ming024 hard-codes padding=1 for conv1d_2: the same for kernel 3
        self.conv_layer = nn.Sequential(OrderedDict([
            ("conv1d_1", Conv(self.input_size, self.filter_size, kernel_size=self.kernel, padding=pad)),
            ("relu_1", nn.ReLU()),
            ("layer_norm_1", nn.LayerNorm(self.filter_size)),
            ("dropout_1", nn.Dropout(self.dropout)),
            ("conv1d_2", Conv(self.filter_size, self.filter_size, kernel_size=self.kernel, padding=pad)),
            ("relu_2", nn.ReLU()),
            ("layer_norm_2", nn.LayerNorm(self.filter_size)),
            ("dropout_2", nn.Dropout(self.dropout)),
        ]))
        self.linear_layer = nn.Linear(self.conv_output_size, 1)

    def forward(self, encoder_output: Tensor, mask: Tensor | None) -> Tensor:
        """[B, T, D] -> [B, T]; padded positions are zeroed at the input of both convolutions."""
        out = encoder_output
        for name, layer in self.conv_layer.named_children():
            if mask is not None and name.startswith("conv1d"):
                out = out.masked_fill(mask.unsqueeze(-1), 0.0)
            out = layer(out)
        out = self.linear_layer(out).squeeze(-1)
        if mask is not None:
            out = out.masked_fill(mask, 0.0)
        return out


class LengthRegulator(nn.Module):
    """Repeats each phoneme's vector `duration` times, with tensor ops only (ONNX-exportable)."""

    def forward(self, x: Tensor, duration: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, D], duration [B, T] int64 (0 at padding) -> ([B, F, D] zero beyond mel_len, mel_len [B]).

        F = max(mel_len). Frame f of item b copies phoneme #{t : cumsum(duration)[b, t] <= f}, the
        phoneme whose [start, end) span holds f; frames past the item's length get index T, a zero row.
        """
        cum = torch.cumsum(duration, dim=1)  # [B, T]: end frame (exclusive) of each phoneme
        mel_len = cum[:, -1]
        frames = torch.arange(mel_len.max(), device=x.device)  # [F], data-dependent length
        finished = cum.unsqueeze(1) <= frames.view(1, -1, 1)  # [B, F, T]
        index = finished.to(torch.int64).sum(dim=-1)  # [B, F] in [0, T]
        x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)  # row T: zeros
        output = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        mel_mask = frames.unsqueeze(0) >= mel_len.unsqueeze(1)  # [B, F]
        output = output.masked_fill(mel_mask.unsqueeze(-1), 0.0)
        return output, mel_len


def _bucketize(x: Tensor, bins: Tensor) -> Tensor:
    """torch.bucketize(x, bins) (right=False): the number of bins strictly below x."""
    return (x.unsqueeze(-1) > bins).to(torch.int64).sum(dim=-1)


class VarianceAdaptor(nn.Module):
    """Duration, pitch and energy predictors, phoneme-level pitch/energy embeddings, length regulator."""

    pitch_feature_level = "phoneme_level"  # LJSpeech preprocess.yaml
    energy_feature_level = "phoneme_level"

    def __init__(self, config: FastSpeech2Config,
                 pitch_min_max: tuple[float, float] = LJSPEECH_PITCH_MIN_MAX,
                 energy_min_max: tuple[float, float] = LJSPEECH_ENERGY_MIN_MAX):
        super().__init__()
        self.duration_predictor = VariancePredictor(config)
        self.length_regulator = LengthRegulator()
        self.pitch_predictor = VariancePredictor(config)
        self.energy_predictor = VariancePredictor(config)
        n_bins = config.n_bins
        # linear quantization (LJSpeech model.yaml)
        self.register_buffer("pitch_bins", torch.linspace(*pitch_min_max, n_bins - 1))
        self.register_buffer("energy_bins", torch.linspace(*energy_min_max, n_bins - 1))
        self.pitch_embedding = nn.Embedding(n_bins, config.encoder_hidden)
        self.energy_embedding = nn.Embedding(n_bins, config.encoder_hidden)

    def get_pitch_embedding(self, x: Tensor, mask: Tensor, control: Tensor | float) -> tuple[Tensor, Tensor]:
        prediction = self.pitch_predictor(x, mask) * control
        return prediction, self.pitch_embedding(_bucketize(prediction, self.pitch_bins))

    def get_energy_embedding(self, x: Tensor, mask: Tensor, control: Tensor | float) -> tuple[Tensor, Tensor]:
        prediction = self.energy_predictor(x, mask) * control
        return prediction, self.energy_embedding(_bucketize(prediction, self.energy_bins))

    def forward(self, x: Tensor, src_mask: Tensor, p_control: Tensor | float = 1.0,
                e_control: Tensor | float = 1.0, d_control: Tensor | float = 1.0):
        """x [B, T, D], src_mask [B, T]; controls are floats or [B, 1] tensors.

        Returns (x [B, F, D], pitch [B, T], energy [B, T], log_duration [B, T], duration [B, T] int64,
        mel_len [B], mel_mask [B, F]).
        """
        pad = src_mask.unsqueeze(-1)
        log_duration_prediction = self.duration_predictor(x, src_mask)
        pitch_prediction, pitch_embedding = self.get_pitch_embedding(x, src_mask, p_control)
        x = (x + pitch_embedding).masked_fill(pad, 0.0)
        energy_prediction, energy_embedding = self.get_energy_embedding(x, src_mask, e_control)
        x = (x + energy_embedding).masked_fill(pad, 0.0)

        # ming024: clamp(round(exp(log_d) - 1) * d_control, min=0), then int() in the length regulator
        duration = torch.clamp(torch.round(torch.exp(log_duration_prediction) - 1) * d_control, min=0)
        duration = duration.masked_fill(src_mask, 0.0).to(torch.int64)
        # at least one frame per item: an all-zero item gives its first phoneme one frame
        silent = (duration.sum(dim=1, keepdim=True) == 0).to(torch.int64)
        duration = torch.cat([torch.maximum(duration[:, :1], silent), duration[:, 1:]], dim=1)

        x, mel_len = self.length_regulator(x, duration)
        mel_mask = get_mask_from_lengths(mel_len, x.shape[1])
        return x, pitch_prediction, energy_prediction, log_duration_prediction, duration, mel_len, mel_mask


# ---------------------------------------------------------------- model/fastspeech2.py

class FastSpeech2(nn.Module):
    def __init__(self, config: FastSpeech2Config):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.variance_adaptor = VarianceAdaptor(config)
        self.decoder = Decoder(config)
        self.mel_linear = nn.Linear(config.decoder_hidden, config.n_mel_channels)
        self.postnet = PostNet(config.n_mel_channels, config.postnet_embedding_dim,
                               config.postnet_kernel_size, config.postnet_n_convolutions)

    def forward(self, texts: Tensor, src_lens: Tensor, p_control: Tensor | float = 1.0,
                e_control: Tensor | float = 1.0, d_control: Tensor | float = 1.0):
        """texts [B, T] int64 (0 = padding), src_lens [B] -> (mel [B, F, M], postnet mel [B, F, M],
        pitch [B, T], energy [B, T], log_duration [B, T], duration [B, T], src_mask, mel_mask, mel_len [B]).
        Both mels are zero beyond each item's mel_len."""
        src_lens = src_lens.clamp(min=1)
        src_masks = get_mask_from_lengths(src_lens, texts.shape[1])
        output = self.encoder(texts, src_masks)
        (output, p_predictions, e_predictions, log_d_predictions, d_rounded, mel_lens,
         mel_masks) = self.variance_adaptor(output, src_masks, p_control, e_control, d_control)
        output, mel_masks = self.decoder(output, mel_masks)
        pad = mel_masks.unsqueeze(-1)
        output = self.mel_linear(output).masked_fill(pad, 0.0)
        postnet_output = (self.postnet(output, mel_masks) + output).masked_fill(pad, 0.0)
        return (output, postnet_output, p_predictions, e_predictions, log_d_predictions, d_rounded,
                src_masks, mel_masks, mel_lens)


# ---------------------------------------------------------------- construction and export

@torch.no_grad()
def init_weights(model: FastSpeech2, seed: int = 0) -> FastSpeech2:
    """Deterministic, well-scaled random weights: PyTorch's default init under `seed`, BatchNorm
    running statistics near (0, 1), and a duration-predictor bias that gives ~2-5 frames per phoneme."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _init_modules(model, gen)
    lin = model.variance_adaptor.duration_predictor.linear_layer
    lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * (0.4 / math.sqrt(lin.in_features)))
    lin.bias.fill_(math.log(4.0))  # exp(log d) - 1 ~ 3 frames
    return model


def _init_modules(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Embedding, nn.LayerNorm)):
            m.reset_parameters()
        if isinstance(m, nn.Embedding):
            m.weight.mul_(0.3)
            if m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
        if isinstance(m, nn.BatchNorm1d):
            n = m.num_features
            m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
            m.bias.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(1.0 + 0.2 * torch.rand(n, generator=gen))


def build(config: FastSpeech2Config, seed: int = 0) -> FastSpeech2:
    return init_weights(FastSpeech2(config), seed).eval()



class TtsGraph(nn.Module):
    """fastspeech2: (phonemes [B, T] int64, phoneme_lengths [B, 1] int64, controls [B, 3] float32 = pitch, energy,
    duration scales) -> (mel [B, 80, F] float32, zero beyond each length; mel_lengths [B, 1] int64;
    durations [B, T] int64, mel frames per symbol, 0 at padding)."""

    SPEC = FASTSPEECH2

    def __init__(self, model: FastSpeech2):
        super().__init__()
        self.model = model
        self.preset = preset_with("fastspeech2", model.config)
        self.eval()

    def forward(self, phonemes: Tensor, phoneme_lengths: Tensor, controls: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(phonemes, phoneme_lengths.reshape(-1), controls[:, 0:1], controls[:, 1:2], controls[:, 2:3])
        mel, durations, mel_lens = out[1], out[5], out[-1]
        return mel.transpose(1, 2), mel_lens.unsqueeze(1), durations.to(torch.int64)

    def example_inputs(self, batch: int = 1, seed: int = 0, **sizes: int) -> tuple[Tensor, ...]:
        """Random phonemes in 1..n_symbols-1, lengths in [T/2, T] (the longest is T), padding 0, controls 1.0."""
        shapes = sample_shape(self.SPEC, self.preset, batch, **sizes)
        gen = torch.Generator().manual_seed(seed)
        b, t = shapes["phonemes"]
        phonemes = torch.randint(1, self.model.config.n_symbols, (b, t), generator=gen)
        lengths = torch.randint(max(1, t // 2), t + 1, (b,), generator=gen)
        lengths[0] = t
        phonemes = phonemes.masked_fill(torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1), PAD)
        controls = torch.ones(shapes["controls"], dtype=torch.float32)
        return phonemes, lengths.reshape(b, 1), controls
