"""Token-by-token decoding against a stage model with an explicit KV cache (ASR decoder, LLM)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from export.presets import Preset
from export.spec import ModelSpec

Infer = Callable[[str, dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]


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

    async def feed(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids`; return the next-token logits [vocab]."""
        logits = None
        for start in range(0, len(ids), self.max_tokens):
            chunk = np.asarray([ids[start:start + self.max_tokens]], dtype=np.int64)
            if self.length > self.max_past:
                raise OverflowError(f"{self.spec.name}: the KV cache is full ({self.length} tokens)")
            out = await self.infer(self.spec.name, {self.ids_name: chunk, **self.extra, "past_kv": self.past})
            self.past = out["present_kv"]
            logits = out["logits"][0]
        return logits


def greedy(logits: np.ndarray, banned: Sequence[int] = ()) -> int:
    if banned:
        logits = logits.copy()
        logits[list(banned)] = -np.inf
    return int(np.argmax(logits))


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k: int,
           banned: Sequence[int] = ()) -> int:
    """Top-k sampling at `temperature`; temperature 0 is greedy."""
    if temperature <= 0:
        return greedy(logits, banned)
    logits = logits.astype(np.float64)
    if banned:
        logits[list(banned)] = -np.inf
    k = min(top_k, logits.size)
    top = np.argpartition(-logits, k - 1)[:k]
    z = logits[top] / temperature
    p = np.exp(z - z.max())
    return int(top[rng.choice(k, p=p / p.sum())])
