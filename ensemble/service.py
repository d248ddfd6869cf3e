"""The orchestrator's state and request handling, free of Triton types.

`Service.load` reads what `python -m export` wrote beside the orchestrator
(preset name, tokenizers); `Service.handle` validates one request's inputs,
loads the avatar and runs what the request's `action` asks for:
  turn       a reply to text or speech (`Turn`); with a `session` id, it interrupts the
             session's reply in flight (barge-in); listed exchanges come from the answer cache
  say        the avatar speaks `text` as it is (no LLM): scripted lines, and the voice's quality gates
  cancel     interrupts the session's reply in flight
  mic        one microphone chunk of a session: voice activity detection finds the user's turn,
             speech starting interrupts the reply in flight, the turn's end starts the reply
  prerender  fills the answer cache for an avatar and voice
  idle       streams idle-motion frames of the avatar
The Triton model.py only converts tensors and responses.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ensemble import metrics
from ensemble.answer_cache import DEFAULT_PHRASES, AnswerCache
from ensemble.audio_input import check_sample_rate, validate_audio
from ensemble.avatar import AvatarStore
from ensemble.decoding import TokenIds
from ensemble.draining import draining
from ensemble.errors import InputError, Overloaded
from ensemble.governor import GovernorSettings, LoadGovernor
from ensemble.options import Limits, TurnOptions
from ensemble.pipeline import FIRST_METRICS, Cancelled, Emit, StageCall, Tokenizers, Turn
from ensemble.sessions import Session, Sessions
from ensemble.speech import load_voice
from ensemble.text import SegmenterOptions, validate_text
from ensemble.vad import TurnDetector, VadSettings
from export.contract import media
from export.contract.artifacts import manifest_preset, read_manifest
from export.contract.chat import render_chat
from export.contract.events import CANCELLED, DONE, VAD, Event
from export.contract.presets import Preset
from export.contract.spec import LIPSYNC_FRAMES, MAX_CHUNK_TOKENS, STAGES, TALKING_HEAD
from export.contract.vocab import SpecialTokens, chatml_prompt

MIC_CALL_TIMEOUT_S = 5.0  # one VAD call


def default_avatar_dir() -> Path:
    """Where registered avatars live: $TALKING_HEAD_AVATAR_DIR, else a folder in the temp dir."""
    return Path(os.environ.get("TALKING_HEAD_AVATAR_DIR") or Path(tempfile.gettempdir()) / "talking-head-avatars")




@dataclass(frozen=True)
class ServiceConfig:
    """The orchestrator's settings, from its config.pbtxt `parameters` (see export/contract/spec.py TALKING_HEAD)."""

    limits: Limits = Limits()
    governor: GovernorSettings = GovernorSettings()
    cache_phrases: tuple[str, ...] = DEFAULT_PHRASES
    cache_bytes: int = int(TALKING_HEAD.parameter("answer_cache_mb")) * 1024**2
    session_stages: frozenset[str] = frozenset()  # stages that keep the decoding cache server-side (gpu variant)
    frame_stage: str = ""  # the model that composes the warp family's frames (gpu variant); "": the orchestrator
    frame_lead_s: float = 0.0  # frames made at most this long before their display time (0: unpaced)
    first_frames: int = 1  # frames in a turn's first lip-sync call (1: the first frame as soon as it can be)
    llm_chunk_tokens: int = 1  # tokens the llm samples per request where it keeps the session (1: the orchestrator)
    audio_lead_s: float = 0.0  # a turn's speech made at most this long before it plays (0: unpaced)
    first_piece_words: int = SegmenterOptions.first_max_words  # a reply's first TTS piece's words at most

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> "ServiceConfig":
        """Settings from the config's parameters; a parameter left out takes its default from the spec."""
        params = {**dict(TALKING_HEAD.parameters), **params}

        def number(key: str) -> int:
            raw = params[key]
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"talking_head parameter {key}={raw!r} is not an integer") from None
            if value < 0:
                raise ValueError(f"talking_head parameter {key}={value} must be >= 0")
            return value

        def seconds(key: str) -> float:
            try:
                value = float(params[key])
            except ValueError:
                value = -1.0
            if not 0.0 <= value <= 10.0:
                raise ValueError(f"talking_head parameter {key}={params[key]!r} must be seconds in 0..10")
            return value

        limits = Limits(max_sessions=max(1, number("max_sessions")))
        degrade = params["degrade"].lower()
        if degrade not in ("on", "off"):
            raise ValueError(f"talking_head parameter degrade={degrade!r} must be on or off")
        phrases = tuple(p for p in params.get("answer_cache_phrases", "").split("|") if p.strip()) or DEFAULT_PHRASES
        sessions = frozenset(n.strip() for n in params["session_stages"].split(",") if n.strip())
        keyed = {s.name for s in STAGES if s.session is not None}
        if not sessions <= keyed:
            raise ValueError(f"talking_head parameter session_stages names {sorted(sessions - keyed)}: only "
                             f"{sorted(keyed)} can keep a session cache")

        first = number("first_frames")
        if not 1 <= first <= 64:
            raise ValueError(f"talking_head parameter first_frames={first} must be in 1..64")
        chunk = number("llm_chunk_tokens")
        if not 1 <= chunk <= MAX_CHUNK_TOKENS:
            raise ValueError(f"talking_head parameter llm_chunk_tokens={chunk} must be in 1..{MAX_CHUNK_TOKENS}")
        words, pieces = number("first_piece_words"), SegmenterOptions()
        if not pieces.min_words <= words <= pieces.max_words:
            raise ValueError(f"talking_head parameter first_piece_words={words} must be in "
                             f"{pieces.min_words}..{pieces.max_words}")
        frame_stage = params["frame_stage"].strip()
        if frame_stage not in ("", LIPSYNC_FRAMES.name):
            raise ValueError(f"talking_head parameter frame_stage={frame_stage!r} must be empty or {LIPSYNC_FRAMES.name!r}")
        return cls(limits=limits, governor=GovernorSettings.for_capacity(limits.max_sessions, enabled=degrade == "on"),
                   cache_phrases=phrases, cache_bytes=number("answer_cache_mb") * 1024**2, session_stages=sessions,
                   frame_stage=frame_stage, frame_lead_s=seconds("frame_lead_s"), first_frames=first,
                   llm_chunk_tokens=chunk, audio_lead_s=seconds("audio_lead_s"), first_piece_words=words)


@dataclass
class Service:
    preset: Preset
    tokenizers: Tokenizers
    avatars: AvatarStore
    limits: Limits
    recorder: metrics.Recorder = field(default_factory=metrics.MemoryRecorder)
    config: ServiceConfig = field(default_factory=ServiceConfig)
    models_version: str = ""  # digest of the export manifest: part of the answer cache's key
    log: Callable[[str], None] = lambda line: None
    active: int = 0  # turns in flight

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.limits.max_open_sessions, self.limits.session_idle_s,
                                 max_per_client=self.limits.max_sessions_per_client)
        self.cache = AnswerCache(self.config.cache_phrases, self.config.cache_bytes)
        self.governor = LoadGovernor(self.config.governor, self.recorder, self.log)
        self.frame_workers: Executor | None = None  # set by the server (model.py): pixel work off the event loop
        # set by the server (model.py): espeak-ng's calls, one at a time (they take turns on its one child anyway), off
        # the event loop and off the default executor, which a hung child would otherwise fill with waiting turns
        self.speech_worker: Executor | None = None

    @classmethod
    def load(cls, artifacts: Path, avatar_dir: Path | None = None, limits: Limits | None = None,
             recorder: metrics.Recorder | None = None, config: ServiceConfig | None = None,
             log: Callable[[str], None] = lambda line: None) -> "Service":
        info = read_manifest(artifacts)
        config = config or ServiceConfig(limits=limits or Limits())
        limits = config.limits
        asr = Tokenizer.from_file(str(artifacts / info["asr_tokenizer"]))
        llm = Tokenizer.from_file(str(artifacts / info["llm_tokenizer"]))
        if "special_tokens" not in info:
            raise ValueError(f"{artifacts}/export.json names no special_tokens: written by an older export; run "
                             f"`python -m export` again")
        special = SpecialTokens.from_json(info["special_tokens"])
        tokenizers = Tokenizers(asr=asr, llm=llm, chat_prompt=_chat_prompt(artifacts, info),
                                ids=TokenIds.resolve(special, asr, llm), voice=load_voice(artifacts, info))
        return cls(preset=manifest_preset(info), tokenizers=tokenizers,
                   avatars=AvatarStore(avatar_dir or default_avatar_dir(), max_avatars=limits.max_avatars,
                                       max_bytes=limits.max_avatar_store_bytes,
                                       max_memory_bytes=limits.max_avatar_memory_bytes),
                   limits=limits, recorder=recorder or metrics.MemoryRecorder(), config=config,
                   models_version=hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16], log=log)

    # ------------------------------------------------------------ parsing
    def parse_options(self, inputs: dict[str, np.ndarray]) -> TurnOptions:
        return TurnOptions.parse(_scalar_bytes(inputs, "options"), self.limits)

    def parse_avatar_id(self, inputs: dict[str, np.ndarray]) -> str:
        avatar_id = _scalar_bytes(inputs, "avatar_id")
        if avatar_id is None:
            raise InputError("avatar_id is required (register an avatar first)")
        try:
            return avatar_id.decode("ascii")
        except UnicodeDecodeError:
            raise InputError("avatar_id is not ASCII") from None

    def parse_turn_input(self, inputs: dict[str, np.ndarray], options: TurnOptions) -> dict:
        has_text, has_audio = "text" in inputs, "audio" in inputs
        if options.action == "turn" and has_text == has_audio:
            raise InputError("send exactly one of `text` or `audio`")
        if options.action == "say" and not (has_text and not has_audio):
            raise InputError("action 'say' needs `text` (what the avatar says) and no `audio`")
        if options.action in ("cancel", "idle") and (has_text or has_audio):
            raise InputError(f"action {options.action!r} takes no `text` or `audio`")
        if options.action == "mic" and (has_text or not has_audio):
            raise InputError("action 'mic' needs an `audio` chunk (and `sample_rate`) and no `text`")
        if options.action == "prerender" and has_audio:
            raise InputError("action 'prerender' takes `text` (one exchange) or nothing (every listed exchange)")
        if has_text:
            return {"text": validate_text(_scalar_bytes(inputs, "text") or b"", self.limits.max_text_chars)}
        if not has_audio:
            return {}
        if "sample_rate" not in inputs:
            raise InputError(f"audio needs `sample_rate` ({media.INPUT_SAMPLE_RATE})")
        rate = int(np.asarray(inputs["sample_rate"]).reshape(-1)[0])
        if options.action == "mic":  # the session's turn detector checks the chunk itself
            check_sample_rate(rate)
            return {"chunk": inputs["audio"]}
        return {"audio16k": validate_audio(inputs["audio"], rate, self.limits.max_audio_seconds)}

    # ------------------------------------------------------------ requests
    async def handle(self, inputs: dict[str, np.ndarray], infer: StageCall, emit: Emit,
                     is_cancelled: Callable[[], bool] = lambda: False, request_id: str = "") -> Turn | None:
        """Serve one request; returns the turn it ran (None for cancel, a mic chunk that ended no turn, a cache hit)."""
        rec = self.recorder
        try:
            if len(request_id.encode()) > self.limits.max_request_id_bytes:
                raise InputError(f"request id has {len(request_id.encode())} bytes; the limit is "
                                 f"{self.limits.max_request_id_bytes}")
            options = self.parse_options(inputs)
            if options.action == "cancel":
                self.parse_turn_input(inputs, options)
                return self.cancel(options.session, options.session_token, emit)
            self._refuse_if_draining()
            avatar_id = self.parse_avatar_id(inputs)
            turn_input = self.parse_turn_input(inputs, options)
            avatar = self.avatars.load(avatar_id)
        except InputError:
            rec.inc(metrics.REJECTED, reason="invalid_input")
            raise
        if options.action == "mic":
            return await self._mic(turn_input["chunk"], options, avatar_id, avatar, infer, emit, is_cancelled)
        if options.action == "prerender":
            return await self._prerender(turn_input.get("text"), options, avatar_id, avatar, infer, emit)
        if options.action == "idle":
            turn_input = {"idle_s": options.idle_s}
        if options.action == "say":
            turn_input = {"say": turn_input["text"]}
        return await self._turn(turn_input, options, avatar_id, avatar, infer, emit, is_cancelled)

    def cancel(self, session_id: str, token: str, emit: Emit) -> None:
        """Interrupt the session's reply in flight (if any) and say which turn that was."""
        session = self._session(lambda: self.sessions.peek(session_id, token))
        turn = session.turn if session else None
        self._interrupt(turn, "cancel")
        emit(Event(CANCELLED, {"turn_id": None, "t_ms": 0.0, "session": session_id,
                               "interrupted_turn": turn.turn_id if turn else None}))
        return None

    def _session(self, find: Callable[[], Session | None]) -> Session | None:
        """A session lookup (ensemble/sessions.py), its refusals counted."""
        try:
            return find()
        except Overloaded:
            self.recorder.inc(metrics.REJECTED, reason="sessions_full")
            raise

    def _interrupt(self, turn: Turn | None, reason: str) -> None:
        """Stop a session's reply in flight (none: nothing to do), counted by reason."""
        if turn is not None:
            turn.interrupt(reason)
            self.recorder.inc(metrics.INTERRUPTIONS, reason=reason)

    def _refuse_if_draining(self) -> None:
        if draining():
            self.recorder.inc(metrics.REJECTED, reason="draining")
            raise Overloaded("server is shutting down (draining its turns in flight); retry on another replica")

    def _admit(self, session_turn: Turn | None) -> None:
        """Refuse a new turn when the server is full (a turn it interrupts does not count: it is ending)."""
        self._refuse_if_draining()
        busy = self.active - (session_turn is not None)
        if busy >= self.limits.max_sessions:
            self.recorder.inc(metrics.REJECTED, reason="overloaded")
            raise Overloaded(f"server busy: {busy} turns in flight (limit {self.limits.max_sessions}); retry later")

    async def _turn(self, turn_input: dict, options: TurnOptions, avatar_id: str, avatar, infer: StageCall,
                    emit: Emit, is_cancelled: Callable[[], bool], paced: bool = True) -> Turn | None:
        """paced=False: frames as fast as they come (a turn nobody watches live, e.g. prerendering)."""
        rec = metrics.for_turn(self.recorder, options)  # canary turns: not in TTFA/TTFF
        session = self._session(lambda: self.sessions.get(options.session, options.session_token)) \
            if options.session else None
        self._admit(session.turn if session else None)
        if session is not None:  # barge-in: the new turn replaces the reply in flight
            self._interrupt(session.turn, "barge_in")
        self.governor.update(self.active + 1)  # counting this turn
        options = self.governor.apply(options)
        key = self.cache.key(turn_input["text"], avatar_id, options, self.models_version) if "text" in turn_input else None
        if key is not None:
            rec.inc(metrics.CACHE_LOOKUPS)
            cached = self.cache.get(key)
            if cached is not None:
                rec.inc(metrics.CACHE_HITS)
                try:
                    await replay(cached, emit, rec)
                finally:  # its end is a reading too, as a rendered turn's (turn_ended): the quiet after it counts
                    self.governor.update(self.active)
                rec.inc(metrics.TURNS, outcome="ok")
                return None
        recording: list[Event] = []
        send = emit if key is None else lambda e: (recording.append(e), emit(e))
        turn = Turn(infer, self.preset, self.tokenizers, avatar, options, send,
                    turn_id=uuid.uuid4().hex[:12], is_cancelled=is_cancelled, recorder=rec,
                    frame_workers=self.frame_workers, speech_worker=self.speech_worker,
                    session_stages=self.config.session_stages,
                    frame_stage=self.config.frame_stage, frame_lead_s=self.config.frame_lead_s if paced else 0.0,
                    audio_lead_s=self.config.audio_lead_s if paced else 0.0,
                    first_frames=self.config.first_frames, llm_chunk_tokens=self.config.llm_chunk_tokens,
                    first_piece_words=self.config.first_piece_words,
                    restore_avatar=self.avatars.save)
        if session is not None:
            session.turn = turn
        self.active += 1
        rec.set(metrics.ACTIVE_SESSIONS, self.active)
        outcome = "error"
        try:
            await turn.run(**turn_input)
            outcome = "ok" if turn.interrupted is None else "interrupted"
        except Cancelled:
            outcome = "cancelled"
            raise
        finally:
            self.active -= 1
            if session is not None and session.turn is turn:
                session.turn = None
            rec.set(metrics.ACTIVE_SESSIONS, self.active)
            rec.inc(metrics.TURNS, outcome=outcome)
            self.governor.turn_ended(turn.frames_late_dropped, turn.video_frames + turn.frames_dropped, self.active)
        if key is not None and outcome == "ok":
            self.cache.put(key, recording, owner=options.session_token or "")
        return turn


    async def _prerender(self, text: str | None, options: TurnOptions, avatar_id: str, avatar, infer: StageCall,
                         emit: Emit) -> None:
        """Render listed exchanges (or the one in `text`) for this avatar and voice into the answer cache."""
        phrases = [text] if text is not None else sorted(self.cache.phrases)
        keys = [self.cache.key(p, avatar_id, self.governor.apply(options), self.models_version) for p in phrases]
        if text is not None and keys[0] is None:
            raise InputError(f"{text!r} is not a cached exchange (the answer cache holds: "
                             f"{', '.join(sorted(self.cache.phrases))})")
        rendered = []
        for phrase, key in zip(phrases, keys):
            if key is not None and self.cache.get(key) is None:
                await self._turn({"text": phrase}, replace(options, action="turn", session=None), avatar_id, avatar,
                                 infer, lambda e: None, lambda: False, paced=False)
                rendered.append(phrase)
        emit(Event(DONE, {"turn_id": None, "t_ms": 0.0, "reply": "", "transcript": "", "audio_samples": 0,
                          "video_frames": 0, "prerendered": rendered, "cached_answers": len(self.cache)}))

    async def _mic(self, chunk: np.ndarray, options: TurnOptions, avatar_id: str, avatar, infer: StageCall,
                   emit: Emit, is_cancelled: Callable[[], bool]) -> Turn | None:
        """One microphone chunk: speech starting interrupts the reply in flight; the end of the user's turn
        (after `min_silence_ms` of silence) starts the reply on this request's stream."""
        session = self._session(lambda: self.sessions.get(options.session, options.session_token))
        if session.mic is None or session.mic.settings.min_silence_ms != options.min_silence_ms:
            session.mic = TurnDetector(lambda model, x: infer(model, x, MIC_CALL_TIMEOUT_S),
                                       VadSettings(min_silence_ms=options.min_silence_ms))
            session.mic_lock = asyncio.Lock()
        async with session.mic_lock:
            found = await session.mic.push(chunk)
            if options.end_of_input:  # the stream ends: a turn still open ends here, the detector starts afresh
                found += session.mic.flush()
        for event in found:
            data = {"turn_id": None, "t_ms": 0.0, "state": event.kind, "t_s": round(event.t_s, 3)}
            if options.end_of_input and event.kind == "turn_end":
                data["end_of_input"] = True
            if event.kind == "speech_start":
                emit(Event(VAD, data))
                self._interrupt(session.turn, "barge_in")  # the user speaks over the reply
            elif event.kind == "turn_end":
                emit(Event(VAD, {**data, "silence_ms": event.silence_ms,
                                 "speech_s": round(event.audio.size / media.INPUT_SAMPLE_RATE, 3)}))
                turn_options = replace(options, action="turn")
                return await self._turn({"audio16k": event.audio}, turn_options, avatar_id, avatar, infer, emit,
                                        is_cancelled)
        return None



async def replay(events: list[Event], emit: Emit, recorder: metrics.Recorder) -> None:
    """Send a cached answer as a new turn: same events, a fresh turn id and fresh timestamps."""
    turn_id, t0 = uuid.uuid4().hex[:12], time.perf_counter()
    first: dict[str, float] = {}
    for e in events:
        t_ms = round((time.perf_counter() - t0) * 1000.0, 1)
        if e.type not in first:
            first[e.type] = t_ms
            if e.type in FIRST_METRICS:
                recorder.observe(FIRST_METRICS[e.type], t_ms / 1000.0)
        data = {**e.data, "turn_id": turn_id, "t_ms": t_ms}
        if e.type == DONE:
            data["timings_ms"] = {"first_" + k: v for k, v in first.items()} | {"total": t_ms}
            data["stage_ms"], data["stage_calls"], data["first_calls_ms"] = {}, {}, {}
        emit(Event(e.type, data, audio=e.audio, frame=e.frame))
        await asyncio.sleep(0)


def _chat_prompt(artifacts: Path, info: dict) -> Callable[[str], str]:
    """The checkpoint's chat template when the LLM weights are real (with the system message it defaults to: the one
    the model was tuned with; small models follow a persona of ours worse), else the tiny tokenizer's ChatML."""
    if "llm_chat_template" not in info:
        return chatml_prompt
    template = (artifacts / info["llm_chat_template"]).read_text(encoding="utf-8")
    tokens = info.get("llm_special_tokens") or {}
    return lambda text: render_chat(template, [{"role": "user", "content": text}], **tokens)


def _scalar_bytes(inputs: dict[str, np.ndarray], name: str) -> bytes | None:
    if name not in inputs:
        return None
    a = np.asarray(inputs[name]).reshape(-1)
    if a.size != 1:
        raise InputError(f"`{name}` must hold exactly one element, got {a.size}")
    v = a[0]
    return v if isinstance(v, bytes) else str(v).encode()
