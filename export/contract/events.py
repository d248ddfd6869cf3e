"""What the orchestrator streams back for one user turn: one JSON `event` per response.

Every response of a `talking_head` stream carries the `event` tensor (JSON);
audio events also carry `audio_chunk` (float32 PCM at `sample_rate`), video
events carry `frame` (JPEG bytes). The last response of a turn is a `done`
event (or a Triton error naming the problem), flagged final by Triton.

Event types, in the order a client first sees them:
  transcript  {"text"}                                   what ASR heard (speech input only)
  text        {"delta", "piece"}                         reply text as the LLM produces it
  piece       {"index", "text", "emotion"}               a sentence/clause sent to TTS, its emotion label
  audio       {"index", "sample_rate", "start_sample", "samples"}
  video       {"index", "pts", "width", "height", "encoding", "emotion"}
                                                         index/pts count every frame slot of the 25 fps clock:
                                                         slots dropped to keep up with audio leave gaps
  done        {"reply", "transcript", "audio_samples", "video_frames", "frames_dropped", "frames_dropped_late",
               "frames_dropped_late_first_s", "frame_stride", "timings_ms", "interrupted"}
                                                         frames_dropped_late_first_s: of the late drops, the
                                                         frames due in the turn's first second
                                                         interrupted: null, "barge_in" or "cancel"
  cancelled   {"session", "interrupted_turn"}            answer to a `cancel` request (turn id or null)
  vad         {"state", "t_s", ...}                      microphone turn detection: "speech_start", then
                                                         "turn_end" {"silence_ms", "speech_s"}
All events also carry "type", "turn_id" and "t_ms" (server milliseconds since the request arrived).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TRANSCRIPT = "transcript"
TEXT = "text"
PIECE = "piece"
AUDIO = "audio"
VIDEO = "video"
DONE = "done"
CANCELLED = "cancelled"
VAD = "vad"
TYPES = (TRANSCRIPT, TEXT, PIECE, AUDIO, VIDEO, DONE, CANCELLED, VAD)


@dataclass
class Event:
    type: str
    data: dict[str, Any]
    audio: np.ndarray | None = field(default=None, repr=False)  # float32 PCM, audio events
    frame: bytes | None = field(default=None, repr=False)  # JPEG, video events

    def to_json(self) -> bytes:
        return json.dumps({"type": self.type, **self.data}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, audio: np.ndarray | None = None, frame: bytes | None = None) -> "Event":
        data = json.loads(raw)
        kind = data.pop("type")
        if kind not in TYPES:
            raise ValueError(f"unknown event type {kind!r}")
        return cls(kind, data, audio=audio, frame=frame)
