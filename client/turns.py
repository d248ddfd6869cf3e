"""Collecting one turn's streamed events into a `TurnResult`: texts, audio placed at its samples, frames at
their slots, and the latencies and playback stalls a listener would feel (client clock)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from export.contract import events as ev
from export.contract import media
from export.contract.events import Event

Clock = Callable[[], float]


@dataclass
class PlaybackStats:
    """A player that starts at the first audio chunk's arrival and stalls when it runs dry."""

    max_gap_s: float | None  # largest time between two consecutive audio chunks' arrivals
    underruns: int  # how many times the player would stall
    stall_s: float  # total stalled time
    min_prebuffer_s: float  # start delay after the first chunk that would avoid every stall


_EPS = 1e-9


def playback_stats(arrivals: list[float], durations: list[float]) -> PlaybackStats:
    """Underruns of real-time playback of chunks (in arrival order) started when the first arrives."""
    if not arrivals:
        return PlaybackStats(None, 0, 0.0, 0.0)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    start = arrivals[0]
    played_until = start  # when the player runs out of what it has
    cum = 0.0  # audio before chunk k, seconds
    underruns, stall, prebuffer = 0, 0.0, 0.0
    for t, d in zip(arrivals, durations):
        prebuffer = max(prebuffer, t - (start + cum))
        if t > played_until + _EPS and cum > 0:
            underruns += 1
            stall += t - played_until
            played_until = t
        played_until += d
        cum += d
    return PlaybackStats(max(gaps) if gaps else None, underruns, stall, max(0.0, prebuffer))


@dataclass
class TurnResult:
    """One turn, collected: what was said and heard, and how fast it came (client clock, seconds
    from just before the request was sent)."""

    transcript: str | None  # what ASR heard (or the done event's transcript)
    reply: str  # the reply text (the done event's, else the streamed deltas)
    audio: np.ndarray = field(repr=False)  # float32 PCM, all chunks placed at their start_sample
    sample_rate: int
    frames: list[bytes] = field(repr=False)  # JPEG, in frame order
    frame_indices: list[int] = field(repr=False)  # each frame's slot on the 25 fps clock (gaps: dropped slots)
    events: list[Event] = field(repr=False)
    done: dict[str, Any] | None = field(repr=False)  # the done event's data (server timings_ms, ...)
    request_id: str = ""
    time_to_transcript_s: float | None = None
    time_to_first_text_s: float | None = None
    time_to_first_audio_s: float | None = None  # TTFA
    time_to_first_frame_s: float | None = None  # TTFF
    total_s: float | None = None  # to the done event (else the last event)
    max_audio_gap_s: float | None = None
    underrun_count: int = 0
    stall_s: float = 0.0
    min_prebuffer_s: float = 0.0

    @property
    def audio_s(self) -> float:
        return self.audio.size / self.sample_rate if self.sample_rate else 0.0

    @property
    def real_time_factor(self) -> float | None:
        """Total time / audio duration (< 1: the answer came faster than it plays)."""
        if self.total_s is None or self.audio_s <= 0:
            return None
        return self.total_s / self.audio_s

    @property
    def underrun(self) -> bool:
        """Whether audio played from its first chunk on would stall."""
        return self.underrun_count > 0

    @property
    def video_s(self) -> float:
        return len(self.frames) / media.VIDEO_FPS

    @property
    def interrupted(self) -> str | None:
        """Why the reply stopped early ("barge_in", "cancel"), or None when it ran to its end."""
        return (self.done or {}).get("interrupted")

    @property
    def frames_dropped(self) -> int:
        """Frame slots the server left out (late, or the frame stride); the MP4 repeats a frame in each."""
        return int((self.done or {}).get("frames_dropped") or 0)

    @property
    def server_timings_ms(self) -> dict[str, Any]:
        return dict((self.done or {}).get("timings_ms") or {})

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (seconds) and texts."""
        return {
            "request_id": self.request_id,
            "transcript": self.transcript,
            "reply": self.reply,
            "time_to_transcript_s": self.time_to_transcript_s,
            "time_to_first_text_s": self.time_to_first_text_s,
            "time_to_first_audio_s": self.time_to_first_audio_s,
            "time_to_first_frame_s": self.time_to_first_frame_s,
            "total_s": self.total_s,
            "audio_s": self.audio_s,
            "real_time_factor": self.real_time_factor,
            "frames": len(self.frames),
            "max_audio_gap_s": self.max_audio_gap_s,
            "playback_underrun": self.underrun,
            "underrun_count": self.underrun_count,
            "stall_s": self.stall_s,
            "min_prebuffer_s": self.min_prebuffer_s,
            "server_timings_ms": self.server_timings_ms,
            "interrupted": self.interrupted,
            "frames_dropped": self.frames_dropped,
        }

    def format_table(self) -> str:
        def s(x: float | None) -> str:
            return "-" if x is None else f"{x:8.3f} s"

        rtf = self.real_time_factor
        rows = [
            ("time to first text", s(self.time_to_first_text_s)),
            ("first audio chunk (TTFA)", s(self.time_to_first_audio_s)),
            ("first video frame (TTFF)", s(self.time_to_first_frame_s)),
            ("total", s(self.total_s)),
            ("audio", s(self.audio_s)),
            ("real-time factor", "-" if rtf is None else f"{rtf:8.3f}"),
            ("frames", f"{len(self.frames):8d}" + (f"  ({self.frames_dropped} slot(s) dropped by the server, "
                                                   f"each filled with the frame before it)" if self.frames_dropped
                                                   else "")),
            ("largest audio gap", s(self.max_audio_gap_s)),
            ("playback underrun", (f"yes: {self.underrun_count} stall(s), {self.stall_s:.3f} s; "
                                   f"prebuffer {self.min_prebuffer_s:.3f} s avoids it")
             if self.underrun else f"{'no':>8}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class TurnCollector:
    """Collects the events of one turn into a `TurnResult`.

    Latencies count from `t0`: the one given here, else the events' `sent_at`
    (stamped by `ask` just before the request goes out), else the clock read by
    `start()` (`collect` calls it just before pulling the first event). Arrival
    times are the events' `received_at`, or the clock when `add` sees them.

        turn = TurnCollector()
        for e in client.ask(...):
            turn.add(e); ...           # e.g. print the text as it streams
        result = turn.result()
    """

    def __init__(self, *, clock: Clock = time.perf_counter, t0: float | None = None):
        self.clock = clock
        self.t0 = t0
        self._t0_given = t0 is not None
        self._records: list[tuple[float, Event]] = []

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = self.clock()

    def add(self, event: Event) -> None:
        t = getattr(event, "received_at", None)
        if t is None:
            t = self.clock()
        sent = getattr(event, "sent_at", None)
        if sent is not None and not self._t0_given:
            self.t0 = sent
        elif self.t0 is None:
            self.t0 = t
        self._records.append((t, event))

    @property
    def delivered(self) -> bool:
        """Whether any event of the turn reached the client (content was delivered)."""
        return bool(self._records)

    def collect(self, events: Iterable[Event]) -> TurnResult:
        self.start()
        for e in events:
            self.add(e)
        return self.result()

    def result(self) -> TurnResult:
        t0 = self.t0 if self.t0 is not None else 0.0

        def first(kind: str) -> float | None:
            return next((t - t0 for t, e in self._records if e.type == kind), None)

        transcript = next((e.data.get("text") for _, e in self._records if e.type == ev.TRANSCRIPT), None)
        deltas = "".join(str(e.data.get("delta", "")) for _, e in self._records if e.type == ev.TEXT)
        done_t, done = next(((t, e.data) for t, e in self._records if e.type == ev.DONE), (None, None))
        if done is not None:
            if transcript is None and done.get("transcript") is not None:
                transcript = done["transcript"]
            reply = done["reply"] if done.get("reply") is not None else deltas
        else:
            reply = deltas

        # Audio: chunks placed at start_sample (appended where it is missing).
        audio_recs = [(t, e) for t, e in self._records if e.type == ev.AUDIO]
        rate = next((int(e.data["sample_rate"]) for _, e in audio_recs if e.data.get("sample_rate")),
                    media.OUTPUT_SAMPLE_RATE)
        placed: list[tuple[int, np.ndarray]] = []
        end = 0
        arrivals, durations = [], []
        for t, e in audio_recs:
            chunk = np.zeros(0, np.float32) if e.audio is None else np.asarray(e.audio, np.float32).reshape(-1)
            start = e.data.get("start_sample")
            start = end if start is None else int(start)
            placed.append((start, chunk))
            end = max(end, start + chunk.size)
            arrivals.append(t)
            durations.append(chunk.size / rate)
        audio = np.zeros(end, dtype=np.float32)
        for start, chunk in placed:
            audio[start:start + chunk.size] = chunk
        play = playback_stats(arrivals, durations)

        video = [e for _, e in self._records if e.type == ev.VIDEO and e.frame is not None]
        if all("index" in e.data for e in video):
            video.sort(key=lambda e: e.data["index"])

        last_t = done_t if done_t is not None else (self._records[-1][0] if self._records else None)
        return TurnResult(
            transcript=transcript, reply=reply, audio=audio, sample_rate=rate,
            frames=[e.frame for e in video], frame_indices=[int(e.data.get("index", i)) for i, e in enumerate(video)],
            events=[e for _, e in self._records], done=done,
            request_id=next((getattr(e, "request_id", "") for _, e in self._records), ""),
            time_to_transcript_s=first(ev.TRANSCRIPT), time_to_first_text_s=first(ev.TEXT),
            time_to_first_audio_s=first(ev.AUDIO), time_to_first_frame_s=first(ev.VIDEO),
            total_s=None if last_t is None else last_t - t0,
            max_audio_gap_s=play.max_gap_s, underrun_count=play.underruns, stall_s=play.stall_s,
            min_prebuffer_s=play.min_prebuffer_s,
        )


def collect(events: Iterable[Event], *, clock: Clock = time.perf_counter) -> TurnResult:
    """Collect a turn's events (e.g. `client.ask(...)`) into a `TurnResult`."""
    return TurnCollector(clock=clock).collect(events)
