"""One browser session: its stream to the orchestrator, its outgoing tracks, its data channel, and their rules.

- Microphone chunks go to the orchestrator as they come (`mic_chunk`); the server's turn detection answers with
  `vad` events and, at a turn's end, the reply. Typed text is a turn of the same session.
- A reply's audio is resampled into the playout buffer, its frames scheduled at the media time of their `pts`
  (media.py). While no reply plays the face moves: idle-motion requests of IDLE_CHUNK_S, one after the other.
- Barge-in: speech starting (the `vad` speech_start event), a typed message or the page's Stop drop the reply's
  queued audio and frames here at once (the server stops generating it; its later events are ignored).
- A drain or a reload of `talking_head` (the gateway polls its readiness): Triton finishes unloading a model only
  once every stream that used it is closed, so the session ends its stream as soon as no reply plays (`drain`) and
  opens a new one when the model is ready again (`resume`); the browser's connection stays, the face holds still
  meanwhile, and what the user says or types meanwhile is not sent (the page is told: a `server` message).
- To the page (data channel, JSON): the server's events without media (vad, transcript, text, piece, done,
  cancelled), plus `reply_audio` / `reply_video` (a reply's first sample / frame leaves; the frame's pts),
  `video_clock` (pts of the frames sent in the last second: the page maps RTP timestamps to them), `latency`,
  `flushed`, `error`, `server` (`state`: draining / ready).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from deploy.gateway.limits import GatewayLimits, Refusal, SessionBudget
from deploy.gateway.media import AudioPlayout, MediaClock, SpeechResampler, TurnTimeline
from deploy.gateway.stats import GatewayStats, ReplyLatency
from deploy.gateway.tracks import AvatarAudioTrack, AvatarVideoTrack
from deploy.gateway.triton import ERROR, OrchestratorStream
from deploy.gateway.video import Scheduled, VideoSchedule
from export.contract import events as ev
from export.contract import media as C

log = logging.getLogger(__name__)

IDLE_CHUNK_S = 2.0  # one idle-motion request; the next is sent when it ends
IDLE_LEAD_S = 0.04  # idle frames are shown this long after they arrive (network jitter)
IDLE_STALL_S = IDLE_CHUNK_S + 2.0  # an idle request without its `done` by then is given up (and sent again)
TICK_S = 1.0  # video_clock messages, the idle watchdog
MAX_TEXT = 2000  # characters of a typed message (the server's own limit)
AVATAR_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
DRAINING = ("the server is restarting the conversation model: what you say now is not heard; the avatar answers "
            "again when it is back")


@dataclass
class Reply:
    turn_id: str
    latency: ReplyLatency
    timeline: TurnTimeline = field(default_factory=TurnTimeline)
    resampler: SpeechResampler | None = None
    frames: int = 0
    last_frame_s: float = 0.0
    finished: bool = False  # its `done` came: everything of it is queued


class Session:
    def __init__(self, sid: str, stream: OrchestratorStream, stats: GatewayStats, budget: SessionBudget | None = None,
                 on_unread: Callable[[str], None] = lambda reason: None):
        self.id, self.stream, self.stats = sid, stream, stats
        self.budget = budget or SessionBudget(GatewayLimits())  # data-channel messages and microphone rate
        self.on_unread = on_unread  # its client took none of `max_unread_bytes` of messages: the gateway ends it
        self.unread = False  # ... and it was told so once
        self.clock = MediaClock(time.monotonic)
        self.playout = AudioPlayout()
        self.schedule = VideoSchedule()
        self.audio = AvatarAudioTrack(self.clock, self.playout, self._audio_sent)
        self.video = AvatarVideoTrack(self.clock, self.schedule, self._frame_sent)
        self.reply: Reply | None = None
        self.dropped: set[str] = set()  # turns stopped here whose events may still come
        self.idle_rid: str | None = None  # the idle-motion request in flight, when it was sent, its frames' offset
        self.idle_sent, self.idle_offset = 0.0, None
        self.idle_clock_s = 0.0  # idle motion sent so far (seconds): where the next idle request starts its sway
        self.question_end: float | None = None
        self.end_next_chunk, self.closed, self.channel = False, False, None
        self.draining = False  # talking_head is not ready upstream: the stream ends (or has ended) for its unload
        self._pending: list[dict] = []  # to the page, until its channel opens
        self._clock_pts: list[int] = []  # pts sent since the last video_clock message
        self._cancelled = asyncio.Event()
        self._last_error = ("", 0.0)
        self._tasks: list[asyncio.Task] = []
        self._events: asyncio.Task | None = None  # reads the stream's events; None once the stream has ended

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._tick()))
        self._open_stream()
        self._maybe_idle()

    def _open_stream(self) -> None:
        self._events = asyncio.ensure_future(self._run_events())
        self._tasks.append(self._events)

    def _end_stream(self) -> None:
        if self._events is not None:
            self._events.cancel()
            self._events = None
            self.stream.close()
            self.idle_rid = None  # the idle request in flight went with the stream

    def drain(self) -> None:
        """talking_head is not ready upstream (a drain, a reload): end the stream now if no reply plays, else once
        the reply has been played (Triton waits for every stream that used the model before it unloads it)."""
        if self.closed or self.draining:
            return
        self.draining = True
        self.send({"type": "server", "state": "draining", "message": DRAINING})
        self._maybe_idle()

    def resume(self) -> None:
        """talking_head is ready again: a new stream of the same session (the old one, if a reply kept it open
        through the reload, goes on), and idle motion again."""
        if self.closed or not self.draining:
            return
        self.draining = False
        if self._events is None:
            self.stream = self.stream.reopened()
            self._open_stream()
        self.send({"type": "server", "state": "ready"})
        self._maybe_idle()

    def add_task(self, coro) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def close(self) -> None:
        """The browser left: stop the reply in flight (cancel) and end the stream and the tracks."""
        if self.closed:
            return
        self.closed = True
        if self.reply is not None and not self.reply.finished and self._events is not None:
            self.stream.cancel()
            try:
                await asyncio.wait_for(self._cancelled.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        self._end_reply(self.reply)
        self.stats.count_frames(self.id, self.schedule.sent, self.schedule.skipped, ended=True)
        self._end_stream()
        self.audio.stop()
        self.video.stop()
        for t in self._tasks:
            t.cancel()

    # ------------------------------------------------------------------ the page
    def attach(self, channel) -> None:
        self.channel = channel
        channel.on("message", self._message)
        pending, self._pending = self._pending, []
        for msg in pending:
            self.send(msg)

    def send(self, msg: dict) -> None:
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            if self.unread:
                return
            if ch.bufferedAmount > self.budget.limits.max_unread_bytes:
                self.unread = True
                return self.on_unread(f"its client has not taken {ch.bufferedAmount} bytes of data-channel messages "
                                      f"(the limit is {self.budget.limits.max_unread_bytes})")
            ch.send(json.dumps(msg, separators=(",", ":")))
        elif ch is None and len(self._pending) < 500:
            self._pending.append(msg)

    def _message(self, raw) -> None:
        refused = self.budget.message(raw)
        if refused:
            return self._refuse(refused)
        try:
            msg = json.loads(raw)
            kind = msg["type"]
        except (TypeError, ValueError, KeyError, RecursionError):  # nested past json's limit: raised into aiortc, the
            # exception ended the session's DTLS transport
            return self.send({"type": ERROR, "message": "data channel messages are JSON objects with a type"})
        if kind == "text":
            text = str(msg.get("text", "")).strip()[:MAX_TEXT]
            if text and self.draining:
                self.send({"type": ERROR, "message": f"not sent: {DRAINING}"})
            elif text:
                self.barge_in("text")
                self.question_end = time.monotonic()
                self.stream.text(text)
        elif kind == "ptt":  # push-to-talk released: the turn ends now, not after the silence
            self.end_next_chunk = self.end_next_chunk or not msg.get("down", False)
        elif kind == "cancel":
            self.barge_in("cancel")
            if self._events is not None:
                self.stream.cancel()
        elif kind == "avatar" and AVATAR_ID.fullmatch(str(msg.get("id", ""))):
            self.stream.set_avatar(str(msg["id"]))
        elif kind == "bye":
            asyncio.ensure_future(self.close())
        else:
            self.send({"type": ERROR, "message": f"unknown or malformed message {kind!r}"})

    def _refuse(self, refusal: Refusal) -> None:
        if self.budget.tell(refusal):  # once a second: a flood of refusals would be a flood of messages
            self.send({"type": ERROR, "message": refusal.text})

    def mic_chunk(self, chunk) -> None:
        refused = self.budget.mic()
        if refused:
            return self._refuse(refused)
        if not self.closed and not self.draining:
            end, self.end_next_chunk = self.end_next_chunk, False
            self.stream.mic(chunk, end_of_input=end)

    # ------------------------------------------------------------------ the orchestrator
    async def _run_events(self) -> None:
        try:
            async for event in self.stream.events():
                self.on_event(event)
        except Exception as e:  # the stream failed (server gone): tell the page (CancelledError is no Exception)
            if not self.closed:
                log.warning("session %s: stream ended: %s", self.id, e)
                self.send({"type": ERROR, "message": f"connection to the server lost: {e}"})

    def on_event(self, e) -> None:
        if e.request_id.startswith("idle-"):
            return self._idle_event(e)
        if e.type == ev.AUDIO:
            return self._audio(e)
        if e.type == ev.VIDEO:
            return self._video(e)
        if e.type == ev.VAD and e.data.get("state") == "speech_start":
            self.barge_in("speech")
        elif e.type == ev.VAD and e.data.get("state") == "turn_end":
            self.question_end = e.received_at
        elif e.type == ev.DONE:
            self._done(e)
        elif e.type == ev.CANCELLED:
            self._cancelled.set()
        elif e.type == ERROR:
            last, at = self._last_error
            if e.data["message"] == last and e.received_at - at < 2.0:
                return  # one refused chunk is like the next: say it once
            self._last_error = (e.data["message"], e.received_at)
        self.send({"type": e.type, **e.data})

    def _reply_for(self, e) -> Reply | None:
        tid = str(e.data.get("turn_id") or "")
        if tid in self.dropped:
            return None
        r = self.reply
        if r is not None and r.turn_id == tid:
            return r
        if r is not None:  # another turn of the session began on the server: it replaced this one
            self._stop(r, "replaced")
        r = self.reply = Reply(tid, ReplyLatency(tid, self.id, question_end=self.question_end))
        self.question_end = None  # one question, one reply
        now = self.clock.now()
        self.schedule.drop(lambda s: s.turn != "idle" or s.media_s < now)  # the reply's frames take over
        return r

    def _audio(self, e) -> None:
        r = self._reply_for(e)
        if r is None or e.audio is None:
            return
        if r.resampler is None:
            r.resampler = SpeechResampler(int(e.data.get("sample_rate") or C.OUTPUT_SAMPLE_RATE))
            r.latency.audio_event = e.received_at
        self._queue_audio(r, r.resampler.push(e.audio))

    def _queue_audio(self, r: Reply, samples) -> None:
        if not samples.size:
            return
        at = self.playout.write(samples)
        if r.timeline.written == 0:
            self.playout.mark(at, ("audio", r.turn_id))
        r.timeline.place(at, samples.size)

    def _video(self, e) -> None:
        r = self._reply_for(e)
        if r is None or e.frame is None:
            return
        if r.latency.video_event is None:
            r.latency.video_event = e.received_at
        r.timeline.anchor(self.clock.now())
        media_s = r.timeline.media_time(float(e.data.get("pts", 0.0)))
        self.schedule.push(media_s, e.frame, r.turn_id)
        r.frames += 1
        r.last_frame_s = max(r.last_frame_s, media_s + 1.0 / C.VIDEO_FPS)

    def _done(self, e) -> None:
        tid = str(e.data.get("turn_id") or "")
        self.dropped.discard(tid)  # nothing of that turn comes after its done
        r = self.reply
        if r is None or r.turn_id != tid:
            return
        r.finished = True
        if r.resampler is not None:
            self._queue_audio(r, r.resampler.push(None, last=True))
        end = max(r.timeline.end_s, r.last_frame_s)
        asyncio.get_running_loop().call_at(self.clock.wall(end), self._played, r)

    def _played(self, r: Reply) -> None:
        """A finished reply has been sent to the end: back to listening (idle motion)."""
        if self.reply is r:
            self.reply = None
            self._end_reply(r)
            self._maybe_idle()

    # ------------------------------------------------------------------ barge-in
    def barge_in(self, reason: str) -> None:
        """Drop the reply being played (its audio and frames queued here) at once."""
        if self.reply is not None:
            self._stop(self.reply, reason)
            self._maybe_idle()

    def _stop(self, r: Reply, reason: str) -> None:
        if not r.finished:
            self.dropped.add(r.turn_id)
        self.playout.flush()
        self.schedule.drop(lambda s: s.turn != r.turn_id)
        self.reply = None
        self._end_reply(r)
        self.send({"type": "flushed", "turn_id": r.turn_id, "reason": reason})

    def _end_reply(self, r: Reply | None) -> None:
        if r is not None and r.latency.audio_event is not None:
            self.stats.add(r.latency)

    # ------------------------------------------------------------------ idle motion
    def _maybe_idle(self) -> None:
        """No reply plays: idle motion, or, while draining, the stream ends."""
        if self.closed or self.reply is not None:
            return
        if self.draining:
            self._end_stream()
        elif self.idle_rid is None:
            self.idle_rid = self.stream.idle(IDLE_CHUNK_S, from_s=self.idle_clock_s)
            self.idle_sent, self.idle_offset = time.monotonic(), None
            self.idle_clock_s += IDLE_CHUNK_S  # the next request's sway goes on from where this one ends

    def _idle_event(self, e) -> None:
        if e.request_id != self.idle_rid:
            return
        if e.type == ev.VIDEO and e.frame is not None and self.reply is None:
            if self.idle_offset is None:
                self.idle_offset = self.clock.now() + IDLE_LEAD_S
            self.schedule.push(self.idle_offset + float(e.data.get("pts", 0.0)), e.frame, "idle")
        elif e.type == ev.DONE:
            self.idle_rid = None
            self._maybe_idle()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self._clock_pts:
                self.send({"type": "video_clock", "pts": self._clock_pts})
                self._clock_pts = []
            self.stats.count_frames(self.id, self.schedule.sent, self.schedule.skipped)
            if self.idle_rid is not None and time.monotonic() - self.idle_sent > IDLE_STALL_S:
                self.idle_rid = None  # refused (server busy) or lost: try again
                self._maybe_idle()

    # ------------------------------------------------------------------ what left
    def _audio_sent(self, key, t: float) -> None:
        r = self.reply
        if r is not None and key == ("audio", r.turn_id) and r.latency.audio_sent is None:
            r.latency.audio_sent = t
            self.send({"type": "reply_audio", "turn_id": r.turn_id})
            self.send({"type": "latency", **r.latency.figures()})

    def _frame_sent(self, item: Scheduled, pts: int, t: float) -> None:
        self._clock_pts.append(pts % 2**32)
        r = self.reply
        if r is not None and item.turn == r.turn_id and r.latency.video_sent is None:  # the reply's first to leave
            r.latency.video_sent = t
            self.send({"type": "reply_video", "turn_id": r.turn_id, "pts": pts % 2**32})
            self.send({"type": "latency", **r.latency.figures()})
