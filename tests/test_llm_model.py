"""Qwen2 port (export/toolchain/models/qwen2.py): KV-cache decoding, batching, spec shapes, HF names, sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from export.contract import spec
from export.contract.presets import Qwen2Config, get_preset
from export.toolchain.models import qwen2

TINY = get_preset("tiny")
ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> qwen2.Qwen2ForCausalLM:
    return qwen2.build(TINY.llm, seed=0)


def _ids(batch: int, n: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, TINY.llm.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_incremental_decoding_matches_full_forward(model):
    ids = _ids(1, 12)
    full, full_kv = model(ids, model.empty_cache(1), all_logits=True)  # [1, 12, V]
    torch.testing.assert_close(model(ids, model.empty_cache(1))[0], full[:, -1], atol=ATOL, rtol=0)
    n_prefill = 5
    logits, kv = model(ids[:, :n_prefill], model.empty_cache(1))
    torch.testing.assert_close(logits, full[:, n_prefill - 1], atol=ATOL, rtol=0)
    for i in range(n_prefill, ids.shape[1]):
        logits, kv = model(ids[:, i:i + 1], kv)
        torch.testing.assert_close(logits, full[:, i], atol=ATOL, rtol=0)
    torch.testing.assert_close(kv, full_kv, atol=ATOL, rtol=0)


def _hf_reference(m: qwen2.Qwen2ForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """All-position logits written the way transformers' modeling_qwen2 does (repeat_kv, position_ids)."""
    c = m.config
    b, t = ids.shape
    pos = torch.arange(t)[None].expand(b, t)  # position_ids
    inv = m.model.rotary_emb.inv_freq
    freqs = (inv[None, :, None] @ pos[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [B, 1, T, Dh]
    n_rep = c.num_attention_heads // c.num_key_value_heads

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps))

    def rot(x):
        return torch.cat((-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]), dim=-1)

    def repeat_kv(x):
        bb, kvh, s, d = x.shape
        return x[:, :, None].expand(bb, kvh, n_rep, s, d).reshape(bb, kvh * n_rep, s, d)

    h = m.model.embed_tokens(ids)
    for layer in m.model.layers:
        a = layer.self_attn
        x = rms(h, layer.input_layernorm.weight)
        q = a.q_proj(x).view(b, t, -1, c.head_dim).transpose(1, 2)
        k = a.k_proj(x).view(b, t, -1, c.head_dim).transpose(1, 2)
        v = a.v_proj(x).view(b, t, -1, c.head_dim).transpose(1, 2)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        o = F.scaled_dot_product_attention(q, repeat_kv(k), repeat_kv(v), is_causal=True)
        h = h + a.o_proj(o.transpose(1, 2).reshape(b, t, -1))
        x = rms(h, layer.post_attention_layernorm.weight)
        h = h + layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x))
    return m.lm_head(rms(h, m.model.norm.weight))


@torch.no_grad()
def test_matches_transformers_style_reference(model):
    ids = _ids(2, 9, seed=7)
    ours = model(ids, model.empty_cache(2), all_logits=True)[0]
    torch.testing.assert_close(ours, _hf_reference(model, ids), atol=ATOL, rtol=0)


@torch.no_grad()
def test_batch_of_two_equals_single_runs(model):
    graph = qwen2.LlmGraph(model)
    ids, past = graph.example_inputs(batch=2, seed=3, tokens=4, past=6)
    logits, present = graph(ids, past)
    for b in range(2):
        lb, pb = graph(ids[b:b + 1], past[b:b + 1])
        torch.testing.assert_close(lb, logits[b:b + 1], atol=ATOL, rtol=0)
        torch.testing.assert_close(pb, present[b:b + 1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_shapes_match_spec(model):
    graph = qwen2.LlmGraph(model)
    s = spec.LLM
    for t, p in [(1, 0), (5, 3)]:
        inputs = graph.example_inputs(batch=3, tokens=t, past=p)
        sizes = dict(tokens=t, past=p, total=p + t)
        exp = {x.name: (3, *(sizes.get(d, d) for d in s.shape(x, TINY))) for x in s.inputs + s.outputs}
        for tensor, x in zip(s.inputs, inputs):
            assert tuple(x.shape) == exp[tensor.name], tensor.name
        assert int(inputs[0].max()) < TINY.llm.vocab_size
        for tensor, y in zip(s.outputs, graph(*inputs)):
            assert tuple(y.shape) == exp[tensor.name], tensor.name


@torch.no_grad()
def test_generate_greedy_matches_uncached_argmax(model):
    ids = _ids(2, 5, seed=4)
    got = qwen2.generate_greedy(model, ids, max_new=6)
    seq = ids
    for _ in range(6):
        nxt = model(seq, model.empty_cache(2))[0].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(got, seq[:, ids.shape[1]:])


def _hf_keys(n_layers: int, bias: bool) -> set[str]:
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(n_layers):
        pre = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            keys.add(pre + f"self_attn.{proj}.weight")
            if bias:
                keys.add(pre + f"self_attn.{proj}.bias")
        keys |= {pre + k for k in ("self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                   "mlp.down_proj.weight", "input_layernorm.weight",
                                   "post_attention_layernorm.weight")}
    return keys


@pytest.mark.parametrize("bias,tied", [(True, True), (False, False)])
def test_state_dict_keys_are_transformers_names(bias, tied):
    cfg = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attention_bias=bias, tie_word_embeddings=tied)
    with torch.device("meta"):
        m = qwen2.Qwen2ForCausalLM(cfg)
    assert set(m.state_dict()) == _hf_keys(2, bias)
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied
    assert m.state_dict()["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 8, 32)


def test_base_parameter_count():
    with torch.device("meta"):
        m = qwen2.Qwen2ForCausalLM(get_preset("base").llm)
    n = sum(p.numel() for p in m.parameters())  # tied lm_head counted once
    print(f"qwen2.5-0.5b: {n / 1e6:.2f}M parameters")
    assert abs(n - 494e6) <= 0.02 * 494e6
