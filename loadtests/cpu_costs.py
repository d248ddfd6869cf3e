"""Per-unit CPU costs of the orchestrator's own work (one core, medians): what a session costs the host.

    python -m loadtests.cpu_costs

Composite + JPEG of one 25 fps frame on the demo avatar, and sampling one LLM token from a full
Qwen2.5 vocabulary of logits (ensemble.decoding.sample, temperature 0.7, top-k 40).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from ensemble import avatar as avatars
from ensemble.decoding import sample
from export.contract.presets import get_preset


def median_ms(fn, repeats: int = 60) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    a = avatars.register(avatars.demo_avatar_png(), max_bytes=10**7, max_pixels=10**8)
    face = np.random.default_rng(0).random((3, 96, 96), dtype=np.float32)
    image = avatars.composite(a, face)
    logits = np.random.default_rng(1).standard_normal(get_preset("base").llm.vocab_size).astype(np.float32)
    rng = np.random.default_rng(0)
    figures = {"composite_ms": median_ms(lambda: avatars.composite(a, face)),
               "jpeg_ms": median_ms(lambda: avatars.encode_jpeg(image, quality=85)),
               "sample_token_ms": median_ms(lambda: sample(logits, rng, 0.7, 40, banned=[151644, 151645]))}
    for k, v in figures.items():
        print(f"{k}: {v:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
