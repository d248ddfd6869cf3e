"""The LLM with every session's KV cache kept on the GPU: batched decode steps replayed as CUDA graphs.

The `llm` model of the gpu variant (export/contract/spec.py, `LLM.session`). A request names its session
and carries only token ids; the answer is the next token's top candidates (`candidates`: the LLM_CANDIDATES most
likely ids and their logits, best first), picked on the GPU: the whole vocabulary's logits never leave it. The
orchestrator samples among them (ensemble/decoding.py). The cache is one static,
preallocated tensor per layer (keys and values, [slots + 1, KVH, max_length, Dh], the spec's GPU
precision); `export.runtime.session_runner.SessionRunner` handles the requests and which slot each session holds.

- A request of several tokens (the prompt) is a prefill: the model's own forward, its new keys/values written
  into the slot. New sessions' prompts in one Triton batch run together, padded to a length bucket, as CUDA graph
  replays per (batch bucket, length bucket) (`StepGraphs.first`); a prompt appended to a session's cached past
  runs eagerly.
- Requests of one token each (decode steps of different sessions, in one Triton batch) run
  together: `decode_step` writes each new key/value at its session's position and attends over
  the first `span` cached positions of each slot, masked per row to the session's own length.
  On CUDA it runs as a graph replay, one graph per (batch bucket, span bucket) captured at load;
  padding rows use a scratch slot. On the CPU (tests) the same function runs eagerly.
- A request with `session_end` frees the slot; idle sessions are evicted (SessionTable).
- A request with `past_kv` and no session id is served statelessly, as by every other variant.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from export.contract.spec import LLM_CANDIDATES, ModelSpec
from export.runtime.batching import BatchRunner, Feeds
from export.runtime.session_runner import DecodeGraphs, SessionRunner, capture
from export.toolchain.models.qwen2 import LlmGraph, Qwen2ForCausalLM, rotate_half

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SPAN_BUCKETS = (128, 256, 512, 1024, 2048)
PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512)
PREFILL_TOKENS = 2048  # the most prompt tokens (padding included) one batched prefill replay carries


def candidates(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (top_logits [B, K] float32, best first; top_ids [B, K] int64), K = min(LLM_CANDIDATES, V)."""
    top = torch.topk(logits.float(), min(LLM_CANDIDATES, logits.shape[-1]), dim=-1)
    return top.values, top.indices


def _rows(top: tuple[torch.Tensor, torch.Tensor] | list[np.ndarray]) -> Feeds:
    values, ids = (t.cpu().numpy() if isinstance(t, torch.Tensor) else t for t in top)
    return {"top_logits": values, "top_ids": ids}


class StaticKVCache:
    """Keys and values of every slot: k[l], v[l] are [slots + 1, KVH, max_length, Dh]; slot `slots` is scratch."""

    def __init__(self, model: Qwen2ForCausalLM, slots: int, max_length: int):
        c = model.config
        w = model.lm_head.weight
        shape = (c.num_hidden_layers, slots + 1, c.num_key_value_heads, max_length, c.head_dim)
        self.k = w.new_zeros(shape)
        self.v = w.new_zeros(shape)
        self.scratch = slots
        self.max_length = max_length

    def past(self, slot: int, length: int) -> torch.Tensor:
        """The slot's first `length` positions as the model's past_kv [1, L, 2, KVH, length, Dh]."""
        return torch.stack([self.k[:, slot, :, :length], self.v[:, slot, :, :length]], dim=1)[None]

    def write(self, slot: int, start: int, present: torch.Tensor) -> None:
        """present_kv [1, L, 2, KVH, S, Dh] -> positions start..S-1 of the slot."""
        end = present.shape[4]
        self.k[:, slot, :, start:end] = present[0, :, 0, :, start:end]
        self.v[:, slot, :, start:end] = present[0, :, 1, :, start:end]


class FusedLayers:
    """Per layer, the q/k/v projections as one matrix and gate/up as one: fewer, larger kernels per step."""

    def __init__(self, model: Qwen2ForCausalLM):
        self.qkv, self.gate_up = [], []
        for layer in model.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) if a.q_proj.bias is not None else None
            self.qkv.append((w, b))
            self.gate_up.append(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """Qwen2RMSNorm: normalized in float32, cast back, then scaled (one fused kernel for the first part)."""
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)


def decode_step(model: Qwen2ForCausalLM, cache: StaticKVCache, ids: torch.Tensor, slots: torch.Tensor,
                pos: torch.Tensor, span: int, fused: FusedLayers | None = None) -> torch.Tensor:
    """One new token per row: ids, slots, pos [B] (pos = the token's position = tokens cached before it).

    Writes each row's key/value at (slot, pos) and returns next-token logits [B, V]. Every row must have
    pos < span. The same arithmetic as Qwen2ForCausalLM.forward with past_kv (tests/test_llm_sessions.py).
    """
    fused = fused or FusedLayers(model)
    m = model.model
    b = ids.shape[0]
    dtype = m.embed_tokens.weight.dtype
    cos, sin = (t.to(dtype)[:, None] for t in m.rotary_emb(pos))  # [B, 1, Dh]
    # keys a row may see: its own cached positions and the new one; [B, 1, 1, span] over (KVH, R, span)
    visible = (torch.arange(span, device=ids.device)[None, :] <= pos[:, None])[:, None, None]
    x = m.embed_tokens(ids)  # [B, D]
    for i, layer in enumerate(m.layers):
        a = layer.self_attn
        nq, nkv, dh = a.n_head, a.n_kv, a.head_dim
        qkv = F.linear(_rms_norm(layer.input_layernorm, x), *fused.qkv[i]).view(b, nq + 2 * nkv, dh)
        qk, v = qkv[:, :nq + nkv], qkv[:, nq + nkv:]  # [B, H + KVH, Dh], [B, KVH, Dh]
        qk = qk * cos + rotate_half(qk) * sin  # rotary on queries and keys at once
        q, k = qk[:, :nq], qk[:, nq:]
        kc, vc = cache.k[i], cache.v[i]  # [S, KVH, M, Dh]
        kc[slots, :, pos] = k
        vc[slots, :, pos] = v
        keys = kc[:, :, :span].index_select(0, slots)  # [B, KVH, span, Dh]
        values = vc[:, :, :span].index_select(0, slots)
        # grouped-query attention as R query rows per kv head (query head h = kv * R + r, as transformers)
        out = F.scaled_dot_product_attention(q.view(b, nkv, a.n_rep, dh), keys, values, attn_mask=visible)
        x = x + a.o_proj(out.reshape(b, nq * dh))
        gate, up = F.linear(_rms_norm(layer.post_attention_layernorm, x), fused.gate_up[i]).chunk(2, dim=-1)
        x = x + layer.mlp.down_proj(F.silu(gate) * up)
    return model.lm_head(m.norm(x))  # [B, V]


def prefill_step(model: Qwen2ForCausalLM, cache: StaticKVCache, ids: torch.Tensor, slots: torch.Tensor,
                 n: torch.Tensor) -> torch.Tensor:
    """New sessions' prompts: ids [B, T] (row b's first n[b] real, the rest padding), slots and n [B] ->
    next-token logits [B, V] after each row's n-th token; keys/values of positions 0..T-1 go to the row's slot
    (those past n are overwritten by the decode steps before any row can see them)."""
    h, present = model.model(ids, model.empty_cache(ids.shape[0]))  # [B, T, D], [B, L, 2, KVH, T, Dh]
    t = ids.shape[1]
    cache.k[:, slots, :, :t] = present[:, :, 0].transpose(0, 1)  # [L, B, KVH, T, Dh]
    cache.v[:, slots, :, :t] = present[:, :, 1].transpose(0, 1)
    return model.lm_head(h[torch.arange(ids.shape[0], device=ids.device), n - 1])


class StepGraphs:
    """decode_step as one CUDA graph per (batch bucket, span bucket) (session_runner.DecodeGraphs), prefill_step
    per (batch bucket, prompt-length bucket) up to PREFILL_TOKENS a replay: the prompts of sessions that start
    together (a herd of turns) run as a few batched replays, not one each."""

    def __init__(self, model: Qwen2ForCausalLM, cache: StaticKVCache, max_batch: int, max_prompt: int):
        self.cache = cache
        dev = cache.k.device
        self.fused = FusedLayers(model)
        batches = [b for b in BATCH_BUCKETS if b <= max_batch] or [1]
        spans = [s for s in SPAN_BUCKETS if s < cache.max_length] + [cache.max_length]
        self.prompts = [t for t in PROMPT_BUCKETS if t < max_prompt] + [max_prompt]
        self.prompt_batches = {t: [b for b in batches if b == 1 or b * t <= PREFILL_TOKENS] for t in self.prompts}
        # rows: ids..., slot, n
        self.prompt = torch.zeros((batches[-1], self.prompts[-1] + 2), dtype=torch.int64, device=dev)
        self.prompt_host = torch.zeros_like(self.prompt, device="cpu").pin_memory()
        self.prefill: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            self.decode = DecodeGraphs(lambda ids, slots, pos, span: candidates(decode_step(model, cache, ids, slots,
                                                                                             pos, span, self.fused)),
                                       cache.scratch, batches, spans, dev, pool, stream)
            self.prompt[:, -2] = cache.scratch
            self.prompt[:, -1] = 1
            for t, bs in self.prompt_batches.items():
                for b in bs:
                    ids, slots, n = self.prompt[:b, :t], self.prompt[:b, -2], self.prompt[:b, -1]
                    self.prefill[(b, t)] = capture(pool, stream,
                                                   lambda: candidates(prefill_step(model, cache, ids, slots, n)))
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def step(self, ids: list[int], slots: list[int], pos: list[int]) -> Feeds:
        """The candidates ([n, K], host) of one decode step of n sessions."""
        return _rows(self.decode.step(ids, slots, pos))

    def first(self, prompts: list[tuple[list[int], int]]) -> Feeds:
        """The candidates [n, K] after n new sessions' prompts (ids, slot), each at most the largest prompt bucket:
        one replay per group of `prompt_groups`."""
        rows: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(prompts)
        for t, b, members in prompt_groups([len(ids) for ids, _ in prompts], self.prompt_batches):
            host = self.prompt_host.numpy()
            host[:b, :t] = 0
            host[:b, -2], host[:b, -1] = self.cache.scratch, 1  # padding rows: the scratch slot
            for r, k in enumerate(members):
                ids, slot = prompts[k]
                host[r, :len(ids)] = ids
                host[r, -2], host[r, -1] = slot, len(ids)
            self.prompt[:b].copy_(self.prompt_host[:b], non_blocking=True)
            g, out = self.prefill[(b, t)]
            g.replay()
            values, top = self.decode.to_host([o[:len(members)] for o in out])
            for r, k in enumerate(members):
                rows[k] = (values[r:r + 1], top[r:r + 1])
        return _rows([np.concatenate([r[j] for r in rows]) for j in (0, 1)])


def prompt_groups(lengths: list[int], batches: dict[int, list[int]]) -> list[tuple[int, int, list[int]]]:
    """Prompts of these lengths as replays (length bucket t, batch bucket b, the prompts' indices): grouped by
    their length bucket (`batches`: bucket -> its batch buckets, ascending), as many a replay as the bucket's
    largest batch allows, each replay in the smallest batch bucket that holds it."""
    by_bucket: dict[int, list[int]] = {}
    for k, n in enumerate(lengths):
        by_bucket.setdefault(next(t for t in batches if t >= n), []).append(k)
    groups = []
    for t, members in by_bucket.items():
        most = batches[t][-1]
        for start in range(0, len(members), most):
            part = members[start:start + most]
            groups.append((t, next(b for b in batches[t] if b >= len(part)), part))
    return groups


class LlmEngine:
    """The LLM's compute for export.runtime.session_runner.SessionRunner: a static cache, prompts and batched steps."""

    def __init__(self, spec: ModelSpec, graph: LlmGraph, device: str, slots: int, graphs: bool | None = None):
        self.model = graph.model
        self.device = torch.device(device)
        self.max_length = spec.axis("past").max + spec.axis("tokens").max
        self.cache = StaticKVCache(self.model, slots, self.max_length)
        use_graphs = self.device.type == "cuda" if graphs is None else graphs
        self.graphs = (StepGraphs(self.model, self.cache, spec.session.max_batch_size, spec.axis("tokens").max)
                       if use_graphs else None)
        self.fused = self.graphs.fused if self.graphs is not None else FusedLayers(self.model)

    def prefill(self, rows: list[tuple[int, int, list[int], Feeds]]) -> Feeds:
        """The candidates [n, K] after appending each row's (slot, length, ids, feeds) ids to the slot's `length`
        cached tokens: new sessions' prompts as batched graph replays, the rest eagerly."""
        fresh = [k for k, (_, length, _, _) in enumerate(rows) if self.graphs is not None and length == 0]
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(rows)
        if fresh:
            got = self.graphs.first([(rows[k][2], rows[k][0]) for k in fresh])
            for r, k in enumerate(fresh):
                out[k] = (got["top_logits"][r:r + 1], got["top_ids"][r:r + 1])
        for k, (slot, length, ids, _) in enumerate(rows):
            if out[k] is None:  # eager: a prompt appended to a session that holds tokens, or no graphs (CPU)
                x = torch.tensor([ids], dtype=torch.int64, device=self.device)
                logits, present = self.model(x, self.cache.past(slot, length))
                self.cache.write(slot, length, present)
                top = _rows(candidates(logits))
                out[k] = (top["top_logits"], top["top_ids"])
        return {"top_logits": np.concatenate([o[0] for o in out]), "top_ids": np.concatenate([o[1] for o in out])}

    def decode(self, ids: list[int], slots: list[int], pos: list[int]) -> Feeds:
        """The candidates [n, K] of one step of n sessions."""
        if self.graphs is not None:
            return self.graphs.step(ids, slots, pos)
        t = lambda v: torch.tensor(v, dtype=torch.int64, device=self.device)  # noqa: E731
        step = decode_step(self.model, self.cache, t(ids), t(slots), t(pos), max(pos) + 1, self.fused)
        return _rows(candidates(step))


def SessionLLM(spec: ModelSpec, graph: LlmGraph, device: str, stateless: BatchRunner, slots: int | None = None,
               graphs: bool | None = None) -> SessionRunner:
    """The gpu variant's llm: session requests on the GPU cache (LlmEngine), others through `stateless`."""
    n = slots or spec.session.slots
    return SessionRunner(spec, LlmEngine(spec, graph, device, n, graphs), stateless, n)
