"""An independent reference forward pass in numpy (float64), written from the GGUF as llama.cpp computes it: the
tensors as stored (Q/K rows in llama.cpp's permuted order), llama.cpp's rotary mode for the architecture (`llama`:
NORM, rotating adjacent pairs (2i, 2i + 1); `qwen2`: NEOX, pairs (i, i + Dh/2)), RMSNorm, grouped-query attention
(query head h reads kv head h // (H / KVH)), SwiGLU, and the token embedding as output matrix when `output.weight`
is absent. It shares no code with export/toolchain/models/qwen2.py or the converter's unpermute.
"""
from __future__ import annotations

import numpy as np


def _tensors(reader) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize
    return {t.name: np.asarray(dequantize(t.data, t.tensor_type), np.float64).reshape(
        [int(d) for d in reversed(t.shape.tolist())]) for t in reader.tensors}


def _meta(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, pos: np.ndarray, base: float, neox: bool) -> np.ndarray:
    """x [T, heads, Dh]; rotate pairs by pos * base^(-2i/Dh)."""
    dh = x.shape[-1]
    ang = pos[:, None] * base ** (-np.arange(0, dh, 2) / dh)  # [T, Dh/2]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    a, b = (x[..., : dh // 2], x[..., dh // 2:]) if neox else (x[..., 0::2], x[..., 1::2])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(x)
    if neox:
        out[..., : dh // 2], out[..., dh // 2:] = ra, rb
    else:
        out[..., 0::2], out[..., 1::2] = ra, rb
    return out


def forward(reader, ids: list[int], weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits [T, V] (float64) for token ids, no cache."""
    w = weights if weights is not None else _tensors(reader)
    arch = _meta(reader, "general.architecture")
    heads = int(_meta(reader, f"{arch}.attention.head_count"))
    kv_heads = int(_meta(reader, f"{arch}.attention.head_count_kv", heads))
    eps = float(_meta(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6))
    base = float(_meta(reader, f"{arch}.rope.freq_base", 10000.0))
    layers = int(_meta(reader, f"{arch}.block_count"))
    neox = arch == "qwen2"
    x = w["token_embd.weight"][ids]  # [T, D]
    t, d = x.shape
    dh = d // heads
    pos = np.arange(t, dtype=np.float64)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(layers):
        p = f"blk.{i}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        proj = {}
        for name in ("q", "k", "v"):
            y = h @ w[p + f"attn_{name}.weight"].T
            if p + f"attn_{name}.bias" in w:
                y = y + w[p + f"attn_{name}.bias"]
            proj[name] = y
        q = _rope(proj["q"].reshape(t, heads, dh), pos, base, neox)
        k = _rope(proj["k"].reshape(t, kv_heads, dh), pos, base, neox)
        v = proj["v"].reshape(t, kv_heads, dh)
        out = np.empty((t, heads, dh))
        for hh in range(heads):
            kv = hh // (heads // kv_heads)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(dh) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(t, d) @ w[p + "attn_output.weight"].T
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = _rms(x, w["output_norm.weight"], eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T
