"""The SDK's typed events, typed stream errors and the asyncio client, against the fake Triton of
test_client_collect.py (a real gRPC server playing talking_head)."""
from __future__ import annotations

import asyncio
import dataclasses

import grpc
import numpy as np
import pytest
from test_client_collect import (  # noqa: F401  (fake_triton: a fixture)
    FakeTriton,
    _decode_inputs,
    audio_event,
    fake_triton,
    reply_events,
    serving,
)
from tritonclient.grpc import service_pb2

from client import events as te
from client import wire
from client.aio import AsyncTalkingHeadClient
from client.sdk import ServerError, TalkingHeadClient, TurnTimeout
from export.contract import events as ev
from export.contract.events import Event

# ---------------------------------------------------------------- typed events


def test_a_dataclass_per_event_type_of_the_contract():
    assert set(te.EVENT_CLASSES) == set(ev.TYPES)
    for kind, cls in te.EVENT_CLASSES.items():
        assert dataclasses.is_dataclass(cls) and cls.TYPE == kind and issubclass(cls, te.TurnEvent)


def test_typed_keeps_the_raw_dict_and_the_payloads():
    pcm = np.ones(4, np.float32)
    a = te.typed(Event(ev.AUDIO, {"turn_id": "t", "t_ms": 5.5, "index": 2, "sample_rate": 22050, "start_sample": 8,
                                  "samples": 4, "new_field": 1}, audio=pcm))
    assert isinstance(a, te.AudioEvent) and a.type == ev.AUDIO
    assert (a.turn_id, a.t_ms, a.index, a.sample_rate, a.start_sample, a.samples) == ("t", 5.5, 2, 22050, 8, 4)
    assert a.pcm is pcm and a.raw["new_field"] == 1 and a.raw["type"] == ev.AUDIO
    v = te.typed(Event(ev.VIDEO, {"turn_id": "t", "t_ms": 6, "index": 3, "pts": 0.12, "width": 96, "height": 96,
                                  "encoding": "jpeg", "emotion": "happy"}, frame=b"jpg"))
    assert isinstance(v, te.VideoEvent) and v.jpeg == b"jpg" and v.pts == 0.12 and v.emotion == "happy"
    d = te.typed(Event(ev.DONE, {"turn_id": "t", "t_ms": 9, "reply": "Hi.", "interrupted": "barge_in",
                                 "timings_ms": {"first_audio": 3.0}}))
    assert isinstance(d, te.DoneEvent) and d.interrupted == "barge_in" and d.timings_ms == {"first_audio": 3.0}
    vad = te.typed(Event(ev.VAD, {"turn_id": None, "t_ms": 0, "state": "turn_end", "t_s": 1.2, "silence_ms": 500}))
    assert isinstance(vad, te.VadEvent) and vad.silence_ms == 500 and vad.speech_s is None
    with pytest.raises(ValueError):
        te.typed(Event("dance", {}))


def test_the_sync_stream_yields_typed_events(fake_triton):
    _, url = fake_triton
    with TalkingHeadClient(url) as th:
        events = list(th.ask(avatar_id="a", text="hello").typed())
    assert [type(e).TYPE for e in events] == [e.type for e in reply_events()]
    assert isinstance(events[-1], te.DoneEvent) and events[-1].reply == "Hi there."
    audio = [e for e in events if isinstance(e, te.AudioEvent)]
    assert all(e.pcm.size == 882 and e.latency_s >= 0 for e in audio)


# ---------------------------------------------------------------- stream errors with their gRPC status

@pytest.mark.parametrize("message,status", [
    ("invalid input: option frame_stride=9 is out of range 1..4", "INVALID_ARGUMENT"),
    ("server busy: 32 turns in flight (limit 32); retry later", "UNAVAILABLE"),
    ("turn cancelled by the client", "CANCELLED"),
    ("internal error: StageError: vocoder: boom", "INTERNAL"),
    ("deadline exceeded: the turn's 0.3 s passed before llm", "DEADLINE_EXCEEDED"),
    ("something else", None),
])
def test_status_from_the_orchestrators_wording(message, status):
    """Without a status (an older server, a stream without the header) the orchestrator's wording decides."""
    assert ServerError(message).status == status


def test_status_names_are_plain_grpc_code_names():
    assert ServerError("x", status="StatusCode.UNAVAILABLE").status == "UNAVAILABLE"
    assert ServerError("x", status=grpc.StatusCode.INVALID_ARGUMENT).status == "INVALID_ARGUMENT"
    assert ServerError("server busy", status="StatusCode.UNAVAILABLE").retryable


class StatusTriton(FakeTriton):
    """As Triton 2.51 without the `triton_grpc_error` header: a failed request's error is a message inside the
    stream, and the stream stays open for the next request (with the header Triton closes the stream with the
    error's status, and refusals at that rate abort tritonserver: RELIABILITY.md, "Overload")."""

    STATUS = {"bad": (grpc.StatusCode.INVALID_ARGUMENT, "invalid input: option top_k=0 is out of range 1..1000"),
              "busy": (grpc.StatusCode.UNAVAILABLE, "server busy: 4 turns in flight (limit 4); retry later")}

    def ModelStreamInfer(self, request_iterator, context):
        header = dict(context.invocation_metadata()).get("triton_grpc_error")
        self.headers.append(header)
        for request in request_iterator:
            text = (_decode_inputs(request).get("text") or [b""])[0].decode()
            if text in self.STATUS:
                code, message = self.STATUS[text]
                if header == "true":
                    context.abort(code, message)
                yield service_pb2.ModelStreamInferResponse(error_message=message)
                continue
            yield from self._stream(iter([request]), context)


@pytest.fixture
def status_triton():
    servicer = StatusTriton()
    servicer.headers = []
    with serving(servicer) as url:
        yield servicer, url


@pytest.mark.parametrize("text,status", [("bad", "INVALID_ARGUMENT"), ("busy", "UNAVAILABLE")])
def test_a_failed_turn_carries_its_status_and_leaves_the_stream_open(status_triton, text, status):
    servicer, url = status_triton
    with TalkingHeadClient(url) as th:
        with pytest.raises(ServerError) as info:
            list(th.ask(avatar_id="a", text=text))
        assert th.turn(avatar_id="a", text="hello").reply == "Hi there."
    assert info.value.status == status and info.value.message == StatusTriton.STATUS[text][1]
    assert servicer.headers == [None], "one stream for both turns, opened without triton_grpc_error"
    assert not servicer.cancelled.is_set(), "a failed turn has nothing left to cancel"


# ---------------------------------------------------------------- asyncio

def test_async_client_streams_typed_events_and_collects_turns(fake_triton):
    _, url = fake_triton

    async def main():
        async with AsyncTalkingHeadClient(url) as th:
            await th.check_connection()
            avatar = await th.register_avatar(b"face")
            async with th.ask(avatar_id=avatar, text="hello") as stream:
                events = [e async for e in stream]
            results = await asyncio.gather(*(th.turn(avatar_id="a", text="hello") for _ in range(3)))
        return avatar, events, results

    avatar, events, results = asyncio.run(main())
    assert avatar.id == "av-4" and avatar.face_box == (1, 2, 30, 40)
    assert [e.type for e in events] == [e.type for e in reply_events()]
    assert isinstance(events[-1], te.DoneEvent) and isinstance(events[3], te.AudioEvent)
    assert all(r.reply == "Hi there." and r.audio.size == 3 * 882 and len(r.frames) == 3 for r in results)


def test_async_errors_timeouts_and_early_close(status_triton, fake_triton):
    status_servicer, url = status_triton
    servicer, hang_url = fake_triton

    async def main():
        async with AsyncTalkingHeadClient(url) as th:
            with pytest.raises(ServerError) as bad:
                await th.turn(avatar_id="a", text="bad")
            assert (await th.turn(avatar_id="a", text="hello")).reply == "Hi there."
        async with AsyncTalkingHeadClient(hang_url, turn_timeout_s=0.3) as th:
            with pytest.raises(TurnTimeout):
                await th.turn(avatar_id="a", text="hang")
            async with th.ask(avatar_id="a", text="hang") as stream:
                first = await stream.__anext__()  # then leave the block before the turn ends
        return bad.value, first

    bad, first = asyncio.run(main())
    assert bad.status == "INVALID_ARGUMENT" and bad.message.startswith("invalid input:")
    assert status_servicer.headers == [None], "the failed turn's stream carried the next turn"
    assert not status_servicer.cancelled.is_set()
    assert isinstance(first, te.TextEvent)
    assert servicer.cancelled.wait(5.0), "closing an unfinished async turn cancels it on the server"


def test_wire_helpers_build_the_same_requests_for_both_clients():
    inputs = wire.turn_inputs(avatar_id="a", text="hi", options={"video": False})
    assert [i.name() for i in inputs] == ["text", "avatar_id", "options"]
    with pytest.raises(ValueError, match="exactly one"):
        wire.turn_inputs(avatar_id="a")
    assert [i.name() for i in wire.turn_inputs(avatar_id="a", audio=np.zeros(16, np.float32))] == \
        ["audio", "sample_rate", "avatar_id"]
    assert audio_event(0, 0, 4).type == ev.AUDIO
