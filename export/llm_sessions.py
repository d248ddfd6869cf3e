"""The LLM with every session's KV cache kept on the GPU: batched decode steps replayed as CUDA graphs.

The `llm` model of the gpu variant (export/spec.py, `LLM.session`). A request names its session
and carries only token ids; the answer is the next-token logits. The cache is one static,
preallocated tensor per layer (keys and values, [slots + 1, KVH, max_length, Dh], the spec's GPU
precision); `export.kv_sessions.SessionTable` says which slot each session holds.

- A request of several tokens (the prompt) is a prefill: the model's own eager forward over the
  session's cached past, its new keys/values written into the slot.
- Requests of one token each (decode steps of different sessions, in one Triton batch) run
  together: `decode_step` writes each new key/value at its session's position and attends over
  the first `span` cached positions of each slot, masked per row to the session's own length.
  On CUDA it runs as a graph replay, one graph per (batch bucket, span bucket) captured at load;
  padding rows use a scratch slot. On the CPU (tests) the same function runs eagerly.
- A request with `session_end` frees the slot; idle sessions are evicted (SessionTable).
- A request with `past_kv` and no session id is served statelessly, as by every other variant.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ensemble.batching import BatchRunner, Feeds
from export.kv_sessions import SessionError, SessionTable
from export.models.qwen2 import LlmGraph, Qwen2ForCausalLM, rotate_half
from export.spec import ModelSpec

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SPAN_BUCKETS = (128, 256, 512, 1024, 2048)
PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512)


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


def prefill_step(model: Qwen2ForCausalLM, cache: StaticKVCache, ids: torch.Tensor, slot: torch.Tensor,
                 n: torch.Tensor) -> torch.Tensor:
    """A new session's prompt: ids [1, T] (the first n real, the rest padding), slot and n [1] ->
    next-token logits [1, V] after the n-th token; keys/values of positions 0..T-1 go to the slot
    (those past n are overwritten by the decode steps before any row can see them)."""
    h, present = model.model(ids, model.empty_cache(1))  # [1, T, D], [1, L, 2, KVH, T, Dh]
    t = ids.shape[1]
    cache.k[:, slot, :, :t] = present[:, :, 0].transpose(0, 1)  # [L, 1, KVH, T, Dh]
    cache.v[:, slot, :, :t] = present[:, :, 1].transpose(0, 1)
    return model.lm_head(h[0].index_select(0, n - 1))


class StepGraphs:
    """decode_step as one CUDA graph per (batch bucket, span bucket), prefill_step per prompt-length bucket.

    A replay copies the rows into static buffers (one host-to-device copy) and the float32 logits out
    through a pinned buffer (one device-to-host copy)."""

    def __init__(self, model: Qwen2ForCausalLM, cache: StaticKVCache, max_batch: int, max_prompt: int):
        self.model, self.cache = model, cache
        dev = cache.k.device
        self.fused = FusedLayers(model)
        self.batches = [b for b in BATCH_BUCKETS if b <= max_batch] or [1]
        self.spans = [s for s in SPAN_BUCKETS if s < cache.max_length] + [cache.max_length]
        self.prompts = [t for t in PROMPT_BUCKETS if t < max_prompt] + [max_prompt]
        n, vocab = self.batches[-1], model.config.vocab_size
        self.rows = torch.zeros((3, n), dtype=torch.int64, device=dev)  # ids, slots, positions
        self.rows_host = torch.zeros((3, n), dtype=torch.int64).pin_memory()
        self.prompt = torch.zeros((1, self.prompts[-1] + 2), dtype=torch.int64, device=dev)  # ids..., slot, n
        self.prompt_host = torch.zeros_like(self.prompt, device="cpu").pin_memory()
        self.logits_host = torch.zeros((n, vocab), dtype=torch.float32).pin_memory()
        self.decode: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.prefill: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for span in self.spans:
                for b in self.batches:
                    ids, slots, pos = self.rows[:, :b]
                    self.rows[1].fill_(cache.scratch)
                    self.decode[(b, span)] = self._capture(
                        pool, stream, lambda: decode_step(model, cache, ids, slots, pos, span, self.fused).float())
            for t in self.prompts:
                ids, slot, n = self.prompt[:, :t], self.prompt[0, -2:-1], self.prompt[0, -1:]
                self.prompt[0, -2] = cache.scratch
                self.prompt[0, -1] = 1
                self.prefill[t] = self._capture(pool, stream, lambda: prefill_step(model, cache, ids, slot, n).float())
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    @staticmethod
    def _capture(pool, stream, fn):
        fn()  # warm-up outside the graph (kernel selection, workspaces)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool, stream=stream):
            out = fn()
        return g, out

    def step(self, ids: list[int], slots: list[int], pos: list[int]) -> np.ndarray:
        """Logits [n, V] (float32, host) of one decode step of n sessions."""
        n = len(ids)
        b = next(x for x in self.batches if x >= n)
        span = next(s for s in self.spans if s >= max(pos) + 1)
        host = self.rows_host.numpy()
        host[0, :n], host[1, :n], host[2, :n] = ids, slots, pos
        host[0, n:b], host[1, n:b], host[2, n:b] = 0, self.cache.scratch, 0  # padding rows: the scratch slot
        self.rows[:, :b].copy_(self.rows_host[:, :b], non_blocking=True)
        g, out = self.decode[(b, span)]
        g.replay()
        self.logits_host[:n].copy_(out[:n], non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return self.logits_host[:n].numpy().copy()

    def first(self, ids: list[int], slot: int) -> np.ndarray:
        """Logits [1, V] after a new session's prompt (at most the largest prompt bucket)."""
        t = next(x for x in self.prompts if x >= len(ids))
        host = self.prompt_host.numpy()
        host[0, :len(ids)] = ids
        host[0, len(ids):t] = 0
        host[0, -2], host[0, -1] = slot, len(ids)
        self.prompt.copy_(self.prompt_host, non_blocking=True)
        g, out = self.prefill[t]
        g.replay()
        self.logits_host[:1].copy_(out, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return self.logits_host[:1].numpy().copy()


class SessionLLM:
    """A BatchRunner-like `run(requests)` for the llm stage: session requests on the GPU cache, others stateless."""

    def __init__(self, spec: ModelSpec, graph: LlmGraph, device: str, stateless: BatchRunner,
                 slots: int | None = None, graphs: bool | None = None):
        s = spec.session
        assert s is not None, f"{spec.name} has no session state in export/spec.py"
        self.spec, self.session = spec, s
        self.model = graph.model
        self.device = torch.device(device)
        self.stateless = stateless
        max_length = spec.axis("past").max + spec.axis("tokens").max
        self.table = SessionTable(slots or s.slots, max_length, s.idle_timeout_s)
        self.cache = StaticKVCache(self.model, self.table.slots, max_length)
        self.max_batch = s.max_batch_size
        use_graphs = self.device.type == "cuda" if graphs is None else graphs
        self.graphs = StepGraphs(self.model, self.cache, self.max_batch, spec.axis("tokens").max) if use_graphs else None
        self.fused = self.graphs.fused if self.graphs is not None else FusedLayers(self.model)
        self.placeholder = np.zeros(s.placeholder_shape, dtype=spec.output(s.state_output).numpy_dtype)

    # ------------------------------------------------------------ requests
    def run(self, requests: Sequence[Feeds]) -> list[Feeds | Exception]:
        s = self.session
        results: list[Feeds | Exception | None] = [None] * len(requests)
        plain, steps, prefills = [], [], []
        self.table.evict_idle()
        for i, feeds in enumerate(requests):
            if s.id_input not in feeds:
                plain.append(i)
                continue
            try:
                sid, ids = self._parse(feeds)
            except ValueError as e:
                results[i] = e
                continue
            if s.release_input in feeds and bool(np.asarray(feeds[s.release_input]).reshape(-1)[0]):
                self.table.release(sid)
                results[i] = self._answer(np.zeros((1, self.model.config.vocab_size), np.float32))
            elif len(ids) == 1:
                steps.append((i, sid, ids))
            else:
                prefills.append((i, sid, ids))
        if plain:
            for i, r in zip(plain, self.stateless.run([requests[i] for i in plain])):
                results[i] = r
        with torch.inference_mode():
            for i, sid, ids in prefills:
                results[i] = self._guard(lambda: self._prefill(sid, ids))
            # one session may appear once per step batch: a repeat waits for the next wave
            while steps:
                seen, wave, later = set(), [], []
                for item in steps:
                    (later if item[1] in seen or len(wave) == self.max_batch else wave).append(item)
                    seen.add(item[1])
                for i, r in zip((w[0] for w in wave), self._decode([(sid, ids) for _, sid, ids in wave])):
                    results[i] = r
                steps = later
        return results  # type: ignore[return-value]

    def _parse(self, feeds: Feeds) -> tuple[int, list[int]]:
        s = self.session
        sid_arr = np.asarray(feeds[s.id_input]).reshape(-1)
        ids_arr = np.asarray(feeds[self.spec.inputs[0].name])
        if sid_arr.size != 1 or ids_arr.ndim != 2 or ids_arr.shape[0] != 1:
            raise ValueError(f"{self.spec.name}: a session request carries one session id and input_ids [1, T]")
        if s.state_input in feeds:
            raise ValueError(f"{self.spec.name}: a session request keeps its cache on the server; leave out "
                             f"{s.state_input!r}")
        sid = int(sid_arr[0])
        if sid == 0:
            raise ValueError(f"{self.spec.name}: session id 0 is reserved")
        ax = self.spec.axis("tokens")
        if not ax.min <= ids_arr.shape[1] <= ax.max:
            raise ValueError(f"{self.spec.name}: {ids_arr.shape[1]} tokens, allowed {ax.min}..{ax.max}")
        return sid, [int(t) for t in ids_arr[0]]

    def _answer(self, logits: np.ndarray) -> Feeds:
        return {"logits": logits, self.session.state_output: self.placeholder}

    def _guard(self, fn) -> Feeds | Exception:
        try:
            return fn()
        except SessionError as e:
            return e
        except Exception as e:  # the graph failed: this request hears why, the others carry on
            return RuntimeError(f"{self.spec.name}: {type(e).__name__}: {e}")

    # ------------------------------------------------------------ compute
    def _prefill(self, sid: int, ids: list[int]) -> Feeds:
        sess = self.table.get(sid, len(ids))
        if self.graphs is not None and sess.length == 0:
            logits = self.graphs.first(ids, sess.slot)
        else:  # eager: a prompt appended to a session that already holds tokens, or no graphs (CPU)
            x = torch.tensor([ids], dtype=torch.int64, device=self.device)
            out, present = self.model(x, self.cache.past(sess.slot, sess.length))
            self.cache.write(sess.slot, sess.length, present)
            logits = out.float().cpu().numpy()
        self.table.advance(sid, len(ids))
        return self._answer(logits)

    def _decode(self, rows: list[tuple[int, list[int]]]) -> list[Feeds | Exception]:
        out: list[Feeds | Exception | None] = [None] * len(rows)
        good, slots, pos, ids = [], [], [], []
        for j, (sid, tok) in enumerate(rows):
            try:
                sess = self.table.get(sid, 1)
            except SessionError as e:
                out[j] = e
                continue
            good.append(j)
            slots.append(sess.slot)
            pos.append(sess.length)
            ids.append(tok[0])
        if good:
            try:
                if self.graphs is not None:
                    rows_np = self.graphs.step(ids, slots, pos)
                else:
                    t = lambda v: torch.tensor(v, dtype=torch.int64, device=self.device)  # noqa: E731
                    logits = decode_step(self.model, self.cache, t(ids), t(slots), t(pos), max(pos) + 1, self.fused)
                    rows_np = logits.float().cpu().numpy()
            except Exception as e:  # every row of this step hears why
                err = RuntimeError(f"{self.spec.name}: {type(e).__name__}: {e}")
                for j in good:
                    out[j] = err
                return out  # type: ignore[return-value]
            for k, j in enumerate(good):
                self.table.advance(rows[j][0], 1)
                out[j] = self._answer(rows_np[k:k + 1])
        return out  # type: ignore[return-value]

