"""Picking the next token from a model's scores: the whole vocabulary's logits, or the top `Candidates` the gpu
variant's llm answers a session with. One rule for the orchestrator (ensemble/decoding.py, token by token) and the
llm that samples a chunk of tokens itself (export/runtime/session_runner.py): the same seed, the same tokens."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_TEMPERATURE = 0.01  # below it logits / temperature overflow float32: use 0 for greedy decoding
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class Candidates:
    """The next token's most likely ids and their logits, best first: what the gpu variant's llm answers a session
    with instead of the whole vocabulary's logits (export/contract/spec.py LLM_CANDIDATES)."""

    ids: np.ndarray
    logits: np.ndarray


def scores_of(answer) -> np.ndarray | Candidates:
    """The next token's scores in one answer of a decoder model (rows first): its top candidates where it answers
    with them (`top_ids`, `top_logits`: the gpu variant's llm sessions), else its logits."""
    if "top_ids" in answer:
        return Candidates(answer["top_ids"][0], answer["top_logits"][0])
    return answer["logits"][0]


def top(scores: np.ndarray | Candidates, k: int, banned: Sequence[int] = (), vocab: int | None = None
        ) -> tuple[np.ndarray, np.ndarray]:
    """The k best ids that are neither banned nor at or past `vocab` (a model vocabulary padded past the
    tokenizer's), and their logits: best first, ties by the lower id, the same from logits as from Candidates."""
    if isinstance(scores, Candidates):
        ids, logits = scores.ids, scores.logits
    else:
        logits = scores[:vocab]
        m = k + len(banned)  # enough that k are left once the banned ones are dropped
        ids = np.arange(logits.size) if m >= logits.size else np.argpartition(-logits, m - 1)[:m]
        logits = logits[ids]
    keep = np.isin(ids, np.asarray(banned, dtype=ids.dtype), invert=True)
    if vocab is not None:
        keep &= ids < vocab
    ids, logits = ids[keep], logits[keep]
    if not ids.size:
        raise ValueError("every candidate token is banned")
    order = np.lexsort((ids, -logits))[:k]
    return ids[order], logits[order]


def greedy(scores: np.ndarray | Candidates, banned: Sequence[int] = (), vocab: int | None = None) -> int:
    """The best allowed id (see `top`): from whole logits one argmax (the lowest id of a tie), as `top(..., 1)`."""
    if isinstance(scores, Candidates):
        return int(top(scores, 1, banned, vocab)[0][0])
    logits = scores[:vocab]
    banned = np.asarray(banned, dtype=np.int64)
    if banned.size:
        logits = logits.copy()
        logits[banned[banned < logits.size]] = -np.inf
    best = int(np.argmax(logits))
    if logits[best] == -np.inf:
        raise ValueError("every candidate token is banned")
    return best


def sample(scores: np.ndarray | Candidates, rng: np.random.Generator, temperature: float, top_k: int,
           banned: Sequence[int] = (), vocab: int | None = None) -> int:
    """Top-k sampling at `temperature` among the allowed ids (see `top`); temperature 0 is greedy."""
    if temperature <= 0:
        return greedy(scores, banned, vocab)
    ids, logits = top(scores, top_k, banned, vocab)
    z = logits.astype(np.float64) / temperature  # float64 only for the k kept
    p = np.exp(z - z.max())
    return int(ids[rng.choice(ids.size, p=p / p.sum())])
