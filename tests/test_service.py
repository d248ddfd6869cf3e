"""The orchestrator's logic in process, on the real exported graphs (ONNX Runtime), without Triton."""
import asyncio
import json

import numpy as np
import pytest

from ensemble import metrics
from ensemble.errors import DeadlineExceeded, InputError, Overloaded, wire_message
from ensemble.options import Limits
from ensemble.pipeline import Cancelled
from ensemble.service import Service, ServiceConfig
from export.contract import events as ev
from export.contract import spec


@pytest.fixture
def service(exported_repository, tmp_path, demo_avatar):
    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path, limits=Limits(max_sessions=1))
    avatar = demo_avatar
    svc.avatars.save(avatar)
    svc.avatar_id = avatar.id
    return svc


def make_infer(stage_runners):
    async def infer(model, inputs, timeout_s=None):
        await asyncio.sleep(0)  # let the other tasks of the turn run, as BLS awaits do
        result = stage_runners[model].run([inputs])[0]
        if isinstance(result, Exception):
            raise result
        return result
    return infer


def text_inputs(service, text="Hello there, how are you?"):
    return {"text": np.array([text.encode()], dtype=object), "avatar_id": np.array([service.avatar_id.encode()], dtype=object)}


def test_text_turn_in_process_streams_and_records_metrics(service, stage_runners):
    events = []
    turn = asyncio.run(service.handle(text_inputs(service), make_infer(stage_runners), events.append))
    kinds = [e.type for e in events]
    assert kinds[-1] == ev.DONE and ev.AUDIO in kinds and ev.VIDEO in kinds
    rec = service.recorder
    assert rec.values[(metrics.TTFA.name, ())] and rec.values[(metrics.TTFF.name, ())]
    assert rec.values[(metrics.STAGE_LATENCY.name, (("stage", "llm"),))]
    assert rec.totals[(metrics.TURNS.name, (("outcome", "ok"),))] == 1
    assert rec.totals[(metrics.ACTIVE_SESSIONS.name, ())] == 0
    assert turn.video_frames == events[-1].data["video_frames"]


@pytest.mark.parametrize("streaming", [True, False])
def test_say_speaks_the_text_as_it_is(service, stage_runners, streaming):
    events, models = [], []
    infer = make_infer(stage_runners)

    async def counted(model, inputs, timeout_s=None):
        models.append(model)
        return await infer(model, inputs, timeout_s)

    text = "Good morning. I am here to help you!"
    inputs = {**text_inputs(service, text),
              "options": np.array([json.dumps({"action": "say", "streaming": streaming}).encode()], dtype=object)}
    asyncio.run(service.handle(inputs, counted, events.append))
    done = events[-1].data
    assert done["reply"] == text and done["audio_samples"] > 0 and done["video_frames"] > 0
    assert [e.data["text"] for e in events if e.type == ev.PIECE] == ["Good morning.", "I am here to help you!"]
    assert "llm" not in models and "tts" in models  # spoken, never generated
    with pytest.raises(InputError, match="action 'say' needs `text`"):
        asyncio.run(service.handle({"avatar_id": inputs["avatar_id"], "options": inputs["options"]}, counted,
                                   events.append))


def test_session_cap_refuses_at_once(service, stage_runners):
    async def two_turns():
        first = asyncio.ensure_future(service.handle(text_inputs(service), make_infer(stage_runners), lambda e: None))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="server busy"):
            await service.handle(text_inputs(service), make_infer(stage_runners), lambda e: None)
        await first
    asyncio.run(two_turns())
    assert service.recorder.totals[(metrics.REJECTED.name, (("reason", "overloaded"),))] == 1


def test_cancel_stops_the_turn(service, stage_runners):
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 5

    events = []
    with pytest.raises(Cancelled):
        asyncio.run(service.handle(text_inputs(service), make_infer(stage_runners), events.append, is_cancelled=cancelled))
    assert ev.DONE not in [e.type for e in events]
    assert service.active == 0
    assert service.recorder.totals[(metrics.TURNS.name, (("outcome", "cancelled"),))] == 1


@pytest.mark.parametrize("inputs,message", [
    ({}, "avatar_id is required"),
    ({"avatar_id": np.array([b"0123456789abcdef"], dtype=object), "text": np.array([b"hi"], dtype=object)}, "unknown avatar"),
    ({"avatar_id": np.array([b"x"], dtype=object)}, "exactly one of"),
])
def test_bad_requests_name_the_problem(service, stage_runners, inputs, message):
    with pytest.raises(InputError, match=message):
        asyncio.run(service.handle(inputs, make_infer(stage_runners), lambda e: None))


def test_a_long_request_id_is_refused_before_any_work(service, stage_runners):
    """Triton echoes the id in every response: a 4 MB id would be copied into each event."""
    calls = []

    async def infer(*a, **k):
        calls.append(a)
        return await make_infer(stage_runners)(*a, **k)

    with pytest.raises(InputError, match="request id has 4000000 bytes; the limit is 128"):
        asyncio.run(service.handle(text_inputs(service), infer, lambda e: None, request_id="x" * 4_000_000))
    assert calls == []


def test_real_checkpoint_front_ends_are_used(tmp_path):
    from export.contract.artifacts import write_orchestrator_artifacts
    from export.contract.text_frontend import arpabet_to_ids

    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("HELLO\tHH AH0 L OW1\n")
    folder = tmp_path / "artifacts"
    write_orchestrator_artifacts(folder, "tiny", 0, chat_template=template, tts_lexicon=lexicon, tts_frontend="arpabet",
                                 speech="fastspeech2")
    svc = Service.load(folder, avatar_dir=tmp_path / "avatars")
    assert svc.tokenizers.chat_prompt("hi there") == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    (u,) = svc.tokenizers.voice.utterances("hello", max_ids=400)
    assert set(arpabet_to_ids(["HH", "AH0", "L", "OW1"])) <= set(u.ids)
    assert {"HH", "AH0", "L", "OW1"} <= set(u.symbols)  # what each id says, for the lip-sync


def test_piper_voice_front_end_gives_ids_and_phonemes(tmp_path):
    from export.contract.artifacts import write_orchestrator_artifacts

    folder = tmp_path / "artifacts"
    write_orchestrator_artifacts(folder, "tiny", 0)  # speech family vits, the default phoneme table
    voice = Service.load(folder, avatar_dir=tmp_path / "avatars").tokenizers.voice
    utterances = voice.utterances("Hello there. Maybe!", max_ids=512)
    assert len(utterances) == 2  # one per sentence, as Piper synthesizes
    u = utterances[0]
    assert len(u.ids) == len(u.symbols) and u.ids[0] == 1 and u.ids[-1] == 2  # Piper's ^ ... $
    assert [p for p in u.symbols if p != "_"][:4] == ["^", "h", "ə", "l"]  # what each id says, pads included
    short = voice.utterances("Hello there, my friend. Maybe!", max_ids=16)
    assert all(len(x.ids) <= 16 and x.ids[0] == 1 and x.ids[-1] == 2 for x in short) and len(short) > 2


def test_deadline_bounds_every_stage_call_and_fails_the_turn_clearly(service, stage_runners):
    infer = make_infer(stage_runners)
    timeouts = []

    async def slow(model, inputs, timeout_s):
        timeouts.append(timeout_s)
        await asyncio.sleep(0.05)
        return await infer(model, inputs, timeout_s)

    inputs = text_inputs(service)
    inputs["options"] = np.array([b'{"deadline_s": 0.3}'], dtype=object)
    with pytest.raises(DeadlineExceeded, match="deadline exceeded: the turn's 0.3 s passed"):
        asyncio.run(service.handle(inputs, slow, lambda e: None))
    assert timeouts and all(0 < t <= 0.3 for t in timeouts)
    assert service.active == 0


def test_frame_lead_paces_the_video_to_the_audio_clock(exported_repository, tmp_path, demo_avatar, stage_runners):
    """frame_lead_s (GPU variants): no frame is made earlier than that lead before its display time, counted
    from the turn's first audio; audio is not paced."""
    import time
    from dataclasses import replace as changed

    lead = 0.3
    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path, limits=Limits(max_sessions=1))
    svc.config = changed(svc.config, frame_lead_s=lead)
    svc.avatars.save(demo_avatar)
    seen = []  # (perf_counter, event)
    inputs = {"text": np.array([b"Good morning. I am here to help you today!"], dtype=object),
              "avatar_id": np.array([demo_avatar.id.encode()], dtype=object),
              "options": np.array([b'{"action": "say"}'], dtype=object)}
    asyncio.run(svc.handle(inputs, make_infer(stage_runners), lambda e: seen.append((time.perf_counter(), e))))
    audio = [(t, e) for t, e in seen if e.type == ev.AUDIO]
    video = [(t, e) for t, e in seen if e.type == ev.VIDEO]
    start = audio[0][0]
    assert len(video) > 25
    early = [e.data["index"] for t, e in video if t < start + e.data["pts"] - lead - 0.02]
    assert not early, f"frames made more than {lead} s before their display time: {early}"
    seconds = sum(e.data["samples"] for _, e in audio) / audio[0][1].data["sample_rate"]
    assert audio[-1][0] - start < seconds - lead  # the audio itself runs ahead of the clock
    assert video[-1][0] - start > video[-1][1].data["pts"] - lead - 0.02


def test_audio_lead_paces_the_speech_to_the_audio_clock(exported_repository, tmp_path, demo_avatar, stage_runners):
    """audio_lead_s (GPU variants): after a turn's first audio, no TTS or vocoder call is made while the audio sent
    is more than that lead ahead of the audio clock; the first audio is not held back, and none comes late."""
    import time
    from dataclasses import replace as changed

    lead = 0.4
    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path, limits=Limits(max_sessions=1))
    svc.config = changed(svc.config, audio_lead_s=lead)
    svc.avatars.save(demo_avatar)
    infer = make_infer(stage_runners)
    calls = []  # (perf_counter, model) of each speech stage call as it is made

    async def spy(model, inputs, timeout_s):
        if model in ("tts", "vocoder"):
            calls.append((time.perf_counter(), model))
        return await infer(model, inputs, timeout_s)

    seen = []  # (perf_counter, event)
    inputs = {"text": np.array([b"Good morning. I am here to help you today, and tomorrow too!"], dtype=object),
              "avatar_id": np.array([demo_avatar.id.encode()], dtype=object),
              "options": np.array([b'{"action": "say"}'], dtype=object)}
    asyncio.run(svc.handle(inputs, spy, lambda e: seen.append((time.perf_counter(), e))))
    audio = [(t, e) for t, e in seen if e.type == ev.AUDIO]
    rate = audio[0][1].data["sample_rate"]
    start = audio[0][0]  # the audio clock's 0
    seconds = sum(e.data["samples"] for _, e in audio) / rate
    assert seconds > 3 * lead and len([m for _, m in calls if m == "tts"]) >= 2
    sent = 0  # samples sent before each call
    for t, model in calls:
        sent = sum(e.data["samples"] for u, e in audio if u < t)
        if t > start:
            assert t >= start + sent / rate - lead - 0.02, f"{model} call made early: {sent / rate:.2f} s sent"
    for t, e in audio:  # each chunk still comes before it plays
        assert t <= start + e.data["start_sample"] / rate + 0.02
    assert audio[-1][0] - start > seconds - 2 * lead  # paced: the last audio comes late in the turn, not at once


def test_prerendering_is_not_paced(exported_repository, tmp_path, demo_avatar, stage_runners, monkeypatch):
    """Pacing is for a viewer's clock: a prerendered answer (nobody watching) makes its frames as fast as it can,
    while a live turn of the same service is paced."""
    from dataclasses import replace as changed

    from ensemble.pipeline import Turn

    leads = []
    pace = Turn._pace

    async def spy(self, index):
        leads.append((self.frame_lead_s, self.audio_lead_s))
        return await pace(self, index)

    monkeypatch.setattr(Turn, "_pace", spy)
    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path, limits=Limits(max_sessions=1))
    svc.config = changed(svc.config, frame_lead_s=0.5, audio_lead_s=2.0)
    svc.avatars.save(demo_avatar)
    ask = {"avatar_id": np.array([demo_avatar.id.encode()], dtype=object), "text": np.array([b"hello"], dtype=object)}
    asyncio.run(svc.handle({**ask, "options": np.array([b'{"action": "prerender"}'], dtype=object)},
                           make_infer(stage_runners), lambda e: None))
    assert leads and set(leads) == {(0.0, 0.0)}
    leads.clear()
    asyncio.run(svc.handle({**ask, "options": np.array([b'{"max_reply_tokens": 4}'], dtype=object)},
                           make_infer(stage_runners), lambda e: None))
    assert leads and set(leads) == {(0.5, 2.0)}


@pytest.mark.parametrize("first", [1, 4])
def test_a_turns_first_lipsync_call_carries_first_frames(exported_repository, tmp_path, demo_avatar, stage_runners,
                                                         first):
    """first_frames (talking_head parameter): the frames of a turn's first lip-sync call; later calls carry
    lipsync_batch; every frame slot is still made once, in order."""
    from dataclasses import replace as changed

    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path, limits=Limits(max_sessions=1))
    svc.config = changed(svc.config, first_frames=first)
    svc.avatars.save(demo_avatar)
    infer, sizes = make_infer(stage_runners), []

    async def spy(model, inputs, timeout_s=None):
        if model in (spec.LIPSYNC.name, spec.LIPSYNC_FRAMES.name):
            sizes.append(len(inputs["visemes"]))
        return await infer(model, inputs, timeout_s)

    events = []
    inputs = {"text": np.array([b"Good morning. I am here to help you today!"], dtype=object),
              "avatar_id": np.array([demo_avatar.id.encode()], dtype=object),
              "options": np.array([b'{"action": "say", "lipsync_batch": 6}'], dtype=object)}
    asyncio.run(svc.handle(inputs, spy, events.append))
    video = [e.data["index"] for e in events if e.type == ev.VIDEO]
    assert sizes[0] == first and all(n <= 6 for n in sizes[1:-1]) and max(sizes[1:]) == 6, sizes
    assert video == list(range(len(video))) and len(video) == sum(sizes) > 25


@pytest.mark.parametrize("words", [2, 4])
def test_a_replys_first_piece_is_cut_at_first_piece_words(exported_repository, tmp_path, demo_avatar, stage_runners,
                                                          words):
    """first_piece_words (talking_head parameter): a reply's first TTS piece ends after that many words where no
    punctuation comes sooner; the later pieces are cut as before, and every word is spoken once, in order."""
    from dataclasses import replace as changed

    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path, limits=Limits(max_sessions=1))
    svc.config = changed(svc.config, first_piece_words=words)
    svc.avatars.save(demo_avatar)
    text = "Good morning to you and welcome back to the studio where we talk about the weather every day."
    events = []
    inputs = {"text": np.array([text.encode()], dtype=object),
              "avatar_id": np.array([demo_avatar.id.encode()], dtype=object),
              "options": np.array([b'{"action": "say"}'], dtype=object)}
    asyncio.run(svc.handle(inputs, make_infer(stage_runners), events.append))
    pieces = [e.data["text"] for e in events if e.type == ev.PIECE]
    assert pieces[0] == " ".join(text.split()[:words]), pieces
    assert all(len(p.split()) > words for p in pieces[1:]), pieces
    assert " ".join(pieces) == text
    assert any(e.type == ev.AUDIO for e in events) and events[-1].type == ev.DONE


@pytest.mark.parametrize("key, bad, good, default", [
    ("first_frames", ("0", "65", "two"), 8, 1),  # frames of a first lip-sync call: 1..64
    ("first_piece_words", ("1", "17", "four"), 2, 4),  # the segmenter's bounds: min_words..max_words
])
def test_integer_parameters_are_checked_against_their_bounds(key, bad, good, default):
    for value in bad:
        with pytest.raises(ValueError, match=key):
            ServiceConfig.from_parameters({key: value})
    assert getattr(ServiceConfig.from_parameters({key: str(good)}), key) == good
    assert getattr(ServiceConfig.from_parameters({}), key) == default


def test_llm_chunk_tokens_is_bounded_by_what_the_llm_serves():
    for bad in ("0", "65", "x"):
        with pytest.raises(ValueError, match="llm_chunk_tokens"):
            ServiceConfig.from_parameters({"llm_chunk_tokens": bad})
    assert ServiceConfig.from_parameters({"llm_chunk_tokens": str(spec.MAX_CHUNK_TOKENS)}).llm_chunk_tokens == 64
    assert ServiceConfig.from_parameters({}).llm_chunk_tokens == 1  # opt-in: one request a token


def test_error_messages_are_sent_as_text_any_response_carries():
    """A lone surrogate (a client's JSON escape) echoed in an error cannot be encoded as UTF-8: the orchestrator's
    glue sends every error message through wire_message, which writes it as its escape; other text is unchanged."""
    assert wire_message("unknown option(s) \ud800; known: …") == "unknown option(s) \\ud800; known: …"
    assert wire_message(ValueError("plain text, accents é")) == "plain text, accents é"
    assert wire_message("\udfff x").encode("utf-8") == b"\\udfff x"


def test_the_llm_sampling_chunks_itself_gives_the_same_reply_in_fewer_requests(exported_repository, tmp_path,
                                                                                demo_avatar, stage_runners):
    """llm_chunk_tokens (talking_head parameter, where the llm keeps its sessions): the session-keyed llm (on the
    CPU here, the tiny export's own weights) samples 4 tokens a request with the turn's seed: the reply and its
    text events are the token-by-token ones, in a quarter of the llm requests."""
    from dataclasses import replace as changed

    from export.contract.artifacts import manifest_preset, read_manifest
    from export.runtime.torch_runtime import torch_runner

    manifest = read_manifest(exported_repository / "talking_head" / "1")
    llm = torch_runner(spec.LLM, manifest_preset(manifest), int(manifest["seed"]), "cpu", "fp32", sessions=True)
    infer = make_infer(stage_runners)

    def turn(chunk: int):
        svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path / str(chunk))
        svc.config = changed(svc.config, session_stages=frozenset({spec.LLM.name}), llm_chunk_tokens=chunk)
        svc.avatars.save(demo_avatar)
        llm_requests, events = [], []

        async def routed(model, inputs, timeout_s=None):
            if model != spec.LLM.name:
                return await infer(model, inputs, timeout_s)
            llm_requests.append(inputs)
            (out,) = llm.run([inputs])
            if isinstance(out, Exception):
                raise out
            return out

        inputs = {"text": np.array([b"Tell me about the sea."], dtype=object),
                  "avatar_id": np.array([demo_avatar.id.encode()], dtype=object),
                  "options": np.array([b'{"temperature": 0.7, "seed": 5, "max_reply_tokens": 20, "ignore_eos": true}'],
                                      dtype=object)}
        asyncio.run(svc.handle(inputs, routed, events.append))
        text = [e.data["delta"] for e in events if e.type == ev.TEXT]
        done = [e for e in events if e.type == ev.DONE][0].data
        return done["reply"], "".join(text), len([r for r in llm_requests if "session_end" not in r])

    one_reply, one_text, one_calls = turn(1)
    reply, text, calls = turn(4)
    assert reply == one_reply and text == one_text == reply and reply, (reply, one_reply)
    assert (one_calls, calls) == (20, 5)  # the prompt and a step for each token but the last; 20 / 4 chunks
    assert len(llm.table) == 0  # each turn released its session


def test_a_hung_espeak_ng_holds_its_own_turn_never_the_event_loop(service, stage_runners):
    """espeak-ng is called off the orchestrator's event loop: while one turn waits on it (a new child after a crash,
    or a hung one until its timeout), every other session's audio, video and events run on."""
    import os
    import signal
    import time

    from export.contract.espeak_process import EspeakFailed

    phonemizer = service.tokenizers.voice.phonemizer
    espeak = phonemizer.espeak
    espeak("Hello.", phonemizer.voice.espeak_voice)  # its child is up
    os.kill(espeak._proc.pid, signal.SIGSTOP)  # as an espeak-ng that never returns
    espeak.timeout_s = 1.0
    gaps = []
    inputs = {**text_inputs(service, "Good morning."),
              "options": np.array([json.dumps({"action": "say"}).encode()], dtype=object)}

    async def say_beside_a_ticker():
        async def ticker():  # the loop's lag: how long a 10 ms sleep really takes
            while True:
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                gaps.append(time.perf_counter() - t)

        task = asyncio.ensure_future(ticker())
        try:
            with pytest.raises(EspeakFailed, match="took over 1 s on a 13-character text"):
                await service.handle(inputs, make_infer(stage_runners), lambda e: None)
        finally:
            task.cancel()

    asyncio.run(say_beside_a_ticker())
    assert len(gaps) > 50 and max(gaps) < 0.5, f"the loop stalled {max(gaps):.2f} s"


def test_turns_waiting_on_a_hung_espeak_ng_leave_the_default_executor_free(exported_repository, tmp_path, demo_avatar,
                                                                         stage_runners):
    """espeak-ng's calls run on the service's own one thread (model.py sets it): turns waiting on a hung child queue
    there, not on the loop's default executor, whose threads other work (an avatar's file write) still gets at once.
    With the default executor (cores + 4 threads) 8 waiting turns filled it for the child's whole timeout."""
    import os
    import signal
    import time
    from concurrent.futures import ThreadPoolExecutor

    from export.contract.espeak_process import EspeakFailed

    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path, limits=Limits(max_sessions=16))
    svc.avatars.save(demo_avatar)
    svc.avatar_id = demo_avatar.id
    svc.speech_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
    phonemizer = svc.tokenizers.voice.phonemizer
    espeak = phonemizer.espeak
    espeak("Hello.", phonemizer.voice.espeak_voice)  # its child is up
    os.kill(espeak._proc.pid, signal.SIGSTOP)  # as an espeak-ng that never returns
    espeak.timeout_s = 2.0
    inputs = {**text_inputs(svc, "Good morning."),
              "options": np.array([json.dumps({"action": "say", "video": False}).encode()], dtype=object)}

    async def turns_and_a_probe() -> tuple[float, list]:
        turns = [asyncio.ensure_future(svc.handle(inputs, make_infer(stage_runners), lambda e: None))
                 for _ in range(8)]
        await asyncio.sleep(0.3)  # every turn is waiting on espeak-ng now
        t = time.perf_counter()
        await asyncio.to_thread(lambda: None)  # as restore_avatar's file write
        waited = time.perf_counter() - t
        return waited, await asyncio.gather(*turns, return_exceptions=True)

    try:
        waited, results = asyncio.run(turns_and_a_probe())
    finally:
        svc.speech_worker.shutdown(wait=False)
    print(f"\na default-executor call beside 8 turns waiting on a hung espeak-ng: {waited * 1000:.1f} ms")
    assert waited < 0.5, f"the default executor was busy for {waited:.2f} s"
    failed = [r for r in results if isinstance(r, EspeakFailed)]
    assert len(failed) == 1 and not [r for r in results if isinstance(r, Exception) and r not in failed], results
