"""The orchestrator's logic in process, on the real exported graphs (ONNX Runtime), without Triton."""
import asyncio

import numpy as np
import pytest

from ensemble import metrics
from ensemble.avatar import demo_avatar_png, register
from ensemble.errors import DeadlineExceeded, InputError, Overloaded
from ensemble.options import Limits
from ensemble.pipeline import Cancelled
from ensemble.service import Service
from export.contract import events as ev
from export.contract import spec
from export.runtime.batching import onnx_runner


@pytest.fixture(scope="module")
def runners(exported_repository):
    return {s.name: onnx_runner(s, exported_repository / s.name / "1" / "model.onnx") for s in spec.STAGES}


@pytest.fixture
def service(exported_repository, tmp_path):
    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path, limits=Limits(max_sessions=1))
    avatar = register(demo_avatar_png(), max_bytes=10**7, max_pixels=10**8)
    svc.avatars.save(avatar)
    svc.avatar_id = avatar.id
    return svc


def make_infer(runners):
    async def infer(model, inputs, timeout_s=None):
        await asyncio.sleep(0)  # let the other tasks of the turn run, as BLS awaits do
        result = runners[model].run([inputs])[0]
        if isinstance(result, Exception):
            raise result
        return result
    return infer


def text_inputs(service, text="Hello there, how are you?"):
    return {"text": np.array([text.encode()], dtype=object), "avatar_id": np.array([service.avatar_id.encode()], dtype=object)}


def test_text_turn_in_process_streams_and_records_metrics(service, runners):
    events = []
    turn = asyncio.run(service.handle(text_inputs(service), make_infer(runners), events.append))
    kinds = [e.type for e in events]
    assert kinds[-1] == ev.DONE and ev.AUDIO in kinds and ev.VIDEO in kinds
    rec = service.recorder
    assert rec.values[(metrics.TTFA.name, ())] and rec.values[(metrics.TTFF.name, ())]
    assert rec.values[(metrics.STAGE_LATENCY.name, (("stage", "llm"),))]
    assert rec.totals[(metrics.TURNS.name, (("outcome", "ok"),))] == 1
    assert rec.totals[(metrics.ACTIVE_SESSIONS.name, ())] == 0
    assert turn.video_frames == events[-1].data["video_frames"]


def test_session_cap_refuses_at_once(service, runners):
    async def two_turns():
        first = asyncio.ensure_future(service.handle(text_inputs(service), make_infer(runners), lambda e: None))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="server busy"):
            await service.handle(text_inputs(service), make_infer(runners), lambda e: None)
        await first
    asyncio.run(two_turns())
    assert service.recorder.totals[(metrics.REJECTED.name, (("reason", "overloaded"),))] == 1


def test_cancel_stops_the_turn(service, runners):
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 5

    events = []
    with pytest.raises(Cancelled):
        asyncio.run(service.handle(text_inputs(service), make_infer(runners), events.append, is_cancelled=cancelled))
    assert ev.DONE not in [e.type for e in events]
    assert service.active == 0
    assert service.recorder.totals[(metrics.TURNS.name, (("outcome", "cancelled"),))] == 1


@pytest.mark.parametrize("inputs,message", [
    ({}, "avatar_id is required"),
    ({"avatar_id": np.array([b"0123456789abcdef"], dtype=object), "text": np.array([b"hi"], dtype=object)}, "unknown avatar"),
    ({"avatar_id": np.array([b"x"], dtype=object)}, "exactly one of"),
])
def test_bad_requests_name_the_problem(service, runners, inputs, message):
    with pytest.raises(InputError, match=message):
        asyncio.run(service.handle(inputs, make_infer(runners), lambda e: None))


def test_real_checkpoint_front_ends_are_used(tmp_path):
    from export.contract.artifacts import write_orchestrator_artifacts
    from export.contract.text_frontend import arpabet_to_ids

    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("HELLO\tHH AH0 L OW1\n")
    folder = tmp_path / "artifacts"
    write_orchestrator_artifacts(folder, "tiny", 0, chat_template=template, tts_lexicon=lexicon, tts_frontend="arpabet")
    svc = Service.load(folder, avatar_dir=tmp_path / "avatars")
    assert svc.tokenizers.chat_prompt("hi there") == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    ids = svc.tokenizers.tts_ids("hello")
    assert set(arpabet_to_ids(["HH", "AH0", "L", "OW1"])) <= set(ids)


def test_deadline_bounds_every_stage_call_and_fails_the_turn_clearly(service, runners):
    infer = make_infer(runners)
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
