"""Conversation features through the real embedded tritonserver and the client SDK: barge-in, cancel,
the client closing its stream, microphone streaming with turn detection, the answer cache, idle motion."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_metrics import metric

from client import media
from deploy.admin import admin_headers
from export.contract import events as ev
from export.contract import media as C
from export.contract import spec

pytestmark = pytest.mark.server

LONG = {"ignore_eos": True, "max_reply_tokens": 200}


def stage_executions(server) -> dict[str, int]:
    with grpcclient.InferenceServerClient(server.options.grpc_url) as c:
        stats = c.get_inference_statistics(headers=admin_headers(server.options.admin_key), as_json=True)
    return {m["name"]: int(m.get("execution_count", 0)) for m in stats["model_stats"] if m["name"] in spec.BY_NAME}


class Background:
    """A turn streamed on its own thread, keeping (arrival time, event)."""

    def __init__(self, stream):
        self.items, self.error = [], None
        self.first_audio = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream):
        try:
            for e in stream:
                self.items.append((time.perf_counter(), e))
                if e.type == ev.AUDIO:
                    self.first_audio.set()
        except Exception as e:  # reported by the test
            self.error = e
        self.first_audio.set()

    def done(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive() and self.error is None, self.error
        return next(((t, e.data) for t, e in self.items if e.type == ev.DONE), (None, None))


def test_barge_in_by_a_new_turn_on_another_stream(client, avatar):
    a = Background(client.ask(avatar_id=avatar.id, text="Tell me a long story.", options={"session": "bi", **LONG}))
    assert a.first_audio.wait(60)
    t_new = time.perf_counter()
    b = client.turn(avatar_id=avatar.id, text="Stop. What time is it?", options={"session": "bi"})
    t_done, done = a.done()
    assert done["interrupted"] == "barge_in" and a.items[-1][1].type == ev.DONE
    print(f"\nbarge-in: new turn sent -> interrupted turn's done at the client in {(t_done - t_new) * 1000:.0f} ms")
    assert b.done["interrupted"] is None and b.audio.size > 0


def test_cancel_stops_the_sessions_reply(client, avatar):
    a = Background(client.ask(avatar_id=avatar.id, text="Tell me a long story.", options={"session": "cx", **LONG}))
    assert a.first_audio.wait(60)
    t_cancel = time.perf_counter()
    ack = client.cancel("cx")
    t_done, done = a.done()
    assert ack["interrupted_turn"] == done["turn_id"] and done["interrupted"] == "cancel"
    print(f"\ncancel sent -> interrupted turn's done at the client in {(t_done - t_cancel) * 1000:.0f} ms")
    assert client.cancel("cx")["interrupted_turn"] is None  # nothing left in flight


def test_another_client_cannot_touch_a_session(server, client, avatar):
    """A second client that knows the session id (but not the owner's session_token) reaches its own session of
    that id: its cancel interrupts nothing, its turn runs beside the owner's, and the owner's reply runs to its end."""
    from client.sdk import TalkingHeadClient

    a = Background(client.ask(avatar_id=avatar.id, text="Tell me a long story.",
                              options={"session": "mine", "ignore_eos": True, "max_reply_tokens": 48}))
    assert a.first_audio.wait(60)
    with TalkingHeadClient(server.options.grpc_url, turn_timeout_s=60) as intruder:
        assert intruder.session_token != client.session_token
        assert intruder.cancel("mine")["interrupted_turn"] is None
        theirs = intruder.turn(avatar_id=avatar.id, text="Hi.", options={"session": "mine", "max_reply_tokens": 4})
        assert theirs.done["interrupted"] is None
    _, done = a.done()
    assert done["interrupted"] is None and done["video_frames"] > 0


def test_client_closing_its_stream_frees_everything(server, client, avatar):
    with client.ask(avatar_id=avatar.id, text="Tell me a long story.", options=LONG) as stream:
        for e in stream:
            if e.type == ev.AUDIO:
                break  # leaving the with block cancels the stream
    deadline = time.time() + 10
    while metric(server, "talking_head_active_sessions") > 0:
        assert time.time() < deadline, "the cancelled turn is still active"
        time.sleep(0.1)
    time.sleep(0.5)  # stage calls already queued finish
    before = stage_executions(server)
    time.sleep(1.5)
    assert stage_executions(server) == before, "stage models kept working for a cancelled turn"
    assert client.turn(avatar_id=avatar.id, text="Hello again.").done is not None


def test_a_clients_turns_share_one_kept_stream(server, avatar, monkeypatch):
    """The SDK keeps a turn's stream open for the next turn (client.stream: no stream set-up per turn, the most of
    what the front door adds to a turn's first response); a turn left early ends its stream and the next turn opens
    another, and so does a turn after the stream sat idle for keep_stream_s (an open stream keeps Triton from
    unloading talking_head). A refused turn keeps it: its error is the turn's final response, with its status
    (RELIABILITY.md, "Overload"). Each turn still gets only its own events."""
    from client.sdk import ServerError, TalkingHeadClient

    opened = []
    start_stream = grpcclient.InferenceServerClient.start_stream
    monkeypatch.setattr(grpcclient.InferenceServerClient, "start_stream",
                        lambda self, *a, **k: (opened.append(1), start_stream(self, *a, **k))[1])
    short = {"max_reply_tokens": 4, "session": "kept"}
    with TalkingHeadClient(server.options.grpc_url, turn_timeout_s=120) as c:
        turns = [c.turn(avatar_id=avatar.id, text=t, options=short) for t in ("Hi.", "Hello.", "Hey there.")]
        assert len(opened) == 1, f"{len(opened)} streams opened for three turns"
        assert all(t.done is not None and t.done["interrupted"] is None and t.audio.size for t in turns)
        assert len({t.done["turn_id"] for t in turns}) == 3, "a turn took another turn's done"
        with c.ask(avatar_id=avatar.id, text="Tell me a long story.", options={**LONG, "session": "kept"}) as s:
            next(e for e in s if e.type == ev.AUDIO)  # left early: the turn is cancelled with its stream
        assert c.turn(avatar_id=avatar.id, text="Hi.", options=short).done is not None
        assert len(opened) == 2
        with pytest.raises(ServerError, match="top_k") as refused:
            c.turn(avatar_id=avatar.id, text="Hi.", options={**short, "top_k": 2.5})
        assert refused.value.status == "INVALID_ARGUMENT"
        assert c.turn(avatar_id=avatar.id, text="Hello.", options=short).done is not None
        assert len(opened) == 2, "the refused turn's stream did not carry the next turn"
        time.sleep(3.0)  # idle past keep_stream_s (2 s): the stream is ended (Triton could unload)
        assert c.turn(avatar_id=avatar.id, text="Hi.", options=short).done is not None
        assert len(opened) == 3


def test_an_async_clients_turns_share_one_kept_stream(server, avatar, monkeypatch):
    """The asyncio SDK keeps a turn's stream open for the next turn as the sync one does (client/aio_stream.py): one
    stream for three turns; a turn left early and idle past keep_stream_s each end theirs, a refused turn keeps it."""
    import asyncio

    import tritonclient.grpc.aio as grpcaio

    from client.aio import AsyncTalkingHeadClient
    from client.sdk import ServerError

    opened = []
    stream_infer = grpcaio.InferenceServerClient.stream_infer
    monkeypatch.setattr(grpcaio.InferenceServerClient, "stream_infer",
                        lambda self, *a, **k: (opened.append(1), stream_infer(self, *a, **k))[1])
    short = {"max_reply_tokens": 4, "session": "kept-aio"}

    async def main() -> None:
        async with AsyncTalkingHeadClient(server.options.grpc_url, turn_timeout_s=120, keep_stream_s=1.0) as c:
            turns = [await c.turn(avatar_id=avatar.id, text=t, options=short) for t in ("Hi.", "Hello.", "Hey.")]
            assert len(opened) == 1, f"{len(opened)} streams opened for three turns"
            assert all(t.done is not None and t.done["interrupted"] is None and t.audio.size for t in turns)
            assert len({t.done["turn_id"] for t in turns}) == 3, "a turn took another turn's done"
            async with c.ask(avatar_id=avatar.id, text="Tell me a long story.", options={**LONG, **short}) as s:
                async for e in s:
                    if e.type == ev.AUDIO:
                        break  # left early: the turn is cancelled with its stream
            assert (await c.turn(avatar_id=avatar.id, text="Hi.", options=short)).done is not None
            assert len(opened) == 2
            with pytest.raises(ServerError, match="top_k") as refused:
                await c.turn(avatar_id=avatar.id, text="Hi.", options={**short, "top_k": 2.5})
            assert refused.value.status == "INVALID_ARGUMENT"
            assert (await c.turn(avatar_id=avatar.id, text="Hello.", options=short)).done is not None
            assert len(opened) == 2, "the refused turn's stream did not carry the next turn"
            await asyncio.sleep(2.0)  # idle past keep_stream_s: the stream is ended (Triton could unload)
            assert (await c.turn(avatar_id=avatar.id, text="Hi.", options=short)).done is not None
            assert len(opened) == 3

    asyncio.run(main())


@pytest.fixture(scope="module")
def two_questions(tmp_path_factory):
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is required (make test installs it)"
    wav = tmp_path_factory.mktemp("mic") / "q.wav"
    subprocess.run([espeak, "-w", str(wav), "Please tell me a story about the sea."], check=True)
    q = media.read_audio(wav, rate=C.INPUT_SAMPLE_RATE)
    pause = np.zeros(C.INPUT_SAMPLE_RATE, np.float32)
    return np.concatenate([pause * 0.5, q, pause, q, pause])


def test_microphone_stream_detects_turns_and_replies(client, avatar, two_questions):
    events = list(client.microphone(session="mic", avatar_id=avatar.id, audio=two_questions, realtime=False,
                                    options={"min_silence_ms": 400, "max_reply_tokens": 8}))
    vad = [e.data["state"] for e in events if e.type == ev.VAD]
    assert vad == ["speech_start", "turn_end", "speech_start", "turn_end"]
    dones = [e.data for e in events if e.type == ev.DONE]
    assert len(dones) == 2 and all(d["transcript"] is not None for d in dones)
    assert sum(e.type == ev.AUDIO for e in events) > 2


def test_input_ending_mid_turn_still_gets_its_reply(client, avatar, two_questions):
    """A stream that ends before the silence that would end the turn: the last chunk says end_of_input, the turn
    ends there (its turn_end says so) and is answered; the session's detector starts afresh afterwards."""
    sr = C.INPUT_SAMPLE_RATE
    q = (two_questions.size - 5 * sr // 2) // 2  # the fixture: 0.5 s pause, q, 1 s, q, 1 s
    tail_cut = two_questions[: sr // 2 + q - sr // 10]  # the first question without its last 0.1 s: ends on speech
    for _ in range(2):  # the second run of the same session starts with a clean detector
        events = list(client.microphone(session="flush", avatar_id=avatar.id, audio=tail_cut, realtime=False,
                                        options={"min_silence_ms": 400, "max_reply_tokens": 8}))
        ends = [e.data for e in events if e.type == ev.VAD and e.data["state"] == "turn_end"]
        assert len(ends) == 1 and ends[0].get("end_of_input") is True
        assert ends[0]["t_s"] <= tail_cut.size / C.INPUT_SAMPLE_RATE + 0.05  # no audio of an earlier run in it
        assert [e.data["interrupted"] for e in events if e.type == ev.DONE] == [None]


def test_microphone_chunk_at_the_wrong_rate_is_refused(client, avatar):
    from client.sdk import ServerError

    with pytest.raises(ServerError, match="expected 16000"):
        list(client._run_stream(iter([[  # one raw chunk at 48 kHz
            *[i for i in _mic_inputs(avatar.id, rate=48000)]]]), "bad", 30.0, 0.0))


def _mic_inputs(avatar_id, rate):
    from client.wire import TH_AUDIO, TH_AVATAR_ID, TH_OPTIONS, TH_SAMPLE_RATE, infer_input
    from export.contract.spec import TALKING_HEAD

    return [infer_input(TALKING_HEAD, TH_AUDIO, np.zeros(960, np.float32)),
            infer_input(TALKING_HEAD, TH_SAMPLE_RATE, [rate]), infer_input(TALKING_HEAD, TH_AVATAR_ID, [avatar_id]),
            infer_input(TALKING_HEAD, TH_OPTIONS, ['{"action": "mic", "session": "bad", "session_token": "a-test-token-0123456"}'])]


def test_cached_exchange_is_served_at_once(server, client, avatar):
    hits = metric(server, "talking_head_cache_hits_total")
    assert client.prerender(avatar_id=avatar.id, text="Good morning!") in (["Good morning!"], [])
    first = client.turn(avatar_id=avatar.id, text="good morning")
    again = client.turn(avatar_id=avatar.id, text="Good morning.")
    assert metric(server, "talking_head_cache_hits_total") == hits + 2
    assert again.reply == first.reply and np.array_equal(again.audio, first.audio) and again.frames == first.frames
    print(f"\ncached exchange: first audio after {again.time_to_first_audio_s * 1000:.1f} ms")


def test_idle_streams_moving_frames(client, avatar):
    t = time.perf_counter()
    events = list(client.idle(avatar_id=avatar.id, seconds=1.0))
    frames = [media.decode_jpeg(e.frame).astype(np.int16) for e in events if e.type == ev.VIDEO]
    assert len(frames) == 25 and time.perf_counter() - t >= 0.9
    assert max(np.abs(f - frames[0]).mean() for f in frames[1:]) > 0.2
    # the next request continues the sway: it starts where the last frame left off, not at the pose of t = 0
    (later,) = [media.decode_jpeg(e.frame).astype(np.int16) for e in client.idle(
        avatar_id=avatar.id, seconds=0.04, options={"idle_from_s": 0.96}) if e.type == ev.VIDEO]
    assert np.abs(later - frames[24]).mean() < np.abs(later - frames[0]).mean()
