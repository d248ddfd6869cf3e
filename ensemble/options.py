"""Per-turn options a client may send (JSON), and the service's input limits."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace

from ensemble.errors import InputError
from export.contract.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE
from export.contract.spec import MAX_TOP_K, TALKING_HEAD


@dataclass(frozen=True)
class Limits:
    """Bounds on everything a user sends; each is checked before any work starts."""

    max_audio_seconds: float = 30.0  # one Whisper window
    max_text_chars: int = 2000  # typed input
    max_options_bytes: int = 4096  # the options JSON
    max_request_id_bytes: int = 128  # Triton echoes a request's id in every response: a long one is refused
    max_avatar_bytes: int = 10 * 1024 * 1024  # encoded avatar image
    max_avatar_pixels: int = 4096 * 4096  # decoded avatar image
    min_avatar_side: int = 64  # avatar image width and height at least this (the face detector searches >= 30 px)
    max_avatars: int = 1000  # avatars kept on disk per server (its avatar store); the least recently used is evicted
    max_avatar_store_bytes: int = 4 * 1024**3  # ... and at most this many bytes of them (same eviction)
    max_avatar_memory_bytes: int = 256 * 1024**2  # decoded avatars cached in memory per process (LRU)
    max_sessions: int = int(TALKING_HEAD.parameter("max_sessions"))  # turns at once; more are refused (UNAVAILABLE)
    max_open_sessions: int = 1024  # conversations (`session` ids) remembered; an idle one is forgotten to make room
    max_sessions_per_client: int = 64  # conversations one session_token may hold (ensemble/sessions.py)
    session_idle_s: float = 600.0  # a conversation unused this long is forgotten (its microphone state freed)


INTEGER_OPTIONS = frozenset({"max_reply_tokens", "top_k", "seed", "jpeg_quality", "lipsync_batch", "frame_stride",
                             "min_silence_ms"})
ACTIONS = ("turn", "say", "cancel", "mic", "prerender", "idle")
SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
SESSION_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")  # the client's secret for its sessions (the SDK makes one)


SHOWN_CHARS = 40  # of a value an error message echoes


def shown(value: object) -> str:
    """`value` as an error message echoes it: its repr (control characters, NUL and lone surrogates escaped, so
    the message reaches the client whole and cannot forge log lines), cut to SHOWN_CHARS characters."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


@dataclass(frozen=True)
class TurnOptions:
    """What a client may tune per turn; unknown keys are an error, not silently ignored."""

    max_reply_tokens: int | None = None  # cap on LLM tokens (None: the preset's default)
    video: bool = True  # stream lip-synced frames (False: audio and text only)
    streaming: bool = True  # False: the naive baseline (whole reply, whole TTS, whole vocoder, all frames, then send)
    # LLM sampling temperature, 0 = greedy (the default: the demo's 135 M model names Paris greedily and in 5 of 16
    # seeds at 0.7, drifting into French; README, `python -m loadtests.sampling`)
    temperature: float = 0.0
    top_k: int = 40  # LLM samples among the k most likely tokens
    seed: int = 0  # seed of the LLM sampler: the same turn gives the same reply
    deadline_s: float = 120.0  # the whole turn; every stage call gets the time that is left as its timeout
    ignore_eos: bool = False  # keep generating to max_reply_tokens (benchmarks: replies of a fixed length)
    speed: float = 1.0  # speaking rate: durations are divided by this
    pitch: float = 1.0  # FastSpeech2 pitch control
    energy: float = 1.0  # FastSpeech2 energy control
    jpeg_quality: int = 85  # quality of streamed frames, 30..95
    lipsync_batch: int = 8  # video frames per Wav2Lip call, 1..64
    frame_stride: int = 1  # send every n-th video frame (1: 25 fps, 2: 12.5 fps); the load governor raises it
    session: str | None = None  # conversation id: a new turn (or `cancel`) interrupts the session's reply in flight
    # the secret of whoever opened the session: every request naming it must carry the same one (ensemble/sessions.py)
    session_token: str | None = None
    action: str = "turn"  # turn | say (speak `text` as it is: no LLM) | cancel (stop the session's reply) | mic (one microphone chunk) |
    #                       prerender (fill the answer cache for this avatar) | idle (stream idle-motion frames)
    min_silence_ms: int = 500  # mic: silence that ends the user's turn
    end_of_input: bool = False  # mic: the last chunk of the stream; a turn in progress ends with it (no silence needed)
    idle_s: float = 2.0  # idle: seconds of idle-motion frames to stream
    idle_from_s: float = 0.0  # idle: where on the idle motion's clock they start (the next request continues a sway)
    canary: bool = False  # a probe's turn (deploy/canary.py): served as any turn, not counted in the user TTFA/TTFF

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
        except RecursionError:
            raise InputError("options is nested too deeply (options are one flat JSON object)") from None
        if not isinstance(data, dict):
            raise InputError("options must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            names = ", ".join(k if k.isprintable() and len(k) <= SHOWN_CHARS else shown(k) for k in unknown[:8])
            more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
            raise InputError(f"unknown option(s) {names}{more}; known: {', '.join(sorted(known))}")
        opts = replace(cls(), **data)
        opts.check()
        return opts

    def check(self) -> None:
        def bounded(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"option {name}={shown(v)} must be a number")
            if name in INTEGER_OPTIONS and not isinstance(v, int):
                raise InputError(f"option {name}={shown(v)} must be an integer")
            if not lo <= v <= hi:
                raise InputError(f"option {name}={shown(v)} is out of range {lo}..{hi}")

        if self.max_reply_tokens is not None:
            bounded("max_reply_tokens", 1, 512)
        for flag in ("video", "streaming", "ignore_eos", "end_of_input", "canary"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"option {flag}={shown(getattr(self, flag))} must be true or false")
        bounded("deadline_s", 0.05, 600.0)
        bounded("temperature", 0.0, MAX_TEMPERATURE)
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise InputError(f"option temperature={shown(self.temperature)}: 0 (greedy) or "
                             f"{MIN_TEMPERATURE}..{MAX_TEMPERATURE}")
        bounded("top_k", 1, MAX_TOP_K)
        bounded("seed", 0, 2**31 - 1)
        bounded("speed", 0.5, 2.0)
        bounded("pitch", 0.5, 2.0)
        bounded("energy", 0.5, 2.0)
        bounded("jpeg_quality", 30, 95)
        bounded("lipsync_batch", 1, 64)
        bounded("frame_stride", 1, 4)
        bounded("min_silence_ms", 100, 5000)
        bounded("idle_s", 0.04, 60.0)
        bounded("idle_from_s", 0.0, 1e7)
        if self.action not in ACTIONS:
            raise InputError(f"option action={shown(self.action)} is not one of {', '.join(ACTIONS)}")
        if self.session is not None and not (isinstance(self.session, str) and SESSION_ID.fullmatch(self.session)):
            raise InputError(f"option session={shown(self.session)} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if self.action in ("cancel", "mic") and self.session is None:
            raise InputError(f"action {self.action!r} needs a `session` id")
        if self.session is not None and not (isinstance(self.session_token, str)
                                             and SESSION_TOKEN.fullmatch(self.session_token)):
            raise InputError("option session needs session_token: the client's secret for its sessions, 16-128 "
                             "characters of A-Z a-z 0-9 _ - (the SDK sends one; a session refuses other tokens)")
