"""Canary inference: the only honest liveness signal for Python-backend models.

A Python stub that dies is not restarted and Triton's health endpoints keep
answering 200, so this probe runs real work through every model: it registers
the demo avatar (avatar_registry), asks one short spoken turn (asr_encoder,
asr_decoder, llm, tts, vocoder) and one short text turn with video (lipsync),
and exits 0 only if both finish within --timeout seconds, or if the server refused its turn as busy or draining
(a refusal `client.retry` would retry: it answered, so it is alive, and nothing says a model is broken; as a
liveness probe the canary must not restart a server for being full or for draining). Its turns carry the option
`"canary": true`, so they do not count in the user latency metrics (talking_head_ttfa_seconds,
talking_head_ttff_seconds). On failure it exits 1 and
names the model that failed when the error does (a dead stub: "Stub process
'vocoder_0_0' is not healthy"; a stage error: "StageError: vocoder: ..."):

    python -m deploy.canary --url localhost:8001 --timeout 10
    canary FAILED after 2.41 s (model: vocoder): internal error: StageError: vocoder: Stub process ...
    canary busy after 0.40 s (alive; its turn was refused): server busy: 2 turns in flight (limit 2); retry later
"""
from __future__ import annotations

import argparse
import re
import sys
import time

import numpy as np

from client.retry import is_retryable_refusal
from client.sdk import ClientError, TalkingHeadClient
from ensemble.avatar import demo_avatar_png
from export.contract import media, spec
from export.contract.layout import GRPC_URL

# What the canary turns ask for: as little work as still touches every stage. "canary": the orchestrator serves them
# as any turn but keeps them out of the user TTFA/TTFF histograms (ensemble.metrics.for_turn).
SPOKEN = {"max_reply_tokens": 1, "video": False, "canary": True}
TEXT = {"max_reply_tokens": 1, "video": True, "canary": True}


# How a failing model is named in an error: a dead stub ("Stub process 'vocoder_0_0' is not healthy"),
# the orchestrator's stage error ("StageError: vocoder: ..."), Triton's own ("model 'llm' is not ready"...).
_FAILED_MODEL = (re.compile(r"Stub process '(\w+?)_\d+_\d+'"), re.compile(r"StageError: (\w+):"),
                 re.compile(r"model '(\w+)'"), re.compile(r"unknown model: '(\w+)'"))


def failed_model(message: str) -> str | None:
    """The model an error message names as the one that failed, if any."""
    for pattern in _FAILED_MODEL:
        m = pattern.search(message)
        if m:
            return m.group(1)
    return None


_UNLOADED = re.compile(r"unknown model: '(\w+)' has no available versions")


def busy(message: str) -> bool:
    """The server refused the canary's turn for capacity (its turn slots, a stage's queue) or because it is draining
    (talking_head unloading or unloaded): the refusals a client retries later (client.retry). A dead stub or a hung
    event loop never answers this way. A *stage* with no version loaded is no refusal but a broken pipeline."""
    unloaded = _UNLOADED.search(message)
    return is_retryable_refusal(message) and (unloaded is None or unloaded.group(1) == spec.TALKING_HEAD.name)


def probe_audio(seconds: float = 0.5) -> np.ndarray:
    """A quiet 220 Hz tone: speech-like enough to pass input validation."""
    t = np.arange(int(seconds * media.INPUT_SAMPLE_RATE)) / media.INPUT_SAMPLE_RATE
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
    ap.add_argument("--url", default=GRPC_URL, help="Triton gRPC endpoint")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds the whole canary may take")
    ap.add_argument("--root-certificates", default=None, help="CA certificate (PEM) when gRPC uses TLS")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        took = run(args.url, args.timeout, args.root_certificates)
    except (ClientError, TimeoutError, OSError) as e:
        if busy(str(e)):
            print(f"canary busy after {time.perf_counter() - t0:.2f} s (alive; its turn was refused): {e}")
            return 0
        model = failed_model(str(e))
        print(f"canary FAILED after {time.perf_counter() - t0:.2f} s{f' (model: {model})' if model else ''}: {e}",
              file=sys.stderr)
        return 1
    print(f"canary ok in {took:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
