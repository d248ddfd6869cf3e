"""What the gateway measures (served at /stats): per reply, the time from the question's end (the VAD turn_end
event, or a typed message) to the orchestrator's first audio / frame event at the gateway, and from that event to
the moment the frame carrying it is handed to aiortc's encoder (then packetised and sent: the gateway's added
latency); per session and in total, the process CPU time."""
from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks; None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@dataclass
class ReplyLatency:
    """Monotonic times (s) of one reply at the gateway; the derived figures in ms."""

    turn_id: str
    session: str
    question_end: float | None = None
    audio_event: float | None = None  # first audio event of the turn arrived from the orchestrator
    audio_sent: float | None = None  # the 20 ms frame holding its first sample went to the encoder
    video_event: float | None = None
    video_sent: float | None = None

    @staticmethod
    def _ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000.0, 1)

    def figures(self) -> dict:
        return {"turn_id": self.turn_id, "session": self.session,
                "server_audio_ms": self._ms(self.question_end, self.audio_event),
                "server_video_ms": self._ms(self.question_end, self.video_event),
                "gateway_audio_ms": self._ms(self.audio_event, self.audio_sent),
                "gateway_video_ms": self._ms(self.video_event, self.video_sent)}


@dataclass
class GatewayStats:
    keep: int = 1000  # replies kept for the percentiles
    replies: deque = field(default_factory=deque)
    sessions_started: int = 0
    sessions_ended: int = 0
    sessions_unconnected: int = 0  # ended because their WebRTC connection never came up
    sessions_broke_sctp: int = 0  # ended because their peer broke a rule of its SCTP association (sctp_guard.py)
    sessions_unread: int = 0  # ended because their client took none of max_unread_bytes of data-channel messages
    refused: Counter = field(default_factory=Counter)  # what the RTCP, RTP and ICE bounds did not do, by kind
    active: int = 0
    started: float = field(default_factory=time.monotonic)
    frames: dict = field(default_factory=dict)  # live session -> (video frames sent, skipped as late)
    frames_ended: tuple = (0, 0)  # the same, summed over the sessions that ended

    def count_frames(self, session: str, sent: int, skipped: int, ended: bool = False) -> None:
        self.frames[session] = (sent, skipped)
        if ended:
            done = self.frames.pop(session)
            self.frames_ended = (self.frames_ended[0] + done[0], self.frames_ended[1] + done[1])

    def add(self, reply: ReplyLatency) -> None:
        self.replies.append(reply.figures())
        while len(self.replies) > self.keep:
            self.replies.popleft()

    def summary(self, recent: int = 20) -> dict:
        out: dict = {"active_sessions": self.active, "sessions_started": self.sessions_started,
                     "sessions_ended": self.sessions_ended,
                     "sessions_unconnected": self.sessions_unconnected,
                     "sessions_broke_sctp": self.sessions_broke_sctp, "sessions_unread": self.sessions_unread,
                     "refused": dict(sorted(self.refused.items())),
                     "replies": len(self.replies),
                     "uptime_s": round(time.monotonic() - self.started, 1),
                     "process_cpu_s": round(time.process_time(), 3),
                     "video_frames_sent": self.frames_ended[0] + sum(f[0] for f in self.frames.values()),
                     "video_frames_skipped_late": self.frames_ended[1] + sum(f[1] for f in self.frames.values())}
        for key in ("server_audio_ms", "server_video_ms", "gateway_audio_ms", "gateway_video_ms"):
            values = [r[key] for r in self.replies if r[key] is not None]
            out[key] = {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95)}
        out["recent"] = list(self.replies)[-recent:] if recent > 0 else []
        return out
