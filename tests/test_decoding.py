"""Picking the next token (export/contract/sampling.py; the reply loop: ensemble/decoding.py): from the whole
vocabulary's logits or from the top candidates the gpu variant's llm answers a session with
(export/runtime/llm_sessions.py), the same token."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from export.contract.sampling import Candidates, greedy, sample, top
from export.contract.spec import LLM_CANDIDATES, MAX_TOP_K
from export.runtime.llm_sessions import candidates


def _candidates(logits: np.ndarray) -> Candidates:
    values, ids = candidates(torch.from_numpy(logits)[None])
    return Candidates(ids[0].numpy(), values[0].numpy())


def _logits(vocab: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, vocab).astype(np.float32)


@pytest.mark.parametrize("vocab,top_k", [(512, 40), (151936, 40), (151936, MAX_TOP_K)])
def test_candidates_and_whole_logits_sample_the_same_tokens(vocab, top_k):
    tokenizer = vocab - 271 if vocab > LLM_CANDIDATES else vocab  # Qwen2.5 pads its vocabulary past the tokenizer's
    for seed in range(5):
        logits = _logits(vocab, seed)
        banned = [int(i) for i in np.argsort(-logits)[:5]]  # the five best are banned
        logits[tokenizer:] = logits.max() + 1  # the padding scores best of all
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        whole = [sample(logits, rng_a, 0.7, top_k, banned, tokenizer) for _ in range(20)]
        cands = _candidates(logits)
        assert cands.ids.size == min(LLM_CANDIDATES, vocab)
        assert [sample(cands, rng_b, 0.7, top_k, banned, tokenizer) for _ in range(20)] == whole
        assert not set(whole) & set(banned) and max(whole) < tokenizer
        assert greedy(logits, banned, tokenizer) == greedy(cands, banned, tokenizer)


def test_top_keeps_the_k_best_allowed_best_first_ties_by_lower_id():
    logits = np.array([1.0, 5.0, 3.0, 5.0, 4.0, 9.0], dtype=np.float32)
    ids, values = top(logits, 3, banned=[5])
    assert ids.tolist() == [1, 3, 4] and values.tolist() == [5.0, 5.0, 4.0]
    assert top(logits, 3, vocab=5)[0].tolist() == [1, 3, 4]  # id 5 is past the tokenizer's vocabulary
    assert greedy(logits, banned=[5]) == 1


def test_sampling_follows_the_softmax_of_the_top_k_at_the_temperature():
    logits = np.log(np.array([3.0, 1.0, 0.5, 0.25], dtype=np.float32))
    rng = np.random.default_rng(0)
    draws = np.array([sample(logits, rng, 1.0, 2) for _ in range(4000)])
    assert set(draws.tolist()) == {0, 1}  # top_k = 2: the two best only
    assert abs((draws == 0).mean() - 0.75) < 0.03  # 3 : 1
    assert sample(logits, rng, 0.0, 2) == 0  # temperature 0 is greedy


def test_every_candidate_banned_is_a_clear_error():
    with pytest.raises(ValueError, match="banned"):
        sample(np.zeros(3, np.float32), np.random.default_rng(0), 0.7, 2, banned=[0, 1, 2])


class _Counting:
    """A decoder whose next scores make token (last + 1) certain: feeds are counted."""

    def __init__(self, vocab: int = 16):
        self.vocab, self.fed = vocab, []

    async def feed(self, ids):
        self.fed += list(ids)
        logits = np.full(self.vocab, -1e9, dtype=np.float32)
        logits[(ids[-1] + 1) % self.vocab] = 0.0
        return logits


def _certain(token: int, vocab: int = 16) -> np.ndarray:
    logits = np.full(vocab, -1e9, dtype=np.float32)
    logits[token] = 0.0
    return logits


async def _reply(decoder, scores, vocab, **kw):
    from ensemble.decoding import Sampling, sampled_reply

    return [t async for t in sampled_reply(decoder, scores, Sampling(0.7, 40, 0, vocab), **kw)]


def test_sampled_reply_stops_at_a_stop_id_and_at_the_limit_without_a_step_for_the_last_token():
    import asyncio

    d = _Counting()
    assert asyncio.run(_reply(d, _certain(3), stops={7}, banned=(), vocab=16, limit=10)) == [3, 4, 5, 6]
    assert d.fed == [3, 4, 5, 6]  # the stop id 7 came from the scores after 6: never fed
    d = _Counting()
    assert asyncio.run(_reply(d, _certain(3), stops=set(), banned=(), vocab=16, limit=3)) == [3, 4, 5]
    assert d.fed == [3, 4]  # no step for the last token: nothing reads its scores
    d = _Counting()
    assert asyncio.run(_reply(d, _certain(7), stops={7}, banned=(), vocab=16, limit=3)) == []
    assert d.fed == []
