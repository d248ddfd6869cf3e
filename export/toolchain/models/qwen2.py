"""Qwen2 (and LLaMA-family) decoder-only transformer with an explicit, tensor-valued KV cache.

Parameter names are exactly those of Hugging Face transformers' `Qwen2ForCausalLM`
state dict, so a released checkpoint loads with `load_state_dict` (a tied checkpoint
stored without `lm_head.weight` loads with strict=False, or after copying the embedding
into that key). The math follows transformers' modeling_qwen2.py: RMSNorm in float32,
rotary embeddings with the `rotate_half` convention, grouped-query attention, SwiGLU MLP.

The cache is one tensor `past_kv [B, L, 2, KVH, P, Dh]` (keys after the rotary embedding,
as transformers caches them); attention is explicit matmul + softmax with an `arange`
causal mask so the legacy ONNX exporter (`dynamo=False`, opset 17) keeps B, T and P dynamic.

Shapes: B batch, T new tokens, P cached tokens, S = P + T, D hidden, H query heads,
KVH key/value heads, R = H / KVH queries per kv head, Dh head dim, L layers, V vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.contract.presets import Preset, Qwen2Config, preset_with
from export.contract.spec import LLM, sample_shape
from export.toolchain.models.whisper import causal_mask, init_weights


class Qwen2RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Qwen2RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [Dh / 2]

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions [T] -> cos, sin [T, Dh]."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, Dh / 2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


class Qwen2Attention(nn.Module):
    def __init__(self, c: Qwen2Config):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.n_rep = self.n_head // self.n_kv  # python ints: static dims in the ONNX graph
        self.q_proj = nn.Linear(c.hidden_size, self.n_head * self.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.n_kv * self.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.n_kv * self.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, c.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, D], cos/sin [T, Dh], mask [T, S], past [B, 2, KVH, P, Dh]
        -> (out [B, T, D], present [B, 2, KVH, S, Dh])."""
        b, t = x.shape[0], x.shape[1]
        # query head h = kv * R + r, as transformers' repeat_kv orders them
        q = self.q_proj(x).view(b, t, self.n_kv, self.n_rep, self.head_dim).permute(0, 2, 3, 1, 4)  # [B, KVH, R, T, Dh]
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # [B, KVH, T, Dh]
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = torch.cat([past[:, 0], k], dim=2)  # [B, KVH, S, Dh]
        v = torch.cat([past[:, 1], v], dim=2)
        present = torch.stack([k, v], dim=1)  # [B, 2, KVH, S, Dh]
        # grouped-query attention: broadcast each kv head over its R query heads
        scores = q @ k[:, :, None].transpose(-1, -2) * self.head_dim ** -0.5  # [B, KVH, R, T, S]
        w = F.softmax((scores + mask).float(), dim=-1).to(q.dtype)
        out = w @ v[:, :, None]  # [B, KVH, R, T, Dh]
        out = out.permute(0, 3, 1, 2, 4).reshape(b, t, self.n_head * self.head_dim)  # [B, T, H * Dh]
        return self.o_proj(out), present


class Qwen2MLP(nn.Module):
    def __init__(self, c: Qwen2Config):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, c: Qwen2Config):
        super().__init__()
        self.self_attn = Qwen2Attention(c)
        self.mlp = Qwen2MLP(c)
        self.input_layernorm = Qwen2RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class Qwen2Model(nn.Module):
    def __init__(self, c: Qwen2Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([Qwen2DecoderLayer(c) for _ in range(c.num_hidden_layers)])
        self.norm = Qwen2RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(c.head_dim, c.rope_theta)

    def forward(self, input_ids: Tensor, past_kv: Tensor) -> tuple[Tensor, Tensor]:
        """input_ids [B, T], past_kv [B, L, 2, KVH, P, Dh] -> (hidden [B, T, D] normed, present_kv)."""
        n_past, n_new = past_kv.shape[4], input_ids.shape[1]
        positions = torch.arange(n_new, device=input_ids.device) + n_past  # [T]: P .. P + T - 1
        cos, sin = (t.to(self.embed_tokens.weight.dtype) for t in self.rotary_emb(positions))  # fp32 math, model dtype
        mask = causal_mask(n_past, n_new, device=input_ids.device)  # [T, S]
        x = self.embed_tokens(input_ids)
        presents = []
        for i, layer in enumerate(self.layers):
            x, present = layer(x, cos, sin, mask, past_kv[:, i])
            presents.append(present)
        return self.norm(x), torch.stack(presents, dim=1)


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def empty_cache(self, batch: int = 1) -> Tensor:
        c = self.config
        return self.lm_head.weight.new_zeros(batch, c.num_hidden_layers, 2, c.num_key_value_heads, 0, c.head_dim)

    def forward(self, input_ids: Tensor, past_kv: Tensor, all_logits: bool = False) -> tuple[Tensor, Tensor]:
        """-> (logits [B, V] at the last position ([B, T, V] with all_logits), present_kv [B, L, 2, KVH, P + T, Dh])."""
        h, present = self.model(input_ids, past_kv)
        if not all_logits:
            h = h[:, -1]  # [B, D]
        return self.lm_head(h), present


def build(config: Qwen2Config, seed: int = 0) -> Qwen2ForCausalLM:
    return init_weights(Qwen2ForCausalLM(config), seed).eval()


class LlmGraph(nn.Module):
    """LLM: (input_ids [B, T], past_kv [B, L, 2, KVH, P, Dh]) -> (logits [B, V], present_kv [B, L, 2, KVH, P + T, Dh])."""

    SPEC = LLM

    def __init__(self, model: Qwen2ForCausalLM):
        super().__init__()
        self.model = model
        self.preset: Preset = preset_with("llm", model.config)

    def forward(self, input_ids: Tensor, past_kv: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(input_ids, past_kv)

    def example_inputs(self, batch: int = 1, seed: int = 0, **sizes: int) -> tuple[Tensor, ...]:
        shapes = sample_shape(self.SPEC, self.preset, batch, **sizes)
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.model.config.vocab_size, shapes["input_ids"], generator=gen)
        return ids, torch.randn(shapes["past_kv"], generator=gen)


@torch.no_grad()
def generate_greedy(model: Qwen2ForCausalLM, ids: Tensor | list[int], max_new: int,
                    eos: int | None = None) -> Tensor:
    """Greedy continuation with the KV cache. ids [B, T] (or a list) -> generated ids [B, <= max_new]."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    kv = model.empty_cache(ids.shape[0])
    out, step = [], ids
    for _ in range(max_new):
        logits, kv = model(step, kv)
        step = logits.argmax(-1, keepdim=True)  # [B, 1]
        out.append(step)
        if eos is not None and bool((step == eos).all()):
            break
    return torch.cat(out, dim=1) if out else ids.new_zeros(ids.shape[0], 0)
