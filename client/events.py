"""Typed events: one dataclass per event type of the protocol (export/contract/events.py), built from a received
event, its raw dict kept.

    for e in th.ask(avatar_id=avatar.id, text="Hello!").typed():
        match e:
            case TextEvent(delta=delta):           print(delta, end="")
            case AudioEvent(pcm=pcm, sample_rate=sr): player.write(pcm)
            case VideoEvent(jpeg=jpeg, pts=pts):   show(jpeg, at=pts)
            case DoneEvent(interrupted=why):       ...

`typed(event)` converts one event (a `StreamEvent` or an `export.contract.events.Event`); `e.raw` is the event's JSON
object as received (with "type"), `e.event` the received event itself (client timestamps, audio, frame). Fields a
newer server adds stay in `raw`; an event type this client does not know never reaches here (the SDK skips it).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from export.contract import events as ev
from export.contract.events import Event


@dataclass(frozen=True)
class TurnEvent:
    """What every event carries: its turn, the server's milliseconds since the request arrived, the raw JSON."""

    TYPE: ClassVar[str] = ""
    turn_id: str | None
    t_ms: float
    raw: dict[str, Any] = field(repr=False, compare=False)
    event: Event | None = field(default=None, repr=False, compare=False)

    @property
    def type(self) -> str:
        return self.TYPE

    @property
    def latency_s(self) -> float | None:
        """Client seconds from sending the request to receiving this event (SDK events only)."""
        return getattr(self.event, "latency_s", None)


@dataclass(frozen=True)
class TranscriptEvent(TurnEvent):
    TYPE: ClassVar[str] = ev.TRANSCRIPT
    text: str = ""  # what speech recognition heard


@dataclass(frozen=True)
class TextEvent(TurnEvent):
    TYPE: ClassVar[str] = ev.TEXT
    delta: str = ""  # reply text as the LLM produces it
    piece: int | None = None  # the piece (sentence/clause) it belongs to


@dataclass(frozen=True)
class PieceEvent(TurnEvent):
    TYPE: ClassVar[str] = ev.PIECE
    index: int = 0
    text: str = ""
    emotion: str | None = None


@dataclass(frozen=True)
class AudioEvent(TurnEvent):
    TYPE: ClassVar[str] = ev.AUDIO
    index: int = 0
    sample_rate: int = 0
    start_sample: int = 0
    samples: int = 0
    pcm: np.ndarray | None = field(default=None, repr=False, compare=False)  # float32 mono at sample_rate


@dataclass(frozen=True)
class VideoEvent(TurnEvent):
    TYPE: ClassVar[str] = ev.VIDEO
    index: int = 0  # frame slot of the 25 fps clock (dropped slots leave gaps)
    pts: float = 0.0  # seconds from the first audio sample
    width: int = 0
    height: int = 0
    encoding: str = "jpeg"
    emotion: str | None = None
    jpeg: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DoneEvent(TurnEvent):
    TYPE: ClassVar[str] = ev.DONE
    reply: str = ""
    transcript: str = ""
    audio_samples: int = 0
    video_frames: int = 0
    frames_dropped: int = 0
    frames_dropped_late: int = 0
    frames_dropped_late_first_s: int = 0  # of the late drops, frames due in the turn's first second
    frame_stride: int = 1
    timings_ms: dict[str, float] = field(default_factory=dict)
    interrupted: str | None = None  # None, "barge_in" or "cancel"


@dataclass(frozen=True)
class CancelledEvent(TurnEvent):
    TYPE: ClassVar[str] = ev.CANCELLED
    session: str = ""
    interrupted_turn: str | None = None  # the stopped turn's id, None when the session had no reply in flight


@dataclass(frozen=True)
class VadEvent(TurnEvent):
    TYPE: ClassVar[str] = ev.VAD
    state: str = ""  # "speech_start" or "turn_end"
    t_s: float = 0.0
    silence_ms: float | None = None  # turn_end: the silence that ended the turn
    speech_s: float | None = None  # turn_end: the turn's speech
    end_of_input: bool = False  # turn_end: ended by the end of the microphone stream


EVENT_CLASSES: dict[str, type[TurnEvent]] = {c.TYPE: c for c in (
    TranscriptEvent, TextEvent, PieceEvent, AudioEvent, VideoEvent, DoneEvent, CancelledEvent, VadEvent)}
assert set(EVENT_CLASSES) == set(ev.TYPES), "client/events.py: a dataclass per export.contract.events type"


def typed(event: Event) -> TurnEvent:
    """The typed form of a received event (ValueError for a type the protocol does not have)."""
    cls = EVENT_CLASSES.get(event.type)
    if cls is None:
        raise ValueError(f"unknown event type {event.type!r}")
    data = event.data
    own = {f.name for f in fields(cls)} - {"turn_id", "t_ms", "raw", "event", "pcm", "jpeg"}
    kwargs: dict[str, Any] = {k: data[k] for k in own if k in data and data[k] is not None}
    if cls is AudioEvent:
        kwargs["pcm"] = event.audio
    if cls is VideoEvent:
        kwargs["jpeg"] = event.frame
    return cls(turn_id=data.get("turn_id"), t_ms=float(data.get("t_ms", 0.0)), raw={"type": event.type, **data},
               event=event, **kwargs)
