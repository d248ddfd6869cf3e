"""The Whisper decoder with each utterance's caches kept on the GPU (the gpu variant's asr_decoder).

A session's first request carries the prompt and the utterance's audio features: the cross-attention
keys and values of every layer are computed from them once and stay in the session's slot, beside a
static self-attention cache; every later request carries one token id. Decode steps of different
sessions run as one batch (`asr_decode_step`), replayed as CUDA graphs per (batch, span) bucket on CUDA.
Requests, slots, release and eviction: export.runtime.session_runner.SessionRunner.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from export.contract import media
from export.contract.spec import ModelSpec
from export.runtime.batching import BatchRunner, Feeds
from export.runtime.session_runner import DecodeGraphs, SessionRunner
from export.toolchain.models.whisper import DecoderGraph, TextDecoder

BATCH_BUCKETS = (1, 2, 4, 8)
SPAN_BUCKETS = (16, 32, 64, 128, 256)


class AsrCache:
    """Per layer and slot: self-attention k/v [L, S + 1, H, max_length, Dh], cross-attention k/v
    [L, S + 1, H, A, Dh]; slot S is scratch (padding rows of a graph write there)."""

    def __init__(self, decoder: TextDecoder, slots: int, max_length: int, audio_ctx: int):
        w = decoder.token_embedding.weight
        n_layer, n_head = len(decoder.blocks), decoder.n_head
        dh = w.shape[1] // n_head
        self.k = w.new_zeros(n_layer, slots + 1, n_head, max_length, dh)
        self.v = torch.zeros_like(self.k)
        self.ck = w.new_zeros(n_layer, slots + 1, n_head, audio_ctx, dh)
        self.cv = torch.zeros_like(self.ck)
        self.scratch = slots
        self.max_length = max_length

    def set_audio(self, decoder: TextDecoder, slot: int, xa: torch.Tensor) -> None:
        """xa [1, A, D] -> every layer's cross-attention keys/values in the slot."""
        for i, block in enumerate(decoder.blocks):
            c = block.cross_attn
            self.ck[i, slot] = c.heads(c.key(xa))[0]  # [H, A, Dh]
            self.cv[i, slot] = c.heads(c.value(xa))[0]


def asr_decode_step(decoder: TextDecoder, cache: AsrCache, ids: torch.Tensor, slots: torch.Tensor,
                    pos: torch.Tensor, span: int) -> torch.Tensor:
    """One token per row (ids, slots, pos [B]; pos = tokens cached before it, < span) -> logits [B, V].

    The arithmetic of TextDecoder.forward with past_kv and audio features (tests/test_asr_sessions.py).
    """
    b, n_head = ids.shape[0], decoder.n_head
    x = decoder.token_embedding(ids) + decoder.positional_embedding[pos]  # [B, D]
    d = x.shape[1]
    visible = (torch.arange(span, device=ids.device)[None, :] <= pos[:, None])[:, None, None]  # [B, 1, 1, span]
    for i, block in enumerate(decoder.blocks):
        a = block.attn
        h = block.attn_ln(x)
        q = a.query(h).view(b, n_head, 1, d // n_head)
        kc, vc = cache.k[i], cache.v[i]  # [S, H, M, Dh]
        kc[slots, :, pos] = a.key(h).view(b, n_head, d // n_head)
        vc[slots, :, pos] = a.value(h).view(b, n_head, d // n_head)
        keys = kc[:, :, :span].index_select(0, slots)  # [B, H, span, Dh]
        values = vc[:, :, :span].index_select(0, slots)
        x = x + a.out(F.scaled_dot_product_attention(q, keys, values, attn_mask=visible).reshape(b, d))
        c = block.cross_attn
        q = c.query(block.cross_attn_ln(x)).view(b, n_head, 1, d // n_head)
        out = F.scaled_dot_product_attention(q, cache.ck[i].index_select(0, slots), cache.cv[i].index_select(0, slots))
        x = x + c.out(out.reshape(b, d))
        x = x + block.mlp(block.mlp_ln(x))
    return F.linear(decoder.ln(x), decoder.token_embedding.weight)  # [B, V]


def asr_graphs(decoder: TextDecoder, cache: AsrCache, max_batch: int) -> DecodeGraphs:
    """asr_decode_step captured per (batch bucket, span bucket)."""
    pool = torch.cuda.graph_pool_handle()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(stream):
        graphs = DecodeGraphs(lambda ids, slots, pos, span: (asr_decode_step(decoder, cache, ids, slots, pos,
                                                                             span).float(),),
                              cache.scratch, [b for b in BATCH_BUCKETS if b <= max_batch] or [1],
                              [s for s in SPAN_BUCKETS if s < cache.max_length] + [cache.max_length],
                              cache.k.device, pool, stream)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    return graphs


class AsrEngine:
    """The ASR decoder's compute for SessionRunner."""

    def __init__(self, spec: ModelSpec, graph: DecoderGraph, device: str, slots: int, graphs: bool | None = None):
        self.decoder = graph.model.decoder
        self.device = torch.device(device)
        self.dtype = self.decoder.token_embedding.weight.dtype
        self.max_length = spec.axis("past").max + spec.axis("tokens").max
        self.vocab = self.decoder.token_embedding.weight.shape[0]  # the logits' width (greedy requests' ids)
        self.features = spec.session.prefill_inputs[0]
        self.cache = AsrCache(self.decoder, slots, self.max_length, media.ASR_AUDIO_CTX)
        use_graphs = self.device.type == "cuda" if graphs is None else graphs
        self.graphs = asr_graphs(self.decoder, self.cache, spec.session.max_batch_size) if use_graphs else None

    def prefill(self, rows: list[tuple[int, int, list[int], Feeds]]) -> Feeds:
        """Logits [n, V] after each row's (slot, length, ids, feeds) tokens. A session's first request stores the
        utterance's cross-attention keys/values; the tokens then go one by one."""
        return {"logits": np.concatenate([self._prefill(*row)["logits"] for row in rows])}

    def _prefill(self, slot: int, length: int, ids: list[int], feeds: Feeds) -> Feeds:
        if length == 0:
            if self.features not in feeds:
                raise ValueError(f"a session's first request carries {self.features!r}")
            xa = torch.from_numpy(np.ascontiguousarray(feeds[self.features])).to(self.device, self.dtype)
            self.cache.set_audio(self.decoder, slot, xa)
        answer = None
        for k, token in enumerate(ids):
            answer = self.decode([token], [slot], [length + k])
        return answer

    def decode(self, ids: list[int], slots: list[int], pos: list[int]) -> Feeds:
        """Next-token logits [n, V] of one step of n sessions."""
        if self.graphs is not None:
            return {"logits": self.graphs.step(ids, slots, pos)[0]}
        t = lambda v: torch.tensor(v, dtype=torch.int64, device=self.device)  # noqa: E731
        step = asr_decode_step(self.decoder, self.cache, t(ids), t(slots), t(pos), max(pos) + 1)
        return {"logits": step.float().cpu().numpy()}


def session_asr(spec: ModelSpec, graph: DecoderGraph, device: str, stateless: BatchRunner, slots: int | None = None,
                graphs: bool | None = None) -> SessionRunner:
    """The gpu variant's asr_decoder: session requests on the GPU caches (AsrEngine), others through `stateless`."""
    n = slots or spec.session.slots
    return SessionRunner(spec, AsrEngine(spec, graph, device, n, graphs), stateless, n)
