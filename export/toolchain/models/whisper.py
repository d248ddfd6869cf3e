"""Whisper (openai/whisper `whisper/model.py`) with an explicit, tensor-valued decoder KV cache.

Module and parameter names are exactly OpenAI's, so a released checkpoint's
`model_state_dict` loads with `strict=True` (dims from its `dims` entry fill
`WhisperDims`). Differences from the original, none of which touch the weights:

* the decoder's self-attention cache is one tensor `past_kv [B, L, 2, H, P, Dh]`
  (keys/values as the `key`/`value` projections output them, before scaling),
  instead of forward hooks on the key/value modules;
* attention is written with explicit matmul + softmax and a causal mask built
  from `arange` comparisons, so the legacy TorchScript ONNX exporter
  (`dynamo=False`, opset 17) keeps every length dynamic;
* the decoder returns only the last position's logits (what greedy/beam steps use).

Shapes: B batch, T new tokens, P cached tokens, S = P + T, D width, H heads, Dh = D / H,
L decoder layers, V vocabulary, A = n_audio_ctx (1500), F = 2 A mel frames (3000).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.contract.presets import WhisperDims, preset_with
from export.contract.spec import ASR_DECODER, ASR_ENCODER, sample_shape


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's sinusoidal table [length, channels]: sin half then cos half."""
    assert channels % 2 == 0
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled_time = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


def causal_mask(n_past: Tensor | int, n_new: Tensor | int, device=None) -> Tensor:
    """Additive mask [T, S]: query i (absolute position P + i) sees keys 0..P + i."""
    q_pos = torch.arange(n_new, device=device) + n_past  # [T]
    k_pos = torch.arange(n_past + n_new, device=device)  # [S]
    blocked = k_pos[None, :] > q_pos[:, None]  # [T, S]
    return torch.zeros_like(blocked, dtype=torch.float32).masked_fill(blocked, float("-inf"))


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head, self.head_dim = n_head, n_state // n_head  # python ints: static dims in the ONNX graph
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def heads(self, x: Tensor) -> Tensor:  # [B, N, D] -> [B, H, N, Dh]
        return x.view(x.shape[0], x.shape[1], self.n_head, self.head_dim).transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """q [B, H, T, Dh], k/v [B, H, S, Dh], mask [T, S] additive -> [B, T, D]."""
        scale = q.shape[-1] ** -0.25  # whisper scales q and k each by Dh^-1/4
        qk = (q * scale) @ (k * scale).transpose(-1, -2)  # [B, H, T, S]
        if mask is not None:
            qk = qk + mask
        w = F.softmax(qk.float(), dim=-1).to(q.dtype)
        out = (w @ v).transpose(1, 2)  # [B, T, H, Dh]
        return self.out(out.reshape(out.shape[0], out.shape[1], self.n_head * self.head_dim))  # [B, T, D]

    def forward(self, x: Tensor, xa: Tensor | None = None, mask: Tensor | None = None,
                past: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Self-attention (xa None) or cross-attention over xa [B, A, D].

        past [B, 2, H, P, Dh] (self-attention only) is extended with this call's keys and
        values; returns (out [B, T, D], present [B, 2, H, P + T, Dh] or None).
        """
        q = self.heads(self.query(x))  # [B, H, T, Dh]
        src = x if xa is None else xa
        k = self.heads(self.key(src))  # [B, H, T or A, Dh]
        v = self.heads(self.value(src))
        present = None
        if past is not None:
            k = torch.cat([past[:, 0], k], dim=2)  # [B, H, P + T, Dh]
            v = torch.cat([past[:, 1], v], dim=2)
            present = torch.stack([k, v], dim=1)  # [B, 2, H, P + T, Dh]
        return self.attend(q, k, v, mask), present


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        n_mlp = n_state * 4
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor, xa: Tensor | None = None, mask: Tensor | None = None,
                past: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        a, present = self.attn(self.attn_ln(x), mask=mask, past=past)
        x = x + a
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), xa)[0]
        x = x + self.mlp(self.mlp_ln(x))
        return x, present


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))  # [A, D]
        self.blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer)])
        self.ln_post = nn.LayerNorm(n_state)

    def forward(self, x: Tensor) -> Tensor:
        """mel [B, n_mels, F] -> audio features [B, A, D]."""
        x = F.gelu(self.conv1(x))  # [B, D, F]
        x = F.gelu(self.conv2(x))  # [B, D, A]
        x = x.permute(0, 2, 1)  # [B, A, D]
        x = x + self.positional_embedding
        for block in self.blocks:
            x = block(x)[0]
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.n_head = n_head
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state))  # [n_text_ctx, D]
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(n_state)

    def empty_cache(self, batch: int = 1) -> Tensor:
        """A P = 0 cache [B, L, 2, H, 0, Dh]."""
        d = self.token_embedding.weight
        return d.new_zeros(batch, len(self.blocks), 2, self.n_head, 0, d.shape[1] // self.n_head)

    def forward(self, tokens: Tensor, xa: Tensor, past_kv: Tensor, all_logits: bool = False
                ) -> tuple[Tensor, Tensor]:
        """tokens [B, T], xa [B, A, D], past_kv [B, L, 2, H, P, Dh]
        -> (logits [B, V] at the last position ([B, T, V] with all_logits), present_kv [B, L, 2, H, P + T, Dh])."""
        n_past, n_new = past_kv.shape[4], tokens.shape[1]
        positions = torch.arange(n_new, device=tokens.device) + n_past  # [T]: P .. P + T - 1
        x = self.token_embedding(tokens) + F.embedding(positions, self.positional_embedding)  # [B, T, D]
        mask = causal_mask(n_past, n_new, device=tokens.device)  # [T, S]
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, xa, mask=mask, past=past_kv[:, i])
            presents.append(present)
        if not all_logits:
            x = x[:, -1]  # [B, D]
        x = self.ln(x)
        # tied output projection; F.linear exports as Gemm(transB) on 2-D x, so ONNX keeps one copy of the matrix
        logits = F.linear(x, self.token_embedding.weight)  # [B, V] (or [B, T, V])
        return logits, torch.stack(presents, dim=1)


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                    dims.n_audio_head, dims.n_audio_layer)
        self.decoder = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state,
                                   dims.n_text_head, dims.n_text_layer)

    def embed_audio(self, mel: Tensor) -> Tensor:
        return self.encoder(mel)

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits [B, T, V] for all positions (no cache)."""
        xa = self.encoder(mel)
        return self.decoder(tokens, xa, self.decoder.empty_cache(tokens.shape[0]), all_logits=True)[0]


def init_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Deterministic small random init of every parameter (norm scales near 1); buffers untouched."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            is_norm = name.endswith(("ln.weight", "ln_post.weight", "_ln.weight", "layernorm.weight", "norm.weight"))
            p.copy_(1.0 + noise if is_norm else noise)
    return model


def build(dims: WhisperDims, seed: int = 0) -> Whisper:
    return init_weights(Whisper(dims), seed).eval()



class EncoderGraph(nn.Module):
    """ASR_ENCODER: mel [B, 80, 3000] -> audio_features [B, 1500, D]."""

    SPEC = ASR_ENCODER

    def __init__(self, model: Whisper):
        super().__init__()
        self.model = model
        self.preset = preset_with("asr", model.dims)

    def forward(self, mel: Tensor) -> Tensor:
        return self.model.encoder(mel)

    def example_inputs(self, batch: int = 1, seed: int = 0, **sizes: int) -> tuple[Tensor, ...]:
        shapes = sample_shape(self.SPEC, self.preset, batch, **sizes)
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(shapes["mel"], generator=gen),)


class DecoderGraph(nn.Module):
    """ASR_DECODER: (tokens [B, T], audio_features [B, A, D], past_kv [B, L, 2, H, P, Dh])
    -> (logits [B, V], present_kv [B, L, 2, H, P + T, Dh])."""

    SPEC = ASR_DECODER

    def __init__(self, model: Whisper):
        super().__init__()
        self.model = model
        self.preset = preset_with("asr", model.dims)

    def forward(self, tokens: Tensor, audio_features: Tensor, past_kv: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.decoder(tokens, audio_features, past_kv)

    def example_inputs(self, batch: int = 1, seed: int = 0, **sizes: int) -> tuple[Tensor, ...]:
        shapes = sample_shape(self.SPEC, self.preset, batch, **sizes)
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, self.model.dims.n_vocab, shapes["tokens"], generator=gen)
        return (tokens, torch.randn(shapes["audio_features"], generator=gen),
                torch.randn(shapes["past_kv"], generator=gen))


@torch.no_grad()
def greedy_decode(model: Whisper, mel: Tensor, prompt_tokens: list[int] | Tensor, eot: int,
                  max_tokens: int) -> list[list[int]]:
    """Greedy transcription with the KV cache: prefill the prompt, then one token per step.

    mel [B, n_mels, F]; returns per batch item the generated ids (prompt and eot excluded).
    """
    batch = mel.shape[0]
    xa = model.encoder(mel)
    tokens = torch.as_tensor(prompt_tokens, dtype=torch.long).reshape(1, -1).expand(batch, -1)
    kv = model.decoder.empty_cache(batch)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_tokens):
        if kv.shape[4] + tokens.shape[1] > model.dims.n_text_ctx:
            break
        logits, kv = model.decoder(tokens, xa, kv)
        nxt = logits.argmax(-1)  # [B]
        for b in range(batch):
            if not done[b] and int(nxt[b]) != eot:
                out[b].append(int(nxt[b]))
        done |= nxt == eot
        if bool(done.all()):
            break
        tokens = nxt[:, None]
    return out
