"""Per-turn options a client may send (JSON), and the service's input limits."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace

from ensemble.errors import InputError


@dataclass(frozen=True)
class Limits:
    """Bounds on everything a user sends; each is checked before any work starts."""

    max_audio_seconds: float = 30.0  # one Whisper window
    max_text_chars: int = 2000  # typed input
    max_options_bytes: int = 4096  # the options JSON
    max_prompt_tokens: int = 448  # prompt tokens the LLM sees (older ones are cut)
    max_avatar_bytes: int = 10 * 1024 * 1024  # encoded avatar image
    max_avatar_pixels: int = 4096 * 4096  # decoded avatar image
    min_avatar_side: int = 64  # avatar image width and height at least this (the face detector searches >= 30 px)
    max_avatars: int = 1000  # avatars kept on disk per server (its avatar store); the least recently used is evicted
    max_avatar_store_bytes: int = 4 * 1024**3  # ... and at most this many bytes of them (same eviction)
    max_sessions: int = 32  # turns served at once; more are refused at once (UNAVAILABLE)


@dataclass(frozen=True)
class TurnOptions:
    """What a client may tune per turn; unknown keys are an error, not silently ignored."""

    max_reply_tokens: int | None = None  # cap on LLM tokens (None: the preset's default)
    video: bool = True  # stream lip-synced frames (False: audio and text only)
    streaming: bool = True  # False: the naive baseline (whole reply, whole TTS, whole vocoder, all frames, then send)
    temperature: float = 0.7  # LLM sampling temperature (0 = greedy)
    top_k: int = 40  # LLM samples among the k most likely tokens
    seed: int = 0  # seed of the LLM sampler: the same turn gives the same reply
    deadline_s: float = 120.0  # the whole turn; every stage call gets the time that is left as its timeout
    ignore_eos: bool = False  # keep generating to max_reply_tokens (benchmarks: replies of a fixed length)
    speed: float = 1.0  # speaking rate: durations are divided by this
    pitch: float = 1.0  # FastSpeech2 pitch control
    energy: float = 1.0  # FastSpeech2 energy control
    jpeg_quality: int = 85  # quality of streamed frames, 30..95
    lipsync_batch: int = 8  # video frames per Wav2Lip call, 1..64

    @classmethod
    def parse(cls, raw: bytes | None, limits: Limits) -> "TurnOptions":
        if not raw:
            return cls()
        if len(raw) > limits.max_options_bytes:
            raise InputError(f"options has {len(raw)} bytes; the limit is {limits.max_options_bytes}")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"options is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise InputError("options must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        opts = replace(cls(), **data)
        opts.check()
        return opts

    def check(self) -> None:
        def bounded(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise InputError(f"option {name}={v!r} is out of range {lo}..{hi}")

        if self.max_reply_tokens is not None:
            bounded("max_reply_tokens", 1, 512)
        for flag in ("video", "streaming", "ignore_eos"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"option {flag}={getattr(self, flag)!r} must be true or false")
        bounded("deadline_s", 0.05, 600.0)
        bounded("temperature", 0.0, 2.0)
        bounded("top_k", 1, 1000)
        bounded("seed", 0, 2**31 - 1)
        bounded("speed", 0.5, 2.0)
        bounded("pitch", 0.5, 2.0)
        bounded("energy", 0.5, 2.0)
        bounded("jpeg_quality", 30, 95)
        bounded("lipsync_batch", 1, 64)
