"""A gateway session's rules on synthetic orchestrator events, without a browser or a server
(deploy/gateway/session.py): a reply's audio and frames placed on the media clock, idle motion only while no reply
plays, barge-in dropping what is queued, messages from the page becoming requests, a drain of talking_head ending
the stream once no reply plays and a new stream after it. (tests/test_gateway_drain.py: the drain on the real
server.)"""
from __future__ import annotations

import asyncio
import json

import cv2
import numpy as np
import pytest
from page import Channel

from client.wire import StreamEvent
from deploy.gateway.media import OUT_RATE
from deploy.gateway.session import Session
from deploy.gateway.stats import GatewayStats
from export.contract import events as ev

JPEG = cv2.imencode(".jpg", np.full((32, 32, 3), 100, np.uint8))[1].tobytes()


class FakeStream:
    """What Session asks of an OrchestratorStream, recorded."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.idle_from: list[float] = []
        self.n = 0

    def _rid(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-{self.n}"

    def mic(self, chunk, end_of_input=False):
        self.calls.append(("mic", end_of_input))
        return self._rid("mic")

    def text(self, text):
        self.calls.append(("text", text))
        return self._rid("text")

    def idle(self, seconds, from_s=0.0):
        self.calls.append(("idle", seconds))
        self.idle_from.append(from_s)
        return self._rid("idle")

    def cancel(self):
        self.calls.append(("cancel",))
        return self._rid("cancel")

    def set_avatar(self, avatar_id):
        self.calls.append(("avatar", avatar_id))

    async def events(self):
        await asyncio.Event().wait()
        yield  # pragma: no cover

    def close(self):
        self.calls.append(("close",))

    def reopened(self):
        self.calls.append(("reopened",))
        return FakeStream()


def event(kind, rid="mic-9", audio=None, frame=None, **data):
    return StreamEvent(kind, data, audio=audio, frame=frame, request_id=rid, received_at=0.0)


def feed(s, loop, *events):
    """Hand events to the session from inside its event loop (as its stream task does)."""
    async def go():
        for e in events:
            s.on_event(e)
    loop.run_until_complete(go())


async def inside(fn):
    """Call fn from inside the session's event loop (as the gateway's readiness poll does)."""
    fn()


def kinds(channel):
    return [m["type"] for m in channel.sent]


@pytest.fixture
def session():
    async def make():
        s = Session("web-test", FakeStream(), GatewayStats())
        s.attach(Channel())
        s.start()
        return s

    loop = asyncio.new_event_loop()
    s = loop.run_until_complete(make())
    yield s, loop

    async def end():  # close the session and let its cancelled tasks end
        await s.close()
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}), return_exceptions=True)

    loop.run_until_complete(end())
    loop.close()


def test_a_reply_is_played_and_idle_motion_waits(session):
    s, loop = session
    idle_rid = s.idle_rid
    assert s.stream.calls[0] == ("idle", 2.0) and idle_rid.startswith("idle-")
    feed(s, loop, event(ev.VIDEO, idle_rid, frame=JPEG, pts=0.0))
    assert len(s.schedule) == 1  # an idle frame is scheduled while listening
    feed(s, loop, event(ev.VAD, state="turn_end"))
    feed(s, loop, event(ev.TRANSCRIPT, turn_id="t1", text="hello"))
    feed(s, loop, event(ev.AUDIO, turn_id="t1", sample_rate=22050, audio=np.full(2205, 0.2, np.float32)))
    assert s.reply.turn_id == "t1" and s.playout.end > s.playout.read_pos
    start = s.reply.timeline.media_time(0.0)
    assert start == pytest.approx(s.playout.read_pos / OUT_RATE)
    feed(s, loop, event(ev.VIDEO, turn_id="t1", frame=JPEG, pts=0.04))
    feed(s, loop, event(ev.VIDEO, idle_rid, frame=JPEG, pts=0.04))  # idle frames wait while the reply plays
    reply_frames = [it for it in s.schedule._items if it.turn == "t1"]
    assert len(reply_frames) == 1 and reply_frames[0].media_s == pytest.approx(start + 0.04)
    assert not [it for it in s.schedule._items if it.turn == "idle" and it.media_s >= start]
    feed(s, loop, event(ev.DONE, idle_rid, turn_id="i"))  # the idle request ended: no new one while replying
    assert sum(c[0] == "idle" for c in s.stream.calls) == 1
    feed(s, loop, event(ev.DONE, turn_id="t1", interrupted=None))
    assert s.reply.finished
    loop.run_until_complete(asyncio.sleep(0.3))  # the reply's ~0.1 s play out: back to idle motion
    assert s.reply is None and sum(c[0] == "idle" for c in s.stream.calls) == 2
    assert s.stream.idle_from == [0.0, 2.0]  # the second idle request's sway goes on where the first one's ended
    assert {"vad", "transcript", "done"} <= set(kinds(s.channel))


def test_speech_barges_in_on_the_reply(session):
    s, loop = session
    feed(s, loop, event(ev.AUDIO, turn_id="t2", sample_rate=22050, audio=np.full(22050, 0.2, np.float32)))
    feed(s, loop, event(ev.VIDEO, turn_id="t2", frame=JPEG, pts=0.5))
    assert s.playout.end - s.playout.read_pos > OUT_RATE // 2
    feed(s, loop, event(ev.VAD, state="speech_start"))
    assert s.playout.end == s.playout.read_pos and not [it for it in s.schedule._items if it.turn == "t2"]
    assert s.reply is None and "t2" in s.dropped
    flushed = [m for m in s.channel.sent if m["type"] == "flushed"]
    assert flushed == [{"type": "flushed", "turn_id": "t2", "reason": "speech"}]
    feed(s, loop, event(ev.AUDIO, turn_id="t2", sample_rate=22050, audio=np.ones(2205, np.float32)))
    assert s.playout.end == s.playout.read_pos  # the stopped reply's late audio is ignored
    feed(s, loop, event(ev.DONE, turn_id="t2", interrupted="barge_in"))
    assert "t2" not in s.dropped and s.channel.sent[-1]["interrupted"] == "barge_in"


def test_page_messages_become_requests(session):
    s, loop = session
    feed(s, loop, event(ev.AUDIO, turn_id="t3", sample_rate=22050, audio=np.full(22050, 0.2, np.float32)))
    s.channel.handler(json.dumps({"type": "text", "text": "  Hi there  "}))
    assert ("text", "Hi there") in s.stream.calls and s.reply is None  # typing interrupts the reply here too
    s.channel.handler(json.dumps({"type": "ptt", "down": False}))
    s.mic_chunk(np.zeros(512, np.float32))
    s.mic_chunk(np.zeros(512, np.float32))
    assert [c for c in s.stream.calls if c[0] == "mic"] == [("mic", True), ("mic", False)]
    s.channel.handler(json.dumps({"type": "avatar", "id": "abc123"}))
    s.channel.handler(json.dumps({"type": "cancel"}))
    assert ("avatar", "abc123") in s.stream.calls and ("cancel",) in s.stream.calls
    s.channel.handler("not json")
    s.channel.handler(json.dumps({"type": "avatar", "id": "../../etc"}))
    assert [m["type"] for m in s.channel.sent[-2:]] == ["error", "error"]
    s.channel.handler("[" * 5000 + "]" * 5000)  # 10 KB, within a message's 16 KiB: past json's recursion limit
    assert s.channel.sent[-1] == {"type": "error", "message": "data channel messages are JSON objects with a type"}


def test_a_page_that_takes_none_of_its_messages_is_reported_once_and_sent_no_more(session):
    s, loop = session
    reasons: list[str] = []
    s.on_unread = reasons.append
    s.send({"type": "server", "state": "ok"})
    s.channel.bufferedAmount = s.budget.limits.max_unread_bytes + 1  # aiortc's queue for a client that acknowledges
    for _ in range(3):  # nothing
        s.send({"type": "server", "state": "ok"})
    assert len(s.channel.sent) == 1 and len(reasons) == 1
    assert reasons[0] == (f"its client has not taken {s.budget.limits.max_unread_bytes + 1} bytes of data-channel "
                          f"messages (the limit is {s.budget.limits.max_unread_bytes})")


def test_a_drain_ends_the_stream_once_the_reply_is_played_and_resume_opens_a_new_one(session):
    s, loop = session
    old = s.stream
    feed(s, loop, event(ev.AUDIO, turn_id="t4", sample_rate=22050, audio=np.full(2205, 0.2, np.float32)))
    s.drain()  # a reply plays: its stream stays open until it has been played
    assert ("close",) not in old.calls and s.channel.sent[-1]["type"] == "server"
    assert s.channel.sent[-1]["state"] == "draining"
    s.mic_chunk(np.zeros(512, np.float32))
    s.channel.handler(json.dumps({"type": "text", "text": "Are you there?"}))
    assert not [c for c in old.calls if c[0] in ("mic", "text")]  # not sent while the model is away
    assert s.channel.sent[-1]["type"] == "error" and "restarting" in s.channel.sent[-1]["message"]
    feed(s, loop, event(ev.DONE, turn_id="t4", interrupted=None))
    loop.run_until_complete(asyncio.sleep(0.3))  # played out: the stream ends, no idle request in its place
    assert s.reply is None and old.calls[-1] == ("close",) and s.idle_rid is None
    assert sum(c[0] == "idle" for c in old.calls) == 1
    loop.run_until_complete(inside(s.resume))  # the new stream's reader is a task of the session's loop
    assert old.calls[-1] == ("reopened",) and s.stream is not old
    assert s.stream.calls == [("idle", 2.0)] and s.channel.sent[-1] == {"type": "server", "state": "ready"}
    s.channel.handler(json.dumps({"type": "text", "text": "Are you there?"}))
    assert ("text", "Are you there?") in s.stream.calls


def test_a_drain_while_listening_ends_the_stream_at_once(session):
    s, loop = session
    s.drain()
    s.drain()  # every poll while not ready: once is enough
    assert s.stream.calls.count(("close",)) == 1 and kinds(s.channel).count("server") == 1
    loop.run_until_complete(s.close())  # the browser leaves during the drain: nothing more to close
    assert s.stream.calls.count(("close",)) == 1
