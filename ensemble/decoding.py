"""Token-by-token decoding against a stage model (ASR decoder, LLM), the cache shipped or kept server-side.

`KVDecoder` sends the whole cache with every step and gets it back (every variant's graph can do
this). `SessionDecoder` sends only token ids and a session id: the model keeps the cache (the gpu
variant, export/contract/spec.py `SessionState`), and the decoder frees it with `close()`. `start_decoder`
picks the second where the served model keeps the cache: the orchestrator reads which stages do from its
config's `session_stages` parameter, rendered per variant (export/toolchain/configs.py).

A decoder's `feed` answers the next token's scores: the logits over the vocabulary, or, from a model that
answers sessions with its top candidates (the gpu variant's llm), those (`Candidates`). `sample` and `greedy`
(export/contract/sampling.py) take either and pick the same token from the same logits.
"""
from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from export.contract.presets import Preset
from export.contract.sampling import Candidates, sample, scores_of
from export.contract.spec import ModelSpec
from export.contract.vocab import SpecialTokens

Infer = Callable[[str, dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]
# (model, inputs, timeout s) -> outputs: the raw stage call, used to release a session even after a cancel
Release = Callable[[str, dict[str, np.ndarray], float], Awaitable[dict[str, np.ndarray]]]
RELEASE_TIMEOUT_S = 5.0


class KVDecoder:
    """Feeds tokens to a `(ids, [extra], past_kv) -> (logits, present_kv)` graph, keeping the cache."""

    def __init__(self, infer: Infer, spec: ModelSpec, preset: Preset, extra: dict[str, np.ndarray] | None = None):
        self.infer = infer
        self.spec = spec
        self.ids_name = spec.inputs[0].name
        past = spec.input("past_kv")
        dims = [0 if d == "past" else d for d in spec.shape(past, preset)]
        self.past = np.zeros((1, *dims), dtype=np.float32)
        self.extra = extra or {}
        self.max_past = spec.axis("past").max
        self.max_tokens = spec.axis("tokens").max

    @property
    def length(self) -> int:
        return int(self.past.shape[4])

    async def feed(self, ids: Sequence[int]) -> np.ndarray | Candidates:
        """Append `ids`; return the next token's scores: logits [vocab], or the model's top Candidates."""
        logits = None
        for start in range(0, len(ids), self.max_tokens):
            chunk = np.asarray([ids[start:start + self.max_tokens]], dtype=np.int64)
            if self.length > self.max_past:
                raise OverflowError(f"{self.spec.name}: the KV cache is full ({self.length} tokens)")
            out = await self.spec.call(self.infer, **{self.ids_name: chunk, **self.extra, "past_kv": self.past})
            self.past = out["present_kv"]
            logits = out["logits"][0]
        return logits

    async def close(self) -> None:
        """Nothing to free: the cache lives here."""


class SessionDecoder:
    """Feeds tokens to a model that keeps the cache on its side, keyed by a session id drawn per decoder."""

    def __init__(self, infer: Infer, spec: ModelSpec, release: Release | None = None,
                 extra: dict[str, np.ndarray] | None = None):
        if spec.session is None:
            raise ValueError(f"{spec.name} keeps no session state (export/contract/spec.py)")
        self.infer = infer
        self.spec = spec
        self.release = release
        self.extra = extra or {}
        self.ids_name = spec.inputs[0].name
        self.session_id = secrets.randbits(62) + 1  # non-zero
        self.length = 0
        self.max_tokens = spec.axis("tokens").max
        self.max_length = spec.axis("past").max + self.max_tokens
        self.open = False

    def _session(self) -> np.ndarray:
        return np.asarray([[self.session_id]], dtype=np.int64)

    async def feed(self, ids: Sequence[int]) -> np.ndarray | Candidates:
        """Append `ids`; return the next token's scores: logits [vocab], or the model's top Candidates."""
        scores = None
        for start in range(0, len(ids), self.max_tokens):
            chunk = list(ids[start:start + self.max_tokens])
            if self.length + len(chunk) > self.max_length:
                raise OverflowError(f"{self.spec.name}: the KV cache is full ({self.length} tokens)")
            s = self.spec.session
            inputs = {self.ids_name: np.asarray([chunk], dtype=np.int64), s.id_input: self._session()}
            if self.length == 0:  # opens the session, with e.g. the ASR's audio features (the model keeps what it
                inputs.update(self.extra)  # derives from them)
                inputs[s.start_input] = np.ones((1, 1), dtype=bool)
            self.open = True
            out = await self.spec.call(self.infer, **inputs)
            self.length += len(chunk)
            scores = scores_of(out)
        return scores

    async def chunks(self, prompt: Sequence[int], size: int, sampling: Sampling, *, stops: Collection[int],
                     banned: Sequence[int], limit: int) -> AsyncIterator[int]:
        """A reply's tokens sampled by the model itself (SessionState.chunk_inputs), `size` a request: the tokens
        `sampled_reply` picks from the same prompt and seed, until a stop id (not yielded) or `limit` tokens."""
        s = self.spec.session
        if s is None or not s.chunk_inputs:
            raise ValueError(f"{self.spec.name} samples no chunks (export/contract/spec.py)")
        count, temperature, settings, stop_ids, banned_ids = (t.name for t in s.chunk_inputs)
        ids, n = list(prompt), 0
        while n < limit:
            want = min(size, limit - n)
            inputs = {self.ids_name: np.asarray([ids], dtype=np.int64), s.id_input: self._session(),
                      count: np.asarray([[want]], dtype=np.int64),
                      temperature: np.asarray([[sampling.temperature]], dtype=np.float32),
                      settings: np.asarray([[sampling.top_k, sampling.seed, sampling.vocab]], dtype=np.int64),
                      stop_ids: np.asarray([sorted(stops)], dtype=np.int64),
                      banned_ids: np.asarray([list(banned)], dtype=np.int64)}
            if self.length == 0:
                inputs[s.start_input] = np.ones((1, 1), dtype=bool)
            self.open = True
            out = await self.spec.call(self.infer, **inputs)
            new = [int(t) for t in out[s.chunk_outputs[0].name][0]]
            self.length += len(ids) + max(0, len(new) - 1)  # the last token is fed with the next chunk
            for token in new:
                yield token
            n += len(new)
            if len(new) < want:  # a stop id
                return
            ids = new[-1:]

    async def close(self) -> None:
        """Free the server's cache of this session (best effort: the server also evicts idle sessions)."""
        if not self.open or self.release is None:
            return
        self.open = False
        s = self.spec.session
        try:
            await self.release(self.spec.name, {self.ids_name: np.zeros((1, 1), dtype=np.int64),
                                                s.id_input: self._session(),
                                                s.release_input: np.ones((1, 1), dtype=bool)}, RELEASE_TIMEOUT_S)
        except Exception:  # the turn is over either way; an unreleased session is evicted when idle
            pass


async def start_decoder(infer: Infer, spec: ModelSpec, preset: Preset, prompt: Sequence[int], *, server_cache: bool,
                        extra: dict[str, np.ndarray] | None = None, release: Release | None = None
                        ) -> tuple[KVDecoder | SessionDecoder, np.ndarray | Candidates]:
    """A decoder fed with `prompt`, and the scores after it; `server_cache`: the served model keeps the cache."""
    decoder = SessionDecoder(infer, spec, release, extra) if server_cache else KVDecoder(infer, spec, preset, extra)
    try:
        return decoder, await decoder.feed(prompt)
    except BaseException:
        await decoder.close()
        raise


async def decode_greedy(infer: Infer, spec: ModelSpec, prompt: Sequence[int], max_new_tokens: int, end_id: int,
                        suppress: Sequence[int], extra: dict[str, np.ndarray] | None = None) -> list[int]:
    """The ids a model that decodes greedily in one request (SessionState.greedy_inputs: the gpu variant's
    asr_decoder) picks after `prompt`, the end id not among them: the same as `greedy` token by token with
    `banned` = `suppress`. The model frees the session itself, even when this call is cancelled."""
    s = spec.session
    if s is None or not s.greedy_inputs:
        raise ValueError(f"{spec.name} decodes no greedy request (export/contract/spec.py)")
    limit, end, banned = (t.name for t in s.greedy_inputs)
    inputs = {spec.inputs[0].name: np.asarray([prompt], dtype=np.int64),
              s.id_input: np.asarray([[secrets.randbits(62) + 1]], dtype=np.int64),
              s.start_input: np.ones((1, 1), dtype=bool), **(extra or {}),
              limit: np.asarray([[max_new_tokens]], dtype=np.int64), end: np.asarray([[end_id]], dtype=np.int64),
              banned: np.asarray([suppress], dtype=np.int64)}
    out = await spec.call(infer, **inputs)
    return [int(t) for t in out[s.greedy_outputs[0].name][0]]


@dataclass(frozen=True)
class Sampling:
    """How a reply's tokens are picked (export/contract/sampling.py `sample`): the model's vocabulary is cut at
    `vocab` (the tokenizer's), the generator seeded with `seed`."""

    temperature: float
    top_k: int
    seed: int
    vocab: int


async def sampled_reply(decoder: KVDecoder | SessionDecoder, scores: np.ndarray | Candidates, sampling: Sampling,
                        *, stops: Collection[int], banned: Sequence[int], limit: int) -> AsyncIterator[int]:
    """A reply's tokens as they are sampled (`sample`, a generator seeded with `sampling.seed`), from the scores
    after its prompt: until a stop id (not yielded) or `limit` tokens; no decode step is made for the last token,
    which nothing reads."""
    rng = np.random.default_rng(sampling.seed)
    n = 0
    while n < limit:
        token = sample(scores, rng, sampling.temperature, sampling.top_k, banned=banned, vocab=sampling.vocab)
        if token in stops:
            return
        n += 1
        yield token
        if n < limit:
            scores = await decoder.feed([token])


async def reply_tokens(infer: Infer, spec: ModelSpec, preset: Preset, prompt: Sequence[int], sampling: Sampling, *,
                       stops: Collection[int], banned: Sequence[int], limit: int, server_cache: bool, chunk: int,
                       release: Release | None = None
                       ) -> tuple[KVDecoder | SessionDecoder, AsyncIterator[int]]:
    """A reply's decoder (close it on every way out) and its tokens as they come: sampled here a token a request
    (`sampled_reply`), or, where the model keeps the session and `chunk` > 1, by the model `chunk` tokens a
    request (`SessionDecoder.chunks`): the same tokens either way."""
    if server_cache and chunk > 1:
        decoder = SessionDecoder(infer, spec, release)
        return decoder, decoder.chunks(prompt, chunk, sampling, stops=stops, banned=banned, limit=limit)
    decoder, scores = await start_decoder(infer, spec, preset, prompt, server_cache=server_cache, release=release)
    return decoder, sampled_reply(decoder, scores, sampling, stops=stops, banned=banned, limit=limit)


@dataclass(frozen=True)
class TokenIds:
    """The special tokens of the manifest (export.contract.vocab.SpecialTokens) as ids of the served tokenizers,
    resolved once when the orchestrator loads: a token the tokenizer lacks is an error then, not mid-turn."""

    asr_prompt: tuple[int, ...]
    asr_end: int
    asr_banned: tuple[int, ...]  # every added token but the end: no language switch, no new prompt mid-transcript
    llm_stop: frozenset[int]
    llm_banned: tuple[int, ...]

    @classmethod
    def resolve(cls, special: SpecialTokens, asr, llm) -> "TokenIds":
        def ids(tok, names, what: str) -> tuple[int, ...]:
            found = tuple(tok.token_to_id(n) for n in names)
            missing = [n for n, i in zip(names, found) if i is None]
            if missing:
                raise ValueError(f"the {what} tokenizer has no {missing} (export manifest special_tokens)")
            return found

        (asr_end,) = ids(asr, [special.asr_end], "ASR")
        added = sorted(i for i in asr.get_added_tokens_decoder() if i != asr_end)
        return cls(asr_prompt=ids(asr, special.asr_prompt, "ASR"), asr_end=asr_end, asr_banned=tuple(added),
                   llm_stop=frozenset(ids(llm, special.llm_stop, "LLM")),
                   llm_banned=ids(llm, special.llm_banned, "LLM"))
