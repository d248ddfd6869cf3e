"""client.sdk: TurnResult latencies / underruns from synthetic events with controlled clocks, and
`TalkingHeadClient` against an in-process fake of Triton's gRPC service (no real server needed)."""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from client import sdk, turns, wire
from client.sdk import (
    AvatarInfo,
    ConnectionFailed,
    ProtocolError,
    ServerError,
    StreamEvent,
    TalkingHeadClient,
    TurnTimeout,
)
from client.turns import TurnCollector, collect, playback_stats
from export.contract import events as ev
from export.contract import media
from export.contract.events import Event
from export.contract.spec import AVATAR_REGISTRY, TALKING_HEAD

RATE = media.OUTPUT_SAMPLE_RATE


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def audio_event(index: int, start: int, n: int, **kw) -> Event:
    chunk = np.full(n, 0.01 * (index + 1), np.float32)
    data = {"index": index, "sample_rate": RATE, "start_sample": start, "samples": n, "turn_id": "t", "t_ms": 0}
    return Event(ev.AUDIO, data, audio=chunk, **kw)


def video_event(index: int) -> Event:
    return Event(ev.VIDEO, {"index": index, "pts": index, "width": 96, "height": 96, "encoding": "jpeg"},
                 frame=b"jpeg%d" % index)


def stamped(e: Event, sent: float, received: float) -> StreamEvent:
    return StreamEvent(e.type, e.data, audio=e.audio, frame=e.frame, sent_at=sent, received_at=received)


HALF_S = RATE // 2  # samples in a 0.5 s chunk


def scripted_turn() -> list[tuple[float, Event]]:
    """(arrival time relative to the request, event): four 0.5 s audio chunks, the last one late."""
    return [
        (0.2, Event(ev.TRANSCRIPT, {"text": "what time is it"})),
        (0.5, Event(ev.TEXT, {"delta": "It is ", "piece": 0})),
        (0.6, Event(ev.TEXT, {"delta": "noon.", "piece": 0})),
        (0.7, Event(ev.PIECE, {"index": 0, "text": "It is noon."})),
        (1.0, audio_event(0, 0, HALF_S)),
        (1.1, video_event(0)),
        (1.3, audio_event(1, HALF_S, HALF_S)),
        (1.35, video_event(1)),
        (1.9, audio_event(2, 2 * HALF_S, HALF_S)),
        (2.8, audio_event(3, 3 * HALF_S, HALF_S)),
        (2.9, video_event(2)),
        (3.0, Event(ev.DONE, {"reply": "It is noon.", "transcript": "what time is it", "audio_samples": 4 * HALF_S,
                              "video_frames": 3, "timings_ms": {"asr": 120.0}})),
    ]


def check_scripted(r: turns.TurnResult) -> None:
    assert r.transcript == "what time is it"
    assert r.reply == "It is noon."
    assert r.time_to_transcript_s == pytest.approx(0.2)
    assert r.time_to_first_text_s == pytest.approx(0.5)
    assert r.time_to_first_audio_s == pytest.approx(1.0)
    assert r.time_to_first_frame_s == pytest.approx(1.1)
    assert r.total_s == pytest.approx(3.0)
    assert r.audio_s == pytest.approx(2.0, abs=1e-4)
    assert r.real_time_factor == pytest.approx(1.5, rel=1e-3)
    assert r.max_audio_gap_s == pytest.approx(0.9)
    # Playback from 1.0: chunk 1 due 1.5 (came 1.3), chunk 2 due 2.0 (1.9), chunk 3 due 2.5 (2.8): one 0.3 s stall.
    assert r.underrun is True
    assert r.underrun_count == 1
    assert r.stall_s == pytest.approx(0.3, abs=1e-3)
    assert r.min_prebuffer_s == pytest.approx(0.3, abs=1e-3)
    assert r.frames == [b"jpeg0", b"jpeg1", b"jpeg2"]
    assert r.audio.dtype == np.float32 and r.audio.size == 4 * HALF_S
    assert r.sample_rate == RATE
    np.testing.assert_allclose(r.audio[[0, HALF_S, 2 * HALF_S, 3 * HALF_S]], [0.01, 0.02, 0.03, 0.04], rtol=1e-6)
    assert r.server_timings_ms == {"asr": 120.0}


# ---------------------------------------------------------------- TurnResult from synthetic events

def test_collect_with_an_injected_clock():
    clock = FakeClock(100.0)  # the request goes out at 100.0 (collect reads the clock before the first event)

    def events():
        for t, e in scripted_turn():
            clock.t = 100.0 + t
            yield e

    check_scripted(collect(events(), clock=clock))


def test_collect_uses_the_events_own_timestamps():
    sent = 50.0
    stream = [stamped(e, sent, sent + t) for t, e in scripted_turn()]
    # The clock must not matter: the SDK stamps sent_at / received_at itself.
    r = collect(stream, clock=FakeClock(1e6))
    check_scripted(r)


def test_turn_incremental_with_explicit_t0():
    clock = FakeClock()
    turn = TurnCollector(clock=clock, t0=10.0)
    for t, e in scripted_turn():
        clock.t = 10.0 + t
        turn.add(e)
    check_scripted(turn.result())


def test_no_underrun_when_chunks_arrive_faster_than_real_time():
    clock = FakeClock(0.0)
    seq = [(0.4, audio_event(i, i * HALF_S, HALF_S)) for i in range(1)]
    seq += [(0.4 + 0.1 * i, audio_event(i, i * HALF_S, HALF_S)) for i in range(1, 6)]
    seq += [(1.0, Event(ev.DONE, {"reply": "", "transcript": None}))]

    def events():
        for t, e in seq:
            clock.t = t
            yield e

    r = collect(events(), clock=clock)
    assert r.underrun is False and r.underrun_count == 0 and r.stall_s == 0
    assert r.min_prebuffer_s == 0
    assert r.max_audio_gap_s == pytest.approx(0.1)
    assert r.audio_s == pytest.approx(3.0, abs=1e-4)
    assert r.real_time_factor == pytest.approx(1.0 / 3.0, rel=1e-3)
    assert r.time_to_first_text_s is None and r.time_to_first_frame_s is None


def test_chunk_arriving_exactly_when_the_buffer_runs_dry_is_not_an_underrun():
    stats = playback_stats([1.0, 1.5, 2.0], [0.5, 0.5, 0.5])
    assert (stats.underruns, stats.stall_s, stats.min_prebuffer_s) == (0, 0.0, 0.0)
    stats = playback_stats([0.0, 2.0, 2.1], [0.5, 0.5, 0.5])  # one stall of 1.5 s, then on time
    assert stats.underruns == 1 and stats.stall_s == pytest.approx(1.5)
    assert stats.min_prebuffer_s == pytest.approx(1.5)
    assert stats.max_gap_s == pytest.approx(2.0)
    stats = playback_stats([0.0, 1.0, 2.0, 3.0], [0.5] * 4)  # starved after every chunk
    assert stats.underruns == 3 and stats.stall_s == pytest.approx(1.5)
    assert stats.min_prebuffer_s == pytest.approx(1.5)  # chunk 3 due at 1.5, arrives at 3.0
    empty = playback_stats([], [])
    assert (empty.max_gap_s, empty.underruns) == (None, 0)


def test_audio_placed_by_start_sample_and_frames_by_index():
    seq = [audio_event(1, 100, 50), audio_event(0, 0, 100), video_event(1), video_event(0),
           Event(ev.TEXT, {"delta": "a"}), Event(ev.TEXT, {"delta": "b"})]
    r = TurnCollector(clock=FakeClock(), t0=0.0).collect(seq)
    assert r.audio.size == 150
    np.testing.assert_allclose(r.audio[:100], 0.01)
    np.testing.assert_allclose(r.audio[100:], 0.02)
    assert r.frames == [b"jpeg0", b"jpeg1"]
    assert r.reply == "ab"  # no done event: the streamed deltas
    assert r.done is None and r.transcript is None
    assert r.total_s == 0.0  # the last event's time without a done event


def test_text_turn_transcript_comes_from_done():
    r = TurnCollector(clock=FakeClock(), t0=0.0).collect([Event(ev.DONE, {"reply": "hi", "transcript": "hello"})])
    assert (r.transcript, r.reply) == ("hello", "hi")
    assert r.audio.size == 0 and r.real_time_factor is None and r.max_audio_gap_s is None and not r.underrun


def test_summary_is_json_and_table_names_every_latency():
    clock = FakeClock(0.0)

    def events():
        for t, e in scripted_turn():
            clock.t = t
            yield e

    r = collect(events(), clock=clock)
    s = json.loads(json.dumps(r.summary()))
    assert s["time_to_first_audio_s"] == pytest.approx(1.0) and s["frames"] == 3
    assert s["playback_underrun"] is True and s["real_time_factor"] == pytest.approx(1.5, rel=1e-3)
    table = r.format_table()
    for label in ("time to first text", "TTFA", "TTFF", "total", "audio", "real-time factor", "frames",
                  "underrun"):
        assert label in table


# ---------------------------------------------------------------- the SDK against a fake Triton

def _bytes_output(resp, name: str, values: list[bytes]) -> None:
    resp.outputs.add(name=name, datatype="BYTES", shape=[len(values)])
    resp.raw_output_contents.append(serialize_byte_tensor(np.array(values, dtype=object)).item())


def _array_output(resp, name: str, datatype: str, arr: np.ndarray) -> None:
    resp.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
    resp.raw_output_contents.append(arr.tobytes())


def _event_response(request_id: str, event: Event, final: bool = False):
    resp = service_pb2.ModelInferResponse(model_name=TALKING_HEAD.name, id=request_id)
    _bytes_output(resp, wire.TH_EVENT.name, [event.to_json()])
    if event.audio is not None:
        _array_output(resp, wire.TH_AUDIO_CHUNK.name, "FP32", event.audio.astype(np.float32))
    if event.frame is not None:
        _array_output(resp, wire.TH_FRAME.name, "UINT8", np.frombuffer(event.frame, np.uint8))
    resp.parameters[wire.FINAL_RESPONSE_PARAM].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=resp)


def _empty_final(request_id: str):
    resp = service_pb2.ModelInferResponse(model_name=TALKING_HEAD.name, id=request_id)
    resp.parameters[wire.FINAL_RESPONSE_PARAM].bool_param = True
    return service_pb2.ModelStreamInferResponse(infer_response=resp)


def _decode_inputs(request) -> dict[str, object]:
    out = {}
    for inp, raw in zip(request.inputs, request.raw_input_contents):
        if inp.datatype == "BYTES":
            out[inp.name] = [bytes(b) for b in deserialize_bytes_tensor(raw)]
        else:
            dtype = {"FP32": np.float32, "INT32": np.int32, "UINT8": np.uint8}[inp.datatype]
            out[inp.name] = np.frombuffer(raw, dtype).reshape(list(inp.shape))
        out[inp.name + ":dtype"] = inp.datatype
    return out


def reply_events(n_audio: int = 3) -> list[Event]:
    evs = [Event(ev.TEXT, {"delta": "Hi ", "piece": 0, "turn_id": "t", "t_ms": 1}),
           Event(ev.TEXT, {"delta": "there.", "piece": 0, "turn_id": "t", "t_ms": 2}),
           Event(ev.PIECE, {"index": 0, "text": "Hi there.", "turn_id": "t", "t_ms": 3})]
    for i in range(n_audio):
        evs.append(audio_event(i, i * 882, 882))
        evs.append(video_event(i))
    evs.append(Event(ev.DONE, {"reply": "Hi there.", "transcript": "hello", "audio_samples": 882 * n_audio,
                               "video_frames": n_audio, "timings_ms": {}, "turn_id": "t", "t_ms": 9}))
    return evs


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Plays Triton for talking_head (decoupled stream) and avatar_registry; the text input picks a script."""

    def __init__(self):
        self.requests: list[dict] = []
        self.cancelled = threading.Event()
        self.stream_ended = threading.Event()

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name in (TALKING_HEAD.name, AVATAR_REGISTRY.name))

    def ModelInfer(self, request, context):
        inputs = _decode_inputs(request)
        self.requests.append(inputs)
        image = inputs[sdk.AR_IMAGE.name][0]
        if image == b"no face":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no face found in the image")
        resp = service_pb2.ModelInferResponse(model_name=AVATAR_REGISTRY.name, id=request.id)
        _bytes_output(resp, sdk.AR_AVATAR_ID.name, [b"av-%d" % len(image)])
        _array_output(resp, sdk.AR_FACE_BOX.name, "INT32", np.array([1, 2, 30, 40], np.int32))
        _bytes_output(resp, sdk.AR_MESSAGE.name, [b"one face"])
        return resp

    def ModelStreamInfer(self, request_iterator, context):
        completed = threading.Event()  # the client half-closed after its requests were answered

        def on_termination():
            # A cancelled stream's handler may never run again (gRPC stops pulling responses),
            # so cancellation is detected here, not in the handler.
            if not completed.is_set():
                self.cancelled.set()
            self.stream_ended.set()

        context.add_callback(on_termination)
        yield from self._stream(request_iterator, context)
        completed.set()

    def _stream(self, request_iterator, context):
        for request in request_iterator:
            assert request.model_name == TALKING_HEAD.name
            assert request.parameters["triton_enable_empty_final_response"].bool_param
            inputs = _decode_inputs(request)
            self.requests.append(inputs)
            text = (inputs.get(sdk.TH_TEXT.name) or [b"audio"])[0].decode()
            rid = request.id
            if text == "error":
                yield service_pb2.ModelStreamInferResponse(error_message="unknown avatar 'nobody'")
                continue
            if text == "hang":
                yield _event_response(rid, reply_events()[0])
                while context.is_active():
                    time.sleep(0.01)
                return
            evs = reply_events()
            if text == "no done":
                evs = evs[:-1]
            if text == "final on done":
                for e in evs[:-1]:
                    yield _event_response(rid, e)
                yield _event_response(rid, evs[-1], final=True)
                continue
            for e in evs:
                if text == "slow":
                    time.sleep(0.02)
                yield _event_response(rid, e)
            yield _empty_final(rid)


@contextlib.contextmanager
def serving(servicer):
    """`servicer` (a GRPCInferenceServiceServicer) served on a free loopback port: its url for the block."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def fake_triton():
    servicer = FakeTriton()
    with serving(servicer) as url:
        yield servicer, url


def test_ask_text_streams_events_until_the_final_response(fake_triton):
    servicer, url = fake_triton
    with TalkingHeadClient(url) as th:
        th.check_connection()
        stream = th.ask(avatar_id="av-1", text="hello", options={"max_tokens": 8})
        events = list(stream)
    assert [e.type for e in events] == [e.type for e in reply_events()]
    assert all(isinstance(e, StreamEvent) and isinstance(e, Event) for e in events)
    assert all(e.sent_at <= e.received_at for e in events)
    assert all(e.request_id == stream.request_id for e in events)
    audio = [e for e in events if e.type == ev.AUDIO]
    assert all(e.audio.dtype == np.float32 and e.audio.size == 882 for e in audio)
    video = [e for e in events if e.type == ev.VIDEO]
    assert [e.frame for e in video] == [b"jpeg0", b"jpeg1", b"jpeg2"]
    sent = servicer.requests[-1]
    assert sent[sdk.TH_TEXT.name] == [b"hello"]
    assert sent[sdk.TH_AVATAR_ID.name] == [b"av-1"]
    assert json.loads(sent[sdk.TH_OPTIONS.name][0]) == {"max_tokens": 8}
    assert sdk.TH_AUDIO.name not in sent and sdk.TH_SAMPLE_RATE.name not in sent
    # After the final response the stream was closed gracefully, not cancelled.
    assert servicer.stream_ended.wait(5.0) and not servicer.cancelled.is_set()


def test_ask_audio_sends_audio_and_rate_and_collects(fake_triton):
    servicer, url = fake_triton
    speech = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    with TalkingHeadClient(url) as th:
        r = th.turn(avatar_id=AvatarInfo("av-2", (0, 0, 1, 1), ""), audio=speech)
    sent = servicer.requests[-1]
    np.testing.assert_array_equal(sent[sdk.TH_AUDIO.name], speech)
    assert sent[sdk.TH_AUDIO.name + ":dtype"] == sdk.TH_AUDIO.dtype
    assert sent[sdk.TH_SAMPLE_RATE.name].tolist() == [media.INPUT_SAMPLE_RATE]
    assert sent[sdk.TH_SAMPLE_RATE.name + ":dtype"] == sdk.TH_SAMPLE_RATE.dtype
    assert sdk.TH_OPTIONS.name not in sent
    assert r.reply == "Hi there." and r.transcript == "hello"
    assert r.audio.size == 3 * 882 and len(r.frames) == 3
    assert 0 <= r.time_to_first_text_s <= r.time_to_first_audio_s <= r.time_to_first_frame_s <= r.total_s


def test_final_flag_on_the_done_response_ends_the_turn(fake_triton):
    _, url = fake_triton
    with TalkingHeadClient(url) as th:
        events = list(th.ask(avatar_id="a", text="final on done"))
    assert events[-1].type == ev.DONE


def test_server_error_carries_the_servers_message(fake_triton):
    _, url = fake_triton
    with TalkingHeadClient(url) as th:
        with pytest.raises(ServerError, match="unknown avatar 'nobody'") as info:
            list(th.ask(avatar_id="nobody", text="error"))
        assert not isinstance(info.value, ConnectionFailed)
        # The client is still usable afterwards.
        assert list(th.ask(avatar_id="a", text="hello"))[-1].type == ev.DONE


def test_turn_without_done_is_a_protocol_error(fake_triton):
    _, url = fake_triton
    with TalkingHeadClient(url) as th, pytest.raises(ProtocolError, match="without a 'done' event"):
        list(th.ask(avatar_id="a", text="no done"))


def test_stopping_early_cancels_the_stream(fake_triton):
    servicer, url = fake_triton
    with TalkingHeadClient(url) as th:
        for e in th.ask(avatar_id="a", text="hang"):
            assert e.type == ev.TEXT
            break  # the dropped iterator closes: stop_stream(cancel_requests=True)
        assert servicer.cancelled.wait(5.0)
        # and `with` closes explicitly
        servicer.cancelled.clear()
        with th.ask(avatar_id="a", text="hang") as stream:
            next(stream)
        assert servicer.cancelled.wait(5.0)


def test_turn_timeout_cancels_the_stream(fake_triton):
    servicer, url = fake_triton
    with TalkingHeadClient(url, turn_timeout_s=0.3) as th:
        with pytest.raises(TurnTimeout, match="did not finish within 0.3 s"):
            list(th.ask(avatar_id="a", text="hang"))
        assert servicer.cancelled.wait(5.0)


def test_concurrent_turns_on_one_client(fake_triton):
    _, url = fake_triton
    with TalkingHeadClient(url) as th, futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: th.turn(avatar_id="a", text="slow"), range(4)))
    assert all(r.reply == "Hi there." and len(r.frames) == 3 for r in results)


def test_register_avatar(fake_triton):
    servicer, url = fake_triton
    with TalkingHeadClient(url) as th:
        info = th.register_avatar(b"\x89PNG fake image")
        assert info == AvatarInfo("av-15", (1, 2, 30, 40), "one face")
        assert servicer.requests[-1][sdk.AR_IMAGE.name] == [b"\x89PNG fake image"]
        with pytest.raises(ServerError, match="no face found in the image") as err:
            th.register_avatar(b"no face")
        assert not isinstance(err.value, ConnectionFailed)


def test_unreachable_server_is_a_connection_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"127.0.0.1:{port}"
    with TalkingHeadClient(url, turn_timeout_s=10) as th:
        with pytest.raises(ConnectionFailed, match=f"cannot reach Triton at {url}"):
            th.check_connection()
        with pytest.raises(ConnectionFailed, match=f"cannot reach Triton at {url}"):
            list(th.ask(avatar_id="a", text="hello"))
        with pytest.raises(ConnectionFailed):
            th.register_avatar(b"img")


def test_ask_checks_its_arguments_before_sending():
    with TalkingHeadClient("127.0.0.1:1") as th:
        with pytest.raises(ValueError):
            th.ask(avatar_id="a")
        with pytest.raises(ValueError):
            th.ask(avatar_id="a", text="x", audio=np.zeros(10, np.float32))
        with pytest.raises(ValueError):
            th.ask(avatar_id="a", text="x", sample_rate=16000)
        with pytest.raises(ValueError):
            th.ask(avatar_id="a", audio=np.zeros((2, 10), np.float32))
