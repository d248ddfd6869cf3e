"""Canary inference: the only honest liveness signal for Python-backend models.

A Python stub that dies is not restarted and Triton's health endpoints keep
answering 200, so this probe runs real work through every model: it registers
the demo avatar (avatar_registry), asks one short spoken turn (asr_encoder,
asr_decoder, llm, tts, vocoder) and one short text turn with video (lipsync),
and exits 0 only if both finish within --timeout seconds.

    python -m deploy.canary --url localhost:8001 --timeout 10
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from client.sdk import ClientError, TalkingHeadClient
from ensemble.avatar import demo_avatar_png
from export import contract

# What the canary turns ask for: as little work as still touches every stage.
SPOKEN = {"max_reply_tokens": 1, "video": False}
TEXT = {"max_reply_tokens": 1, "video": True}


def probe_audio(seconds: float = 0.5) -> np.ndarray:
    """A quiet 220 Hz tone: speech-like enough to pass input validation."""
    t = np.arange(int(seconds * contract.INPUT_SAMPLE_RATE)) / contract.INPUT_SAMPLE_RATE
    return (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def run(url: str, timeout_s: float, root_certificates: str | None = None) -> float:
    """Seconds the canary took; raises ClientError (or TimeoutError) on any failure.
    root_certificates: the CA (PEM path) when the server's gRPC endpoint uses TLS."""
    t0 = time.perf_counter()
    with TalkingHeadClient(url, ssl=root_certificates is not None, root_certificates=root_certificates,
                           turn_timeout_s=timeout_s, request_timeout_s=timeout_s) as client:
        avatar = client.register_avatar(demo_avatar_png())
        spoken = client.turn(avatar_id=avatar.id, audio=probe_audio(), options=SPOKEN,
                             timeout_s=max(0.1, timeout_s - (time.perf_counter() - t0)))
        text = client.turn(avatar_id=avatar.id, text="canary", options=TEXT,
                           timeout_s=max(0.1, timeout_s - (time.perf_counter() - t0)))
    if spoken.done is None or text.done is None or not text.frames:
        raise ClientError("canary turn ended without a done event or without video")
    took = time.perf_counter() - t0
    if took > timeout_s:
        raise TimeoutError(f"canary took {took:.1f} s (limit {timeout_s:.0f} s)")
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="localhost:8001", help="Triton gRPC endpoint")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds the whole canary may take")
    ap.add_argument("--root-certificates", default=None, help="CA certificate (PEM) when gRPC uses TLS")
    args = ap.parse_args(argv)
    try:
        took = run(args.url, args.timeout, args.root_certificates)
    except (ClientError, TimeoutError, OSError) as e:
        print(f"canary FAILED: {e}", file=sys.stderr)
        return 1
    print(f"canary ok in {took:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
