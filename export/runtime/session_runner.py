"""Requests of a model that keeps each session's cache on the GPU (export/contract/spec.py `SessionState`).

A BatchRunner-like `run(requests)` for the gpu variant's LLM and ASR decoder: requests without a session id
go to the stateless runner; a session's first request (start flag, with its extra inputs) and requests of
several tokens are prefills, those of one Triton batch in one engine call; single-token requests of different
sessions in one Triton batch run as one decode step; a request with the release flag frees the slot. The
model-specific compute is an engine:

    engine.max_length
    engine.prefill(rows) -> answer [n, ...]   rows: (slot, length, ids, feeds) of n sessions, one row a session
                                             (length = tokens the slot holds already)
    engine.decode(ids, slots, positions) -> answer [n, ...]       (one new token per session)
    engine.vocab                                                 (the logits' width; greedy requests only)

where an answer holds the outputs a session request gets (`ModelSpec.answer`: the next-token logits, or the
llm's top candidates), rows first. Where the spec's SessionState has greedy inputs (the asr_decoder), a request
that carries them is decoded to its end here: its prompt as a first request, then one token a step (the best
logit not suppressed, the lowest id of a tie) until the end id or the limit, the steps of every such request of
one Triton batch as one decode batch; it is answered with the new ids and frees its session. Where it has chunk
inputs (the llm), a request that carries them samples up to that many tokens with the session's seeded generator
(export/contract/sampling.py `sample`, the orchestrator's rule), the steps of every such request of one Triton batch
batched, and is answered with them; its session stays open for the next chunk.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from export.contract.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE, Candidates, greedy, sample, scores_of
from export.contract.spec import MAX_CHUNK_TOKENS, MAX_TOP_K, ModelSpec
from export.runtime.batching import BatchRunner, Feeds, detached
from export.runtime.kv_sessions import Session, SessionError, SessionTable


class SessionRunner:
    def __init__(self, spec: ModelSpec, engine, stateless: BatchRunner, slots: int):
        s = spec.session
        assert s is not None, f"{spec.name} has no session state in export/contract/spec.py"
        self.spec, self.session, self.engine, self.stateless = spec, s, engine, stateless
        self.table = SessionTable(slots, engine.max_length, s.idle_timeout_s)
        self.max_batch = s.max_batch_size
        self.ids_name = spec.inputs[0].name
        self.placeholder = np.zeros(s.placeholder_shape, dtype=spec.output(s.state_output).numpy_dtype)
        self.released = {t.name: np.zeros((1, 1), dtype=t.numpy_dtype) for t in spec.answer([s.id_input])
                         if t.name != s.state_output}

    def run(self, requests: Sequence[Feeds]) -> list[Feeds | Exception]:
        s = self.session
        results: list[Feeds | Exception | None] = [None] * len(requests)
        plain, steps, prefills, greedy, chunks = [], [], [], [], []
        self.table.evict_idle()
        for i, feeds in enumerate(requests):
            if s.id_input not in feeds:
                plain.append(i)
                continue
            try:
                sid, ids = self._parse(feeds)
            except ValueError as e:
                results[i] = detached(e)
                continue
            if s.greedy_request(feeds):
                greedy.append((i, sid, ids, feeds))
            elif s.chunk_request(feeds):
                chunks.append((i, sid, ids, feeds))
            elif _flag(feeds, s.release_input):
                self.table.release(sid)
                results[i] = self._answer(self.released, 0)
            elif _flag(feeds, s.start_input):  # a session's first request (with the extra inputs)
                self.table.release(sid)  # a repeated start begins again
                prefills.append((i, sid, ids, feeds))
            elif sid not in self.table.sessions:
                results[i] = SessionError(f"{self.spec.name}: session {sid} is not open (never started, evicted after "
                                          f"{s.idle_timeout_s:g} s idle, or the model restarted)")
            elif len(ids) == 1:
                steps.append((i, sid, ids))
            else:
                prefills.append((i, sid, ids, feeds))
        if plain:
            for i, r in zip(plain, self.stateless.run([requests[i] for i in plain])):
                results[i] = r
        with torch.inference_mode():
            for i, r in self._prefill(prefills).items():
                results[i] = r
            # one session may appear once per step batch: a repeat waits for the next wave
            while steps:
                seen, wave, later = set(), [], []
                for item in steps:
                    (later if item[1] in seen or len(wave) == self.max_batch else wave).append(item)
                    seen.add(item[1])
                for i, r in zip((w[0] for w in wave), self._decode([(sid, ids) for _, sid, ids in wave])):
                    results[i] = r
                steps = later
            for i, r in self._greedy(greedy).items():
                results[i] = r
            for i, r in self._chunks(chunks).items():
                results[i] = r
        return results  # type: ignore[return-value]

    def _parse(self, feeds: Feeds) -> tuple[int, list[int]]:
        s = self.session
        sid_arr = np.asarray(feeds[s.id_input]).reshape(-1)
        ids_arr = np.asarray(feeds[self.ids_name])
        if sid_arr.size != 1 or ids_arr.ndim != 2 or ids_arr.shape[0] != 1:
            raise ValueError(f"{self.spec.name}: a session request carries one session id and "
                             f"{self.ids_name} [1, T]")
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

    def _answer(self, answer: Feeds, k: int) -> Feeds:
        """Row k of an engine's answer, the cache output as the placeholder."""
        return {**{name: a[k:k + 1] for name, a in answer.items()}, self.session.state_output: self.placeholder}

    def _guard(self, fn) -> Feeds | Exception:
        try:
            return fn()
        except (SessionError, ValueError) as e:
            return detached(e)
        except Exception as e:  # the graph failed: this request hears why, the others carry on
            return RuntimeError(f"{self.spec.name}: {type(e).__name__}: {e}")

    def _prefill(self, items: list[tuple[int, int, list[int], Feeds]]) -> dict[int, Feeds | Exception]:
        """Prompts (request index, session id, ids, feeds) as few engine calls: one per wave, a session once a
        wave. A call that fails is retried a row at a time, so only the request at fault hears why."""
        done: dict[int, Feeds | Exception] = {}
        while items:
            seen, rows, later = set(), [], []
            for i, sid, ids, feeds in items:
                if sid in seen:
                    later.append((i, sid, ids, feeds))
                    continue
                seen.add(sid)
                try:
                    sess = self.table.get(sid, len(ids))
                except SessionError as e:
                    done[i] = detached(e)
                    continue
                rows.append((i, sid, (sess.slot, sess.length, ids, feeds)))
            done.update(self._prefill_wave(rows) if rows else {})
            items = later
        return done

    def _prefill_wave(self, rows: list[tuple[int, int, tuple]]) -> dict[int, Feeds | Exception]:
        answer = self._guard(lambda: self.engine.prefill([r for _, _, r in rows]))
        if isinstance(answer, Exception):
            if len(rows) > 1:
                return {k: v for row in rows for k, v in self._prefill_wave([row]).items()}
            return {rows[0][0]: answer}
        for i, sid, r in rows:
            self.table.advance(sid, len(r[2]))
        return {i: self._answer(answer, k) for k, (i, _, _) in enumerate(rows)}

    def _greedy(self, requests: list[tuple[int, int, list[int], Feeds]]) -> dict[int, Feeds | Exception]:
        """Whole greedy decodes (SessionState.greedy_inputs), their steps batched: request index -> answer."""
        done: dict[int, Feeds | Exception] = {}
        opening, seen = [], set()
        for i, sid, ids, feeds in requests:
            self.table.release(sid)  # a whole decode opens its session afresh
            try:
                want = Greedy.parse(self.spec, feeds, len(ids), self.engine.max_length, self.engine.vocab)
            except ValueError as e:
                done[i] = detached(e)
                continue
            if sid in seen:
                done[i] = ValueError(f"{self.spec.name}: session {sid} asked for two decodes at once (one at a time)")
                continue
            seen.add(sid)
            opening.append((i, sid, ids, feeds, want))
        failed, live = self._open(opening)
        return {**done, **failed, **self._to_the_end(live, lambda sid, want, scores: want.pick(scores), free=True)}

    def _chunks(self, requests: list[tuple[int, int, list[int], Feeds]]) -> dict[int, Feeds | Exception]:
        """Sampled chunks (SessionState.chunk_inputs), their steps batched: request index -> answer."""
        done: dict[int, Feeds | Exception] = {}
        opening, going, seen = [], [], set()
        for i, sid, ids, feeds in requests:
            try:
                want = Chunk.parse(self.spec, feeds)
            except ValueError as e:
                done[i] = detached(e)
                continue
            if sid in seen:
                done[i] = ValueError(f"{self.spec.name}: session {sid} asked for two chunks at once (one at a time)")
                continue
            seen.add(sid)
            if _flag(feeds, self.session.start_input):
                opening.append((i, sid, ids, feeds, want))
            elif sid not in self.table.sessions or self.table.sessions[sid].sampler is None:
                done[i] = SessionError(f"{self.spec.name}: session {sid} is not open for sampled chunks (never "
                                       f"started with them, evicted after {self.session.idle_timeout_s:g} s idle, "
                                       f"or the model restarted)")
            elif len(ids) != 1:
                done[i] = ValueError(f"{self.spec.name}: a later chunk carries one token (the last one sampled)")
            else:
                going.append((i, sid, ids[0], want))
        failed, live = self._open(opening)
        done.update(failed)
        for sid, want, _, _ in live.values():
            self.table.sessions[sid].sampler = np.random.default_rng(want.seed)
        for (i, sid, _, want), answer in zip(going, self._decode([(sid, [token]) for _, sid, token, _ in going])):
            if isinstance(answer, Exception):
                done[i] = answer
            else:
                live[i] = (sid, want, [], scores_of(answer))
        return {**done, **self._to_the_end(live, lambda sid, want, scores: want.pick(scores, self.table.sessions[sid]),
                                           free=False)}

    def _open(self, opening: list[tuple[int, int, list[int], Feeds, object]]) -> tuple[dict, dict]:
        """Sessions (request index, session id, prompt ids, feeds, limits) opened afresh, their prompts batched
        (`_prefill`): (request index -> error, request index -> (session id, limits, new ids, first scores)). A
        session whose prompt failed is released."""
        for _, sid, _, _, _ in opening:
            self.table.release(sid)  # a repeated start begins again
        wants = {i: (sid, want) for i, sid, _, _, want in opening}
        failed, live = {}, {}
        for i, first in self._prefill([(i, sid, ids, feeds) for i, sid, ids, feeds, _ in opening]).items():
            sid, want = wants[i]
            if isinstance(first, Exception):
                failed[i] = first
                self.table.release(sid)
            else:
                live[i] = (sid, want, [], scores_of(first))
        return failed, live

    def _to_the_end(self, live: dict, pick, free: bool) -> dict[int, Feeds | Exception]:
        """The rows of `live` (request index -> session id, limits, new ids, next scores) decoded to their end: a
        token a row each round (`pick(sid, limits, scores)`), the rows that go on stepped as one decode batch. A row
        ends at an end token (not kept) or at its limit, with no step for its last token (nothing reads it), and is
        answered with its new ids; `free`: its session is released then."""
        done: dict[int, Feeds | Exception] = {}

        def end(i: int, sid: int, answer: Feeds | Exception) -> None:
            done[i] = answer
            del live[i]
            if free:
                self.table.release(sid)

        while live:
            rows = []
            for i, (sid, want, new, scores) in list(live.items()):
                try:
                    token = pick(sid, want, scores)
                except ValueError as e:  # e.g. every candidate banned
                    end(i, sid, detached(e))
                    continue
                if not want.ends(token):
                    new.append(token)
                if want.ends(token) or len(new) == want.limit:
                    end(i, sid, {want.output: np.asarray([new], dtype=np.int64)})
                else:
                    rows.append((i, sid, token))
            for (i, sid, _), answer in zip(rows, self._decode([(sid, [token]) for _, sid, token in rows])):
                if isinstance(answer, Exception):
                    end(i, sid, answer)
                else:
                    live[i] = (*live[i][:3], scores_of(answer))
        return done

    def _decode(self, rows: list[tuple[int, list[int]]]) -> list[Feeds | Exception]:
        out: list[Feeds | Exception | None] = [None] * len(rows)
        good, slots, pos, ids = [], [], [], []
        for j, (sid, tok) in enumerate(rows):
            try:
                sess = self.table.get(sid, 1)
            except SessionError as e:
                out[j] = detached(e)
                continue
            good.append(j)
            slots.append(sess.slot)
            pos.append(sess.length)
            ids.append(tok[0])
        if good:
            try:
                answer = self.engine.decode(ids, slots, pos)
            except Exception as e:  # every row of this step hears why
                err = RuntimeError(f"{self.spec.name}: {type(e).__name__}: {e}")
                for j in good:
                    out[j] = err
                return out  # type: ignore[return-value]
            for k, j in enumerate(good):
                self.table.advance(rows[j][0], 1)
                out[j] = self._answer(answer, k)
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Greedy:
    """A whole greedy decode's limits, read from its request (SessionState.greedy_inputs, in their order)."""

    max_new_tokens: int
    end_id: int
    suppressed: np.ndarray  # ids never picked (int64, once each)
    output: str

    @classmethod
    def parse(cls, spec: ModelSpec, feeds: Feeds, prompt: int, max_length: int, vocab: int) -> "Greedy":
        s = spec.session
        limit_name, end_name, suppress_name = (t.name for t in s.greedy_inputs)
        missing = [n for n in (end_name, suppress_name) if n not in feeds]
        if missing:
            raise ValueError(f"{spec.name}: a greedy request ({limit_name}) also carries {missing}")
        limit, end = (int(np.asarray(feeds[n]).reshape(-1)[0]) for n in (limit_name, end_name))
        suppress = np.asarray(feeds[suppress_name]).reshape(-1)
        if not 1 <= limit <= max_length - prompt:
            raise ValueError(f"{spec.name}: {limit_name} {limit}, allowed 1..{max_length - prompt} after a "
                             f"{prompt}-token prompt")
        bad = [int(x) for x in (end, *suppress) if not 0 <= x < vocab]
        if bad:
            raise ValueError(f"{spec.name}: ids {bad[:5]} out of the vocabulary (0..{vocab - 1}) in {end_name} "
                             f"or {suppress_name}")
        suppressed = np.unique(suppress.astype(np.int64))
        if suppressed.size == vocab:
            raise ValueError(f"{spec.name}: {suppress_name} suppresses every id")
        return cls(limit, end, suppressed, s.greedy_outputs[0].name)

    @property
    def limit(self) -> int:
        return self.max_new_tokens

    def ends(self, token: int) -> bool:
        return token == self.end_id

    def pick(self, logits: np.ndarray) -> int:
        """The best id not suppressed, the lowest of a tie: the orchestrator's rule (export/contract/sampling.py)."""
        return greedy(logits, self.suppressed)


@dataclass(frozen=True)
class Chunk:
    """A sampled chunk's settings, read from its request (SessionState.chunk_inputs, in their order)."""

    limit: int
    temperature: float
    top_k: int
    seed: int
    vocab: int
    stops: frozenset[int]
    banned: tuple[int, ...]
    output: str

    @classmethod
    def parse(cls, spec: ModelSpec, feeds: Feeds) -> "Chunk":
        s = spec.session
        names = [t.name for t in s.chunk_inputs]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise ValueError(f"{spec.name}: a sampled chunk ({names[0]}) also carries {missing}")
        tokens, temperature, sampling, stops, banned = (np.asarray(feeds[n]).reshape(-1) for n in names)
        if tokens.size != 1 or temperature.size != 1 or sampling.size != 3:
            raise ValueError(f"{spec.name}: {names[0]} and {names[1]} carry one value, {names[2]} three "
                             f"(top_k, seed, vocabulary size)")
        n, t = int(tokens[0]), float(temperature[0])
        top_k, seed, vocab = (int(x) for x in sampling)
        if not 1 <= n <= MAX_CHUNK_TOKENS:
            raise ValueError(f"{spec.name}: {names[0]} {n}, allowed 1..{MAX_CHUNK_TOKENS}")
        if (not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE) or not 1 <= top_k <= MAX_TOP_K or seed < 0
                or vocab < 1):
            raise ValueError(f"{spec.name}: temperature {t:g} (0 or {MIN_TEMPERATURE:g}..{MAX_TEMPERATURE:g}), top_k "
                             f"{top_k} (1..{MAX_TOP_K}), seed {seed} (>= 0), vocabulary size {vocab} (>= 1)")
        return cls(n, t, top_k, seed, vocab, frozenset(int(x) for x in stops), tuple(int(x) for x in banned),
                   s.chunk_outputs[0].name)

    def ends(self, token: int) -> bool:
        return token in self.stops

    def pick(self, scores: Candidates | np.ndarray, session: Session) -> int:
        """The orchestrator's rule (export/contract/sampling.py) with the session's seeded generator."""
        return sample(scores, session.sampler, self.temperature, self.top_k, self.banned, self.vocab)


def _flag(feeds: Feeds, name: str) -> bool:
    return name in feeds and bool(np.asarray(feeds[name]).reshape(-1)[0])


def capture(pool, stream, fn):
    """fn() run once (kernel selection, workspaces), then captured as a CUDA graph: (graph, its outputs)."""
    fn()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool, stream=stream):
        out = fn()
    return g, out


class DecodeGraphs:
    """A batched decode step `step_fn(ids, slots, positions, span) -> answer` (a tuple of [B, ...] tensors, e.g.
    the logits) captured as one CUDA graph per (batch bucket, span bucket). A replay copies the rows in with one
    host-to-device copy (padding rows use the scratch slot) and the answer out through pinned buffers."""

    def __init__(self, step_fn, scratch: int, batches: Sequence[int], spans: Sequence[int],
                 device: torch.device, pool, stream):
        self.batches, self.spans, self.scratch = list(batches), list(spans), scratch
        n = self.batches[-1]
        self.rows = torch.zeros((3, n), dtype=torch.int64, device=device)  # ids, slots, positions
        self.rows_host = torch.zeros((3, n), dtype=torch.int64).pin_memory()
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}
        self.rows[1].fill_(scratch)
        for span in self.spans:
            for b in self.batches:
                ids, slots, pos = self.rows[:, :b]
                self.graphs[(b, span)] = capture(pool, stream, lambda: step_fn(ids, slots, pos, span))
        self.host = [torch.zeros((n, *o.shape[1:]), dtype=o.dtype).pin_memory()
                     for o in self.graphs[(n, self.spans[0])][1]]

    def to_host(self, out: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """The first rows of a replay's outputs (as many as `out` holds), copied to the host."""
        n = out[0].shape[0]
        for h, o in zip(self.host, out):
            h[:n].copy_(o, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return [h[:n].numpy().copy() for h in self.host]

    def step(self, ids: list[int], slots: list[int], pos: list[int]) -> list[np.ndarray]:
        """The answer ([n, ...] each, host) of one decode step of n sessions."""
        n = len(ids)
        b = next(x for x in self.batches if x >= n)
        span = next(s for s in self.spans if s >= max(pos) + 1)
        host = self.rows_host.numpy()
        host[0, :n], host[1, :n], host[2, :n] = ids, slots, pos
        host[0, n:b], host[1, n:b], host[2, n:b] = 0, self.scratch, 0
        self.rows[:, :b].copy_(self.rows_host[:, :b], non_blocking=True)
        g, out = self.graphs[(b, span)]
        g.replay()
        return self.to_host([o[:n] for o in out])
