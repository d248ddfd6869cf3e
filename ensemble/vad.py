"""Server-side turn detection on streamed microphone audio: silero VAD windows → speech start, turn end.

One `TurnDetector` per session. The client streams 16 kHz float32 chunks of any length (typically
20–40 ms); the detector cuts them into silero's 512-sample windows, calls the `vad` stage model once
per window (`infer("vad", {"audio", "state"}) -> {"probability", "next_state"}`, the same kind of
stage call ensemble/pipeline.py makes: a BLS request inside Triton, ONNX Runtime in tests) and turns
the probabilities into events, with silero's own rules (utils_vad.py `get_speech_timestamps`):

- speech starts where a window's probability reaches `threshold`, once it has lasted `min_speech_ms`
  (shorter bursts are dropped); while in speech, probabilities between `neg_threshold` and `threshold`
  keep it going (hysteresis);
- silence starts at the first window below `neg_threshold`; a window at or above `threshold` ends it;
  after `min_silence_ms` of it the turn ends, and its audio (speech plus `speech_pad_ms` before and after)
  comes with the `turn_end` event, ready for ASR;
- a turn reaching `max_turn_s` (pads included) is cut there (`cut=True`), and if the speech goes on a
  new turn starts at once.

The windows of one push are chained through silero's LSTM state (each window's `state` is the previous
window's `next_state`), so they are sequential calls; windows of different sessions are independent rows,
which Triton's dynamic batcher stacks into one batch (export/contract/spec.py `VAD`).

Memory per session is bounded: the LSTM state, 64 samples of context, less than one window of
remainder, and at most `max_turn_s` of audio (plus a pad and a window) for the turn being collected.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from ensemble.audio_input import check_samples
from ensemble.errors import InputError
from export.contract import media as C
from export.contract.spec import VAD

# One VAD stage call: (model name, inputs) -> outputs. In Triton: a BLS request to the `vad` model.
VadCall = Callable[[str, dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]

SPEECH_START = "speech_start"
TURN_END = "turn_end"
SR = C.VAD_SAMPLE_RATE
WINDOW = C.VAD_WINDOW
CONTEXT = C.VAD_CONTEXT


@dataclass(frozen=True)
class VadSettings:
    """Turn detection settings of one session (silero's defaults, `min_silence_ms` the usual knob)."""

    threshold: float = 0.5  # speech probability that starts speech (and ends a silence)
    neg_threshold: float = 0.35  # below this a window counts as silence (hysteresis)
    min_silence_ms: int = 500  # silence that ends the turn
    min_speech_ms: int = 250  # shorter speech bursts are ignored
    speech_pad_ms: int = 100  # audio kept before the speech start and after its end
    max_turn_s: float = 30.0  # a turn is cut at this length, pads included (the ASR window)
    max_chunk_ms: int = 1000  # longest chunk one push accepts (clients stream 20-40 ms)

    def __post_init__(self):
        def number(name, lo, hi, lo_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"VAD setting {name} must be a number, got {v!r}")
            if v < lo or v > hi or (lo_open and v == lo):
                raise InputError(f"VAD setting {name} is {v:g}; allowed {'(' if lo_open else '['}{lo:g}, {hi:g}]")

        number("threshold", 0.0, 1.0, lo_open=True)
        number("neg_threshold", 0.0, self.threshold)
        number("min_silence_ms", 0, 10_000, lo_open=True)
        number("min_speech_ms", 0, 10_000)
        number("speech_pad_ms", 0, 2_000)
        number("max_turn_s", 0, C.ASR_CHUNK_SECONDS, lo_open=True)
        number("max_chunk_ms", 0, 10_000, lo_open=True)
        if self.max_turn_s * 1000 <= 2 * self.speech_pad_ms + WINDOW * 1000 / SR:
            raise InputError(f"VAD setting max_turn_s ({self.max_turn_s:g} s) leaves no room for speech between"
                             f" the pads ({self.speech_pad_ms} ms each)")

    def samples(self, ms: float) -> int:
        return int(round(ms * SR / 1000))


@dataclass(frozen=True)
class VadEvent:
    kind: str  # SPEECH_START or TURN_END
    t_s: float  # speech_start: where the speech starts in the stream; turn_end: when the turn end was decided
    silence_ms: float = 0.0  # turn_end: silence counted after the speech (0 when cut)
    audio: np.ndarray | None = None  # turn_end: the turn's speech with its pads, float32 mono 16 kHz
    start_s: float = 0.0  # turn_end: stream time of audio[0]
    speech_end_s: float = 0.0  # turn_end: where the speech ended (the start of the silence, or the cut)
    cut: bool = False  # turn_end: ended by max_turn_s (or by flush at the end of the stream), not by silence


def validate_chunk(chunk, max_samples: int) -> np.ndarray:
    """A streamed chunk -> contiguous float32 [n] (n may be 0), or InputError naming the problem."""
    if isinstance(chunk, np.generic):
        chunk = np.asarray(chunk)
    if not isinstance(chunk, np.ndarray):
        raise InputError(f"audio chunk must be a numpy float32 array, got {type(chunk).__name__}")
    if chunk.dtype != np.float32:
        raise InputError(f"audio chunk must be float32 PCM in [-1, 1] at {SR} Hz, got {chunk.dtype}")
    a = chunk.reshape(-1) if chunk.ndim == 2 and 1 in chunk.shape else chunk
    if a.ndim != 1:
        raise InputError(f"audio chunk must be a 1-D array of mono samples, got shape {tuple(chunk.shape)}")
    if a.shape[0] > max_samples:
        raise InputError(f"audio chunk has {a.shape[0]} samples ({a.shape[0] / SR * 1000:.0f} ms); the limit is"
                         f" {max_samples} ({max_samples / SR * 1000:.0f} ms): stream shorter chunks")
    if a.size:
        check_samples(a, "audio chunk")
    return np.ascontiguousarray(a)


class _Recent:
    """The stream's recent audio as chunks with their absolute start sample; old chunks are dropped."""

    def __init__(self):
        self.chunks: deque[tuple[int, np.ndarray]] = deque()
        self.end = 0  # absolute sample index after the last sample received

    def append(self, a: np.ndarray) -> None:
        if a.size:
            self.chunks.append((self.end, a))
            self.end += a.size

    def drop_before(self, sample: int) -> None:
        while self.chunks and self.chunks[0][0] + self.chunks[0][1].size <= sample:
            self.chunks.popleft()

    def span(self, start: int, end: int) -> np.ndarray:
        parts = [a[max(0, start - s):max(0, end - s)] for s, a in self.chunks if s < end and s + a.size > start]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    @property
    def held(self) -> int:
        return sum(a.size for _, a in self.chunks)


class TurnDetector:
    """Speech start / turn end over one session's streamed audio; `push` chunks, `flush` at the end."""

    def __init__(self, infer: VadCall, settings: VadSettings = VadSettings(), model: str = VAD.name):
        self._infer = infer
        self.settings = settings
        self.model = model
        s = settings
        self._min_silence = s.samples(s.min_silence_ms)
        self._min_speech = s.samples(s.min_speech_ms)
        self._pad = s.samples(s.speech_pad_ms)
        self._max_turn = int(s.max_turn_s * SR)
        self._max_chunk = s.samples(s.max_chunk_ms)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: a new one starts at t = 0."""
        self._state = np.zeros((1, *C.VAD_STATE), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)  # received samples not yet in a window
        self._windows = 0  # windows evaluated; the next one starts at sample windows * WINDOW
        self._recent = _Recent()
        self._candidate: int | None = None  # start sample of speech not yet min_speech_ms long
        self._turn_start: int | None = None  # speech start of the open turn (None: no turn)
        self._audio_start = 0  # first sample of the open turn's audio (speech start - pad, or the cut)
        self._silence_start: int | None = None  # first sample of the silence in the open turn
        self.probabilities: list[float] = []  # of the last push's windows (for diagnostics and tests)

    @property
    def in_turn(self) -> bool:
        return self._turn_start is not None

    @property
    def held_samples(self) -> int:
        """Audio samples the detector keeps now (bounded by max_turn_s + pad + a window)."""
        return self._recent.held + self._pending.size

    async def push(self, audio16k: np.ndarray) -> list[VadEvent]:
        """Feed one chunk; returns the events its complete windows produced (the remainder waits)."""
        a = validate_chunk(audio16k, self._max_chunk)
        self._recent.append(a)
        buf = np.concatenate([self._pending, a]) if self._pending.size else a
        n = buf.size // WINDOW
        self._pending = buf[n * WINDOW:].copy()
        events: list[VadEvent] = []
        self.probabilities = []
        for i in range(n):
            window = buf[i * WINDOW:(i + 1) * WINDOW]
            p = await self._probability(window)
            self.probabilities.append(p)
            start = self._windows * WINDOW
            self._windows += 1
            events += self._step(p, start, start + WINDOW)
        self._trim()
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: the open turn ends with the audio received (the last partial window is not
        evaluated); speech shorter than min_speech_ms is dropped. The detector is reset afterwards."""
        events = []
        if self._turn_start is not None:
            end = self._recent.end
            speech_end = self._silence_start if self._silence_start is not None else end
            silence = end - speech_end
            events.append(self._turn_end(t=end, speech_end=speech_end, audio_end=min(end, speech_end + self._pad),
                                         silence=silence, cut=silence < self._min_silence))
        self.reset()
        return events

    # ------------------------------------------------------------ internals
    async def _probability(self, window: np.ndarray) -> float:
        x = np.concatenate([self._context, window])[None]
        out = VAD.response(await self._infer(self.model, VAD.request(audio=x, state=self._state)))
        p, state = np.asarray(out["probability"]), np.asarray(out["next_state"])
        if p.shape != (1, 1) or state.shape != self._state.shape:
            raise RuntimeError(f"{self.model} answered probability {p.shape} and next_state {state.shape};"
                               f" expected (1, 1) and {self._state.shape}")
        self._state = state.astype(np.float32, copy=False)
        self._context = window[-CONTEXT:].copy()
        return float(p.reshape(-1)[0])

    def _step(self, p: float, start: int, end: int) -> list[VadEvent]:
        s = self.settings
        if self._turn_start is None:
            if self._candidate is None:
                if p >= s.threshold:
                    self._candidate = start
            elif p < s.neg_threshold:
                self._candidate = None  # a burst shorter than min_speech_ms
            if self._candidate is not None and end - self._candidate >= self._min_speech:
                return [self._open(self._candidate, self._candidate - self._pad)]
            return []
        if p >= s.threshold:
            self._silence_start = None
        elif p < s.neg_threshold and self._silence_start is None:
            self._silence_start = start
        if self._silence_start is not None and end - self._silence_start >= self._min_silence:
            silence_start = self._silence_start
            return [self._turn_end(t=end, speech_end=silence_start, audio_end=min(end, silence_start + self._pad),
                                   silence=end - silence_start, cut=False)]
        cut = self._audio_start + self._max_turn
        if end >= cut:
            silence_start = self._silence_start
            speech_end = cut if silence_start is None else min(cut, silence_start)
            events = [self._turn_end(t=end, speech_end=speech_end, audio_end=min(cut, speech_end + self._pad),
                                     silence=0 if silence_start is None else end - silence_start, cut=True)]
            if silence_start is None:  # still speaking: the next turn starts at the cut
                events.append(self._open(cut, cut))
            return events
        return []

    def _open(self, speech_start: int, audio_start: int) -> VadEvent:
        self._turn_start = speech_start
        self._audio_start = max(0, audio_start, self._recent.chunks[0][0] if self._recent.chunks else 0)
        self._candidate = None
        self._silence_start = None
        return VadEvent(SPEECH_START, speech_start / SR)

    def _turn_end(self, t: int, speech_end: int, audio_end: int, silence: int, cut: bool) -> VadEvent:
        audio = self._recent.span(self._audio_start, min(audio_end, self._audio_start + self._max_turn))
        event = VadEvent(TURN_END, t / SR, silence_ms=silence * 1000 / SR, audio=audio,
                         start_s=self._audio_start / SR, speech_end_s=speech_end / SR, cut=cut)
        self._turn_start = None
        self._silence_start = None
        self._candidate = None
        return event

    def _trim(self) -> None:
        """Keep only what a turn can still need: the open turn's audio, or the pre-pad before a candidate."""
        if self._turn_start is not None:
            keep = self._audio_start
        elif self._candidate is not None:
            keep = self._candidate - self._pad
        else:
            keep = self._windows * WINDOW - self._pad  # a speech start can be no earlier than the next window
        self._recent.drop_before(max(0, keep))
