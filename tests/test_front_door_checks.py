"""The front door's checks that need no server (deploy/front_door): API keys, session tokens, quotas, the
options it owns and the requests it refuses before anything goes upstream. tests/test_front_door.py runs the door
in front of the real server."""
from __future__ import annotations

import asyncio
import json
import struct
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb

from client.wire import turn_inputs
from deploy.front_door.checks import FINAL, Refused, check_request, mic_seconds, one_bytes_element, own_options
from deploy.front_door.proxy import Shared
from deploy.front_door.quota import ApiKeys, KeyFileError, Limits, QuotaExceeded, Usage
from deploy.front_door.stream import Stream
from deploy.session_tokens import SessionTokens
from export.contract import media
from export.contract.spec import TALKING_HEAD

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef"}


def test_keys_file_is_parsed_and_keys_compared_by_digest(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("# clients\nalice: alice-key-0123456789abcdef\n\nbob:bob-key-0123456789abcdef\n")
    keys = ApiKeys.from_file(f)
    assert keys.identify(KEYS["alice"]) == "alice" and keys.identify(KEYS["bob"]) == "bob"
    assert keys.identify("alice-key-0123456789abcdeX") is None and keys.identify("") is None
    assert all(len(d) == 32 and KEYS[n].encode() != d for n, d in keys._digests)  # only digests are kept
    for bad in ("alice", "alice:short", "al ice:0123456789abcdef01", "a:0123456789abcdef01\na:0123456789abcdef02"):
        f.write_text(bad)
        with pytest.raises(KeyFileError):
            ApiKeys.from_file(f)


def test_session_tokens_are_per_identity_and_valid_session_tokens():
    tokens = SessionTokens(b"a secret of 24 bytes....")
    a, b = tokens("alice"), tokens("bob")
    assert a != b and a == tokens("alice") and len(a) == 32 and a.replace("-", "").replace("_", "").isalnum()
    assert SessionTokens(b"another secret of 28 bytes..")("alice") != a
    assert SessionTokens()("alice") != SessionTokens()("alice")  # a random secret per process unless given
    with pytest.raises(ValueError, match="0 bytes; give at least 16"):
        SessionTokens(b"")  # an empty secret file is an error, not a random secret in silence


def test_rate_and_turn_quotas():
    now = [0.0]
    u = Usage(Limits(rate=2, burst=3, max_turns=1), clock=lambda: now[0])
    for _ in range(3):
        u.spend("x")
    with pytest.raises(QuotaExceeded, match="rate limit"):
        u.spend("x")
    now[0] += 0.5  # one token back
    u.spend("x")
    u.start_turn()
    with pytest.raises(QuotaExceeded, match="too many turns: 1 in flight"):
        u.start_turn()
    calls = Usage(Limits(max_calls=2))
    calls.start_call()
    calls.start_call()
    with pytest.raises(QuotaExceeded, match="too many calls: 2 in flight"):
        calls.start_call()
    calls.end_call()
    calls.start_call()


def test_microphone_chunks_spend_seconds_of_audio_not_requests():
    """A live microphone sends 31 chunks a second (the SDK's 32 ms), more than the request rate: until 2026-12-07 the
    SDK's microphone through the door was refused after 3.4 s of speech."""
    now = [0.0]
    u = Usage(Limits(rate=2, burst=2, mic_rate=1.0, mic_burst_s=2.0), clock=lambda: now[0])
    for _ in range(62):  # 2 s of 32 ms chunks at once: the burst; the request bucket untouched
        u.hear(0.032, "chunk")
    with pytest.raises(QuotaExceeded, match=r"microphone limit: chunk \(32 ms of audio\) refused, more than 1 s of "
                                            r"microphone audio a second \(burst 2 s\)"):
        u.hear(0.032, "chunk")
    u.spend("a text turn keeps its own bucket")
    now[0] += 1.0  # real time for 1 s
    for _ in range(31):
        u.hear(0.032, "chunk")
    chunk = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="audio", shape=[1, 1600])])
    assert mic_seconds(chunk) == 0.1
    chunk.inputs[0].shape[:] = [1, 1]  # one sample: the orchestrator still makes a VAD window's work of it
    assert mic_seconds(chunk) == media.VAD_WINDOW / media.INPUT_SAMPLE_RATE
    assert mic_seconds(pb.ModelInferRequest()) == media.VAD_WINDOW / media.INPUT_SAMPLE_RATE


def _chunk(rid: str, session: str | None = "a", action: str = "mic") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=TALKING_HEAD.name, id=rid)
    opts = json.dumps({"action": action, **({"session": session} if session else {})}).encode()
    req.inputs.add(name="options", datatype="BYTES", shape=[1]).contents.bytes_contents.append(opts)
    req.inputs.add(name="audio", datatype="FP32", shape=[1, 512])
    return req


def _final(rid: str, outputs: int = 0) -> pb.ModelStreamInferResponse:
    resp = pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id=rid))
    resp.infer_response.parameters[FINAL].bool_param = True
    for _ in range(outputs):
        resp.infer_response.outputs.add(name="events")
    return resp


def test_a_sessions_microphone_chunks_hold_one_turn_slot_together():
    """A live microphone has many chunks in flight while the server answers them (and the chunk that ended a turn
    until its reply ends): until 2026-12-07 each held a turn slot, and a microphone under load was refused (`too many
    turns: 4 in flight`) 0.17 s into its speech."""
    usage = Usage(Limits(max_turns=2))
    stream = Stream(Limits(max_turns=2), lambda: False, None, usage, "T" * 32, fatal=False)
    for k in range(40):
        stream._admit(_chunk(f"c{k}"))
    assert (usage.turns, stream.slots, stream.turns) == (1, 1, 40)
    stream._admit(_chunk("t", action="turn"))  # a typed turn: a slot of its own
    assert usage.turns == 2
    with pytest.raises(Refused, match="too many turns: 2 in flight"):
        stream._admit(_chunk("b0", session="b"))  # another session's microphone needs a slot of its own
    with pytest.raises(Refused, match="request id 'c5' is in flight on this stream already"):
        stream._admit(_chunk("c5"))  # its answer would be taken for the other's
    with pytest.raises(Refused, match="in flight on this stream already"):
        stream._admit(_chunk("t"))  # a chunk may not share a turn's id either
    assert stream._ended(_final("c0")) is True  # the final response the door asked for: dropped
    for k in range(1, 39):
        assert stream._ended(_final(f"c{k}", outputs=k % 2)) is (k % 2 == 0)  # one with events is passed on
    assert usage.turns == 2  # c39 (the chunk that ended a turn, say) still in flight
    stream._ended(_final("c39"))
    assert (usage.turns, stream.slots, stream.mics) == (1, 1, {})
    stream._admit(_chunk("b0", session="b"))
    stream._ended(pb.ModelStreamInferResponse(error_message="invalid input: x", infer_response=pb.ModelInferResponse(
        id="t")))  # an error ends its request
    assert (usage.turns, stream.turns, list(stream.inflight)) == (1, 1, ["b0"])


def test_keyless_health_calls_share_one_upstream_answer():
    """ServerLive/ServerReady need no key: before 2026-12-07 each was forwarded, so one client's flood (492 a second)
    was as many calls to Triton."""
    calls, now = [], [0.0]

    async def upstream():
        calls.append(now[0])
        await asyncio.sleep(0.01)
        if len(calls) == 3:
            raise RuntimeError("upstream down")
        return len(calls)

    async def main():
        shared = Shared(upstream, ttl_s=0.5, clock=lambda: now[0])
        assert await asyncio.gather(*(shared() for _ in range(100))) == [1] * 100  # one call for all in flight
        now[0] = 0.4
        assert await shared() == 1 and len(calls) == 1  # within ttl_s: the same answer
        now[0] = 0.6
        first, second = asyncio.ensure_future(shared()), asyncio.ensure_future(shared())
        await asyncio.sleep(0)
        first.cancel()  # a caller that goes away leaves the call to the others
        assert await second == 2
        now[0] = 1.2
        with pytest.raises(RuntimeError, match="upstream down"):
            await shared()
        assert await shared() == 4  # an error is not kept
        assert len(calls) == 4

    asyncio.run(main())


def test_avatar_registrations_have_an_hourly_budget_per_key():
    now = [0.0]
    u = Usage(Limits(registrations_per_hour=60, registration_burst=2), clock=lambda: now[0])
    u.register()
    u.register()
    with pytest.raises(QuotaExceeded, match="too many avatar registrations: more than 60 an hour"):
        u.register()
    now[0] += 59.0
    with pytest.raises(QuotaExceeded):
        u.register()
    now[0] += 1.0  # one a minute
    u.register()
    u.spend("other requests keep their own bucket")


def test_options_get_the_identitys_token_in_contents_and_raw_contents():
    inputs = turn_inputs(avatar_id="0" * 16, text="Hi.", options={"session": "s", "session_token": "x" * 20})
    raw = pb.ModelInferRequest(model_name=TALKING_HEAD.name)
    for i in inputs:  # as tritonclient sends it: raw contents, 4-byte length before each BYTES element
        raw.inputs.append(i._get_tensor())
        raw.raw_input_contents.append(i._get_content())
    assert own_options(raw, "T" * 32) == (None, "s")
    opts = one_bytes_element(raw.raw_input_contents[[t.name for t in raw.inputs].index("options")])
    assert json.loads(opts) == {"session": "s", "session_token": "T" * 32}
    typed = pb.ModelInferRequest(model_name=TALKING_HEAD.name)
    typed.inputs.add(name="options", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b'{"action":"cancel","session":"s"}')
    assert own_options(typed, "T" * 32) == ("cancel", "s")
    assert json.loads(typed.inputs[0].contents.bytes_contents[0])["session_token"] == "T" * 32
    typed.inputs[0].contents.bytes_contents[0] = b'{"canary": true}'  # would hide its turns from the latency metrics
    with pytest.raises(Refused, match="canary") as refused:
        own_options(typed, "T" * 32)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    for naive in (b'{"streaming": false}', b'{"streaming": 0}'):  # silent for the whole reply: the door would cut it
        typed.inputs[0].contents.bytes_contents[0] = naive
        with pytest.raises(Refused, match="option `streaming` false .* is for benchmarks"):
            own_options(typed, "T" * 32)
    typed.inputs[0].contents.bytes_contents[0] = b'{"streaming": true}'
    assert own_options(typed, "T" * 32) == (None, None)
    for other in ('{"seed": 1}'.encode("utf-16"), b'\xef\xbb\xbf{"seed": 1}'):  # parsed as the orchestrator does
        typed.inputs[0].contents.bytes_contents[0] = other
        assert own_options(typed, "T" * 32) == (None, None) and typed.inputs[0].contents.bytes_contents[0] == other
    typed.inputs[0].contents.bytes_contents[0] = b"not json"
    assert own_options(typed, "T" * 32) == (None, None) and typed.inputs[0].contents.bytes_contents[0] == b"not json"
    typed.inputs[0].contents.bytes_contents.append(b"{}")
    with pytest.raises(Refused, match="one BYTES element"):
        own_options(typed, "T" * 32)
    assert one_bytes_element(struct.pack("<I", 9) + b"short") is None
    two = struct.pack("<I", 2) + b"{}" + struct.pack("<I", 2) + b"{}"
    for bad in (two, b"\0\0\0\0" * 2_900_000, b"\0\0\0"):  # millions of empty elements: refused at once
        raw.raw_input_contents[[t.name for t in raw.inputs].index("options")] = bad
        t0 = time.thread_time()  # this thread's CPU time: another process on a shared machine does not stretch it
        with pytest.raises(Refused, match="one BYTES element"):
            own_options(raw, "T" * 32)
        assert time.thread_time() - t0 < 0.1  # not walked element by element (1.3 s before)


def test_output_parameters_and_a_non_bool_final_flag_are_refused():
    """Triton 2.51 dies (SIGFPE) of `classification` asked on the orchestrator's BYTES output, and a string
    `triton_enable_empty_final_response` made the door drop a final response the client then waited for."""
    req = pb.ModelInferRequest(model_name=TALKING_HEAD.name)
    check_request(req, TALKING_HEAD.name, Limits())
    req.outputs.add(name="event")  # by name only: served
    check_request(req, TALKING_HEAD.name, Limits())
    req.outputs[0].parameters["classification"].int64_param = 1
    with pytest.raises(Refused, match="output 'event': parameters \\(classification\\) are not served") as e:
        check_request(req, TALKING_HEAD.name, Limits())
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    del req.outputs[:]
    req.parameters["triton_enable_empty_final_response"].string_param = "true"
    with pytest.raises(Refused, match="'triton_enable_empty_final_response' must be a bool, got string_param"):
        check_request(req, TALKING_HEAD.name, Limits())
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    check_request(req, TALKING_HEAD.name, Limits())
