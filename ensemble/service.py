"""The orchestrator's state and request handling, free of Triton types.

`Service.load` reads what `python -m export` wrote beside the orchestrator
(preset name, tokenizers); `Service.handle` validates one request's inputs,
loads the avatar and runs a `Turn`. The Triton model.py only converts tensors
and responses.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ensemble.audio_input import validate_audio
from ensemble.avatar import AvatarStore
from ensemble import metrics
from ensemble.errors import InputError, Overloaded
from ensemble.pipeline import Cancelled
from ensemble.options import Limits, TurnOptions
from ensemble.pipeline import Emit, StageCall, Tokenizers, Turn
from ensemble.text import validate_text
from export import contract
from export.artifacts import manifest_preset, read_manifest
from export.text_frontend import text_to_ids
from export.presets import Preset
from export.vocab import chat_prompt

DRAIN_FILE_ENV = "TALKING_HEAD_DRAIN_FILE"


def default_avatar_dir() -> Path:
    """Where registered avatars live: $TALKING_HEAD_AVATAR_DIR, else a folder in the temp dir."""
    return Path(os.environ.get("TALKING_HEAD_AVATAR_DIR") or Path(tempfile.gettempdir()) / "talking-head-avatars")


def draining(path: str | None = None) -> bool:
    """Whether the server is shutting down: the file named by $TALKING_HEAD_DRAIN_FILE exists.

    deploy.server creates it when it starts a graceful stop (before Triton gets SIGTERM): from then on
    new turns and registrations are refused with UNAVAILABLE while turns in flight run to their end.
    Triton's own SIGTERM handling cannot do this for a BLS pipeline (see RELIABILITY.md).
    """
    path = os.environ.get(DRAIN_FILE_ENV) if path is None else path
    return bool(path) and os.path.exists(path)


@dataclass
class Service:
    preset: Preset
    tokenizers: Tokenizers
    avatars: AvatarStore
    limits: Limits
    recorder: metrics.Recorder = field(default_factory=metrics.MemoryRecorder)
    active: int = 0  # turns in flight

    @classmethod
    def load(cls, artifacts: Path, avatar_dir: Path | None = None, limits: Limits | None = None,
             recorder: metrics.Recorder | None = None) -> "Service":
        info = read_manifest(artifacts)
        tokenizers = Tokenizers(asr=Tokenizer.from_file(str(artifacts / info["asr_tokenizer"])),
                                llm=Tokenizer.from_file(str(artifacts / info["llm_tokenizer"])),
                                chat_prompt=_chat_prompt(artifacts, info), tts_ids=_tts_front_end(artifacts, info))
        return cls(preset=manifest_preset(info), tokenizers=tokenizers,
                   avatars=AvatarStore(avatar_dir or default_avatar_dir(), max_avatars=(limits or Limits()).max_avatars,
                                       max_bytes=(limits or Limits()).max_avatar_store_bytes),
                   limits=limits or Limits(),
                   recorder=recorder or metrics.MemoryRecorder())

    def parse(self, inputs: dict[str, np.ndarray]) -> tuple[dict, TurnOptions, str]:
        """Validated turn input (text or 16 kHz audio), options and avatar id; InputError names any problem."""
        options = TurnOptions.parse(_scalar_bytes(inputs, "options"), self.limits)
        avatar_id = _scalar_bytes(inputs, "avatar_id")
        if avatar_id is None:
            raise InputError("avatar_id is required (register an avatar first)")
        try:
            avatar_id_text = avatar_id.decode("ascii")
        except UnicodeDecodeError:
            raise InputError("avatar_id is not ASCII") from None
        has_text, has_audio = "text" in inputs, "audio" in inputs
        if has_text == has_audio:
            raise InputError("send exactly one of `text` or `audio`")
        if has_text:
            return {"text": validate_text(_scalar_bytes(inputs, "text") or b"", self.limits.max_text_chars)}, options, avatar_id_text
        if "sample_rate" not in inputs:
            raise InputError(f"audio needs `sample_rate` ({contract.INPUT_SAMPLE_RATE})")
        rate = int(np.asarray(inputs["sample_rate"]).reshape(-1)[0])
        audio = validate_audio(inputs["audio"], rate, self.limits.max_audio_seconds)
        return {"audio16k": audio}, options, avatar_id_text

    async def handle(self, inputs: dict[str, np.ndarray], infer: StageCall, emit: Emit,
                     is_cancelled: Callable[[], bool] = lambda: False) -> Turn:
        rec = self.recorder
        if draining():
            rec.inc(metrics.REJECTED, reason="draining")
            raise Overloaded("server is shutting down (draining its turns in flight); retry on another replica")
        if self.active >= self.limits.max_sessions:
            rec.inc(metrics.REJECTED, reason="overloaded")
            raise Overloaded(f"server busy: {self.active} turns in flight (limit {self.limits.max_sessions}); retry later")
        try:
            turn_input, options, avatar_id = self.parse(inputs)
            avatar = self.avatars.load(avatar_id)
        except InputError:
            rec.inc(metrics.REJECTED, reason="invalid_input")
            raise
        turn = Turn(infer, self.preset, self.tokenizers, avatar, options, emit,
                    turn_id=uuid.uuid4().hex[:12], is_cancelled=is_cancelled, recorder=rec)
        self.active += 1
        rec.set(metrics.ACTIVE_SESSIONS, self.active)
        outcome = "error"
        try:
            await turn.run(**turn_input)
            outcome = "ok"
        except Cancelled:
            outcome = "cancelled"
            raise
        finally:
            self.active -= 1
            rec.set(metrics.ACTIVE_SESSIONS, self.active)
            rec.inc(metrics.TURNS, outcome=outcome)
        return turn


def _chat_prompt(artifacts: Path, info: dict) -> Callable[[str], str]:
    """The checkpoint's chat template when the LLM weights are real, else the tiny tokenizer's ChatML."""
    if "llm_chat_template" not in info:
        return chat_prompt
    from export.checkpoints.qwen2 import chat_prompt as render

    template = (artifacts / info["llm_chat_template"]).read_text(encoding="utf-8")
    tokens = info.get("llm_special_tokens") or {}
    return lambda text: render(template, [{"role": "user", "content": text}], **tokens)


def _tts_front_end(artifacts: Path, info: dict) -> Callable[[str], list[int]]:
    """ARPAbet through g2p (lexicon, else CMUdict) for real FastSpeech2 weights, else characters."""
    if info.get("tts_frontend") != "arpabet":
        return text_to_ids
    from export.g2p import make_g2p

    lexicon = artifacts / info["tts_lexicon"] if "tts_lexicon" in info else None
    return make_g2p(lexicon).text_to_ids


def _scalar_bytes(inputs: dict[str, np.ndarray], name: str) -> bytes | None:
    if name not in inputs:
        return None
    a = np.asarray(inputs[name]).reshape(-1)
    if a.size != 1:
        raise InputError(f"`{name}` must hold exactly one element, got {a.size}")
    v = a[0]
    return v if isinstance(v, bytes) else str(v).encode()
