"""The front door (deploy/front_door) in front of the real embedded tritonserver: a whole turn streams through it
with a key; no key, a wrong key, stage models and admin APIs are refused; per-identity quotas; sessions belong
to the API key that opened them; ids and messages bounded. The checks that need no server:
tests/test_front_door_checks.py."""
from __future__ import annotations

import asyncio
import queue
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_metrics import metric
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from client.wire import action_inputs, infer_input, turn_inputs
from deploy.front_door import FrontDoorOptions, FrontDoorThread
from deploy.front_door.proxy import SPARE_AFTER_S, FrontDoor
from deploy.front_door.quota import ApiKeys, Limits
from export.contract import events as ev
from export.contract.spec import AVATAR_REGISTRY, TALKING_HEAD

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef"}
LONG = {"ignore_eos": True, "max_reply_tokens": 200}


def auth(name: str | None = None, key: str | None = None) -> dict[str, str]:
    h = {"triton_grpc_error": "true"}
    if name or key:
        h["authorization"] = f"Bearer {key or KEYS[name]}"
    return h


# ---------------------------------------------------------------- through the real server

@pytest.fixture(scope="module")
def door(server):
    options = FrontDoorOptions(upstream=server.options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys(KEYS),
                               limits=Limits(max_turns=2, max_message_bytes=4 * 1024 * 1024))
    with FrontDoorThread(options) as d:
        yield d


@pytest.fixture(scope="module")
def door_avatar(door):
    from ensemble.avatar import demo_avatar_png

    with grpcclient.InferenceServerClient(door.url) as c:
        inputs = [infer_input(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs[0], [demo_avatar_png()])]
        result = c.infer(AVATAR_REGISTRY.name, inputs, headers=auth("alice"))
    return result.as_numpy("avatar_id").reshape(-1)[0].decode()


def test_a_key_past_its_registration_budget_is_refused_and_others_register(server):
    """The avatar store is shared and least recently used out first: one key may not cycle it."""
    from ensemble.avatar import demo_avatar_png

    options = FrontDoorOptions(upstream=server.options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys(KEYS),
                               limits=Limits(registrations_per_hour=1, registration_burst=2))
    inputs = [infer_input(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs[0], [demo_avatar_png()])]
    with FrontDoorThread(options) as d, grpcclient.InferenceServerClient(d.url) as c:
        for _ in range(2):
            c.infer(AVATAR_REGISTRY.name, inputs, headers=auth("alice"))
        with pytest.raises(InferenceServerException) as e:
            c.infer(AVATAR_REGISTRY.name, inputs, headers=auth("alice"))
        assert status(e.value) == "RESOURCE_EXHAUSTED" and "too many avatar registrations" in str(e.value)
        assert c.infer(AVATAR_REGISTRY.name, inputs, headers=auth("bob")).as_numpy("avatar_id").size == 1


class Stream:
    """One talking_head stream through the front door, its events (or its error) collected on tritonclient's
    thread."""

    def __init__(self, url: str, headers: dict[str, str], inputs: list, request_id: str = "r",
                 model: str = TALKING_HEAD.name):
        self.events, self.error, self.q = [], None, queue.Queue()
        self.first_audio, self.ended = threading.Event(), threading.Event()
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=self._on, headers=headers)
        self.send(inputs, request_id, model)

    def send(self, inputs: list, request_id: str = "r", model: str = TALKING_HEAD.name) -> None:
        try:
            self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)
        except InferenceServerException:  # the stream was refused already: the reason comes through the callback
            assert self.ended.wait(10)

    def _on(self, result, error):
        if error is not None:
            self.error = error
        else:
            out = result.as_numpy("event")
            if out is not None:
                e = ev.Event.from_json(out.reshape(-1)[0])
                self.events.append(e)
                self.first_audio.set() if e.type == ev.AUDIO else None
            if not result.get_response().parameters["triton_final_response"].bool_param:
                return
        self.first_audio.set()
        self.ended.set()

    def wait(self, timeout: float = 60) -> Stream:
        assert self.ended.wait(timeout), "the stream did not end"
        self.client.stop_stream()
        self.client.close()
        return self

    def done(self) -> dict:
        return next(e.data for e in self.events if e.type == ev.DONE)


def status(error) -> str:
    return str(error.status()).rsplit(".", 1)[-1]


@pytest.mark.server
def test_a_text_turn_streams_through_the_front_door(door, door_avatar):
    with grpcclient.InferenceServerClient(door.url) as c:
        assert c.is_server_live() and c.is_server_ready()  # health: open for probes, no key
        assert c.is_model_ready(TALKING_HEAD.name, headers=auth("alice"))
    t0 = time.perf_counter()
    s = Stream(door.url, auth("alice"), turn_inputs(avatar_id=door_avatar, text="Hello there.",
                                                    options={"session": "fd-turn"})).wait()
    assert s.error is None, s.error
    types = [e.type for e in s.events]
    print(f"\nturn through the front door: {len(types)} events in {time.perf_counter() - t0:.2f} s")
    assert ev.AUDIO in types and ev.VIDEO in types and types[-1] == ev.DONE
    assert s.done()["interrupted"] is None


@pytest.mark.server
def test_no_key_or_a_wrong_key_is_unauthenticated(door, door_avatar):
    inputs = turn_inputs(avatar_id=door_avatar, text="Hi.")
    for headers in (auth(), auth(key="alice-key-0123456789abcdeX"), {"authorization": KEYS["alice"]}):
        s = Stream(door.url, headers, inputs).wait()
        assert status(s.error) == "UNAUTHENTICATED" and "API key" in str(s.error), s.error
        with grpcclient.InferenceServerClient(door.url) as c:
            for call in (lambda: c.is_model_ready(TALKING_HEAD.name, headers=headers),
                         lambda: c.infer(AVATAR_REGISTRY.name, [infer_input(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs[0],
                                                                            [b"x"])], headers=headers)):
                with pytest.raises(InferenceServerException) as e:
                    call()
                assert status(e.value) == "UNAUTHENTICATED"


@pytest.mark.server
def test_stage_models_and_admin_apis_are_permission_denied(door, door_avatar):
    tts = [grpcclient.InferInput("phoneme_ids", [1, 3], "INT64")]
    tts[0].set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int64))
    with grpcclient.InferenceServerClient(door.url) as c:
        calls = {"tts infer": lambda: c.infer("tts", tts, headers=auth("alice")),
                 "talking_head infer": lambda: c.infer(TALKING_HEAD.name, turn_inputs(avatar_id=door_avatar, text="x"),
                                                       headers=auth("alice")),
                 "tts ready": lambda: c.is_model_ready("tts", headers=auth("alice")),
                 "repository index": lambda: c.get_model_repository_index(headers=auth("alice")),
                 "statistics": lambda: c.get_inference_statistics(headers=auth("alice")),
                 "load": lambda: c.load_model("tts", headers=auth("alice")),
                 "config": lambda: c.get_model_config(TALKING_HEAD.name, headers=auth("alice")),
                 "shared memory": lambda: c.get_system_shared_memory_status(headers=auth("alice")),
                 "server metadata": lambda: c.get_server_metadata(headers=auth("alice"))}
        for what, call in calls.items():
            with pytest.raises(InferenceServerException) as e:
                call()
            assert status(e.value) == "PERMISSION_DENIED" and "not exposed" in str(e.value), (what, e.value)
    s = Stream(door.url, auth("alice"), turn_inputs(avatar_id=door_avatar, text="Hi."), model="vad").wait()
    assert status(s.error) == "PERMISSION_DENIED" and "'vad' is not exposed" in str(s.error)


@pytest.mark.server
def test_the_turn_quota_refuses_the_extra_turn_for_that_identity_only(door, door_avatar):
    long = [Stream(door.url, auth("alice"), turn_inputs(avatar_id=door_avatar, text="Tell me a long story.",
                                                       options={"session": f"fd-q{i}", **LONG})) for i in range(2)]
    for s in long:
        assert s.first_audio.wait(60) and s.error is None
    extra = Stream(door.url, auth("alice"), turn_inputs(avatar_id=door_avatar, text="Hi.")).wait()
    assert status(extra.error) == "RESOURCE_EXHAUSTED", extra.error
    assert "too many turns: 2 in flight for this API key (limit 2)" in str(extra.error)
    other = Stream(door.url, auth("bob"), turn_inputs(avatar_id=door_avatar, text="Hi.")).wait()
    assert other.error is None and other.events[-1].type == ev.DONE
    for i, s in enumerate(long):  # cancels are not counted against the quota; the owner may cancel its sessions
        Stream(door.url, auth("alice"), action_inputs("cancel", door_avatar, {"session": f"fd-q{i}"})).wait()
        assert s.wait().done()["interrupted"] == "cancel"
    again = Stream(door.url, auth("alice"), turn_inputs(avatar_id=door_avatar, text="Hi.")).wait()
    assert again.error is None and again.events[-1].type == ev.DONE  # the slots came back


@pytest.mark.server
def test_two_identities_with_the_same_session_id_do_not_collide(door, door_avatar):
    """The front door sets `session_token` from the API key, overriding what the client sent: bob naming alice's
    session (even with the token alice's client sent) reaches his own session of that id, and alice's reply runs
    on."""
    mine = Stream(door.url, auth("alice"), turn_inputs(avatar_id=door_avatar, text="Tell me a long story.", options={
        "session": "fd-shared", "session_token": "alice-client-token-123", "ignore_eos": True,
        "max_reply_tokens": 48}))
    assert mine.first_audio.wait(60) and mine.error is None
    for inputs in (action_inputs("cancel", door_avatar, {"session": "fd-shared",
                                                         "session_token": "alice-client-token-123"}),
                   turn_inputs(avatar_id=door_avatar, text="Hi.", options={"session": "fd-shared"})):
        s = Stream(door.url, auth("bob"), inputs).wait()
        assert s.error is None and s.events[-1].type in (ev.CANCELLED, ev.DONE), s.error
        assert all(e.data.get("interrupted_turn") is None for e in s.events if e.type == ev.CANCELLED)
    assert not mine.ended.is_set()  # still running after bob's cancel and turn
    done = mine.wait().done()
    assert done["interrupted"] is None and done["video_frames"] > 0


@pytest.mark.server
def test_a_classification_output_is_refused_and_the_server_lives(server, door, door_avatar):
    """`classification` on the orchestrator's BYTES output killed tritonserver (SIGFPE, 3 of 3) through the door."""
    errors = queue.Queue()
    with grpcclient.InferenceServerClient(door.url) as c:
        c.start_stream(lambda result, error: errors.put(error), headers=auth("alice"))
        c.async_stream_infer(TALKING_HEAD.name, turn_inputs(avatar_id=door_avatar, text="Hi."),
                             outputs=[grpcclient.InferRequestedOutput("event", class_count=1)])
        error = errors.get(timeout=30)
        c.stop_stream()
    assert status(error) == "INVALID_ARGUMENT" and "parameters (classification) are not served" in str(error), error
    assert server.process.poll() is None
    s = Stream(door.url, auth("alice"), turn_inputs(avatar_id=door_avatar, text="Hi.")).wait()
    assert s.error is None and s.events[-1].type == ev.DONE


@pytest.mark.server
def test_long_request_ids_and_large_messages_are_refused(door, door_avatar):
    s = Stream(door.url, auth("alice"), turn_inputs(avatar_id=door_avatar, text="Hi."), request_id="i" * 4096).wait()
    assert status(s.error) == "INVALID_ARGUMENT" and "request id has 4096 bytes; the limit is 128" in str(s.error)
    with grpcclient.InferenceServerClient(door.url) as c:
        image = [infer_input(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs[0], [b"\0" * 100])]
        with pytest.raises(InferenceServerException, match="request id has 4096 bytes") as e:
            c.infer(AVATAR_REGISTRY.name, image, request_id="i" * 4096, headers=auth("alice"))
        assert status(e.value) == "INVALID_ARGUMENT"
        big = [infer_input(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs[0], [b"x" * (5 * 1024 * 1024)])]
        with pytest.raises(InferenceServerException) as e:
            c.infer(AVATAR_REGISTRY.name, big, headers=auth("alice"))
        assert status(e.value) == "RESOURCE_EXHAUSTED" and "larger than max" in str(e.value), e.value.message()


@pytest.mark.server
def test_the_sdk_with_an_api_key_goes_through_the_front_door(door):
    from client.sdk import ServerError, TalkingHeadClient
    from ensemble.avatar import demo_avatar_png

    with TalkingHeadClient(door.url, api_key=KEYS["bob"], turn_timeout_s=60) as c:
        c.check_connection()
        avatar = c.register_avatar(demo_avatar_png())
        result = c.turn(avatar_id=avatar.id, text="Hello.", options={"session": "fd-sdk"})
        assert result.done["interrupted"] is None and result.audio.size > 0
        assert c.cancel("fd-sdk")["interrupted_turn"] is None  # bob's own session: his cancel is accepted
    with TalkingHeadClient(door.url, turn_timeout_s=60) as anonymous:
        with pytest.raises(ServerError) as e:
            anonymous.register_avatar(demo_avatar_png())
        assert e.value.status == "UNAUTHENTICATED"


def cut_off_reader(server, avatar: str, pause_s: float | None, within_s: float) -> tuple[float, int, object]:
    """A 30 s idle-motion request through a door with max_stall_s 1 s, read by a callback that waits `pause_s`
    after each response (None: for good, until released). Idle motion is paced in real time by the server, so the
    request is still running when the door cuts the stream off (a tiny-preset text turn is made faster than real
    time and would be over). Returns (seconds until the orchestrator counted the turn cancelled, responses taken,
    the error the stream ended with once the client read again); fails when no cut came within `within_s`."""
    cancelled = 'outcome="cancelled"'
    before = metric(server, "talking_head_turns_total", cancelled)
    options = FrontDoorOptions(upstream=server.options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys(KEYS),
                               limits=Limits(max_stall_s=1.0))
    with FrontDoorThread(options) as door:
        release, errors, taken = threading.Event(), [], []

        def reader(result, error):
            if error is not None:
                errors.append(error)
            taken.append(result)
            release.wait(120 if pause_s is None else pause_s)

        client = grpcclient.InferenceServerClient(door.url, channel_args=[("grpc.http2.bdp_probe", 0)])
        client.start_stream(callback=reader, headers=auth("alice"))
        t0 = time.monotonic()
        client.async_stream_infer(TALKING_HEAD.name, action_inputs("idle", avatar, {"idle_s": 30}),
                                  request_id="slow", enable_empty_final_response=True)
        while metric(server, "talking_head_turns_total", cancelled) <= before:  # cancelled while still unread
            assert time.monotonic() - t0 < within_s, f"the client's turn was not cancelled ({len(taken)} taken)"
            time.sleep(0.2)
        cut_s, n = time.monotonic() - t0, len(taken)
        release.set()
        deadline = time.monotonic() + 30
        while not errors:
            assert time.monotonic() < deadline, "the cut stream did not end with an error"
            time.sleep(0.1)
        client.stop_stream(cancel_requests=True)
        client.close()
    return cut_s, n, errors[0]


@pytest.mark.server
def test_a_client_that_stops_reading_is_cut_off_and_its_turn_cancelled(server, door_avatar):
    """A client that takes no response (its callback stuck, so its HTTP/2 window fills) is cut off after
    max_stall_s: the door cancels its request upstream (the orchestrator counts the turn cancelled, long before its
    30 s would end), and when the client reads again its stream ends with RESOURCE_EXHAUSTED saying why."""
    _, _, error = cut_off_reader(server, door_avatar, None, within_s=90)
    assert status(error) == "RESOURCE_EXHAUSTED" and "did not keep up" in str(error)


@pytest.mark.server
def test_a_client_that_reads_slower_than_its_stream_is_cut_off(server, door_avatar):
    """A client that takes a response every 0.5 s of a stream that comes far faster (idle motion) never holds one
    write up for max_stall_s (1 s), but falls ever further behind while tritonserver keeps the backlog (it grew
    98 -> 343 MiB in 48 s at one response per 8 s, max_stall_s 10 s): the time it holds the stream up adds up, so
    it is cut off and its turn cancelled long before the 30 s idle would end."""
    cut_s, taken, error = cut_off_reader(server, door_avatar, 0.5, within_s=20)
    print(f"\nslow reader cut off {cut_s:.1f} s after its request, {taken} responses taken")
    assert status(error) == "RESOURCE_EXHAUSTED" and "did not keep up" in str(error)


@pytest.mark.server
def test_mutual_tls_clients_are_known_by_their_certificates(server, tmp_path):
    """--tls-client-ca: a client without a certificate from the CA is refused at the handshake; with one, its
    subject CN is its identity: dave naming carol's session reaches his own, though neither sent an API key."""
    from client.sdk import ClientError, TalkingHeadClient
    from deploy.tls import make_client_cert, make_self_signed
    from ensemble.avatar import demo_avatar_png

    tls = make_self_signed(tmp_path)
    certs = {name: make_client_cert(tmp_path, name, name) for name in ("carol", "dave")}
    options = FrontDoorOptions(upstream=server.options.grpc_url, listen="127.0.0.1:0", tls_cert=tls.server_cert,
                               tls_key=tls.server_key, tls_client_ca=tls.root_cert)

    def client(url, name=None):
        cert = dict(zip(("certificate_chain", "private_key"), map(str, certs[name]))) if name else {}
        return TalkingHeadClient(url, ssl=True, root_certificates=str(tls.root_cert), turn_timeout_s=60, **cert)

    with FrontDoorThread(options) as door:
        with client(door.url) as anonymous, pytest.raises(ClientError):
            anonymous.check_connection(timeout_s=5)
        with client(door.url, "carol") as carol, client(door.url, "dave") as dave:
            carol.check_connection()
            avatar = carol.register_avatar(demo_avatar_png())
            with carol.ask(avatar_id=avatar.id, text="Tell me a long story.",
                           options={"session": "mtls-shared", **LONG}) as stream:
                events = iter(stream)
                assert any(e.type == ev.AUDIO for e in events)  # carol's reply is under way
                assert dave.cancel("mtls-shared")["interrupted_turn"] is None  # dave's own "mtls-shared": empty
                done = next(e.data for e in events if e.type == ev.DONE)
            assert done["interrupted"] is None


@pytest.mark.server
def test_a_prerender_may_stay_silent_longer_than_the_silence_cut(server):
    """A prerender streams nothing until its `done` (its turns go to the answer cache): the door's cut for a silent
    upstream (meant for a dead orchestrator) leaves it alone, while it would end a turn that long silent. One phrase
    (~7 s here, 14 times the cut): all twelve took 90 s on a slow day, past the stream's wait."""
    from ensemble.avatar import demo_avatar_png

    options = FrontDoorOptions(upstream=server.options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys(KEYS),
                               limits=Limits(max_upstream_silence_s=0.5))
    with FrontDoorThread(options) as door:
        with grpcclient.InferenceServerClient(door.url) as c:
            image = [infer_input(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs[0], [demo_avatar_png()])]
            avatar = c.infer(AVATAR_REGISTRY.name, image, headers=auth("alice")).as_numpy("avatar_id").reshape(-1)[0]
        t0 = time.perf_counter()
        s = Stream(door.url, auth("alice"), action_inputs("prerender", avatar.decode(), {"seed": 4242},
                                                           text="good morning")).wait()
        took = time.perf_counter() - t0
    assert s.error is None, s.error
    done = s.events[-1]
    assert done.type == ev.DONE and done.data["prerendered"] == ["good morning"] and took > 0.5, (took, done.data)


@pytest.mark.server
def test_a_drain_closes_the_idle_streams_so_the_orchestrator_can_unload(lone_server):
    """Triton 2.51 does not finish unloading a model while a stream that sent it requests is open, idle or not. Once
    talking_head is not ready upstream (a drain unloads it first), the door closes its streams with no turn in
    flight, with UNAVAILABLE naming the drain, and the unload completes."""
    from deploy.admin import admin_headers
    from ensemble.avatar import demo_avatar_png

    server = lone_server
    options = FrontDoorOptions(upstream=server.options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys(KEYS),
                               limits=Limits(ready_poll_s=0.2))
    admin = admin_headers(server.options.admin_key)

    def state() -> str:
        with grpcclient.InferenceServerClient(server.options.grpc_url) as c:
            return next(m.state for m in c.get_model_repository_index(headers=admin).models
                        if m.name == TALKING_HEAD.name)

    with FrontDoorThread(options) as door:
        with grpcclient.InferenceServerClient(door.url) as c:
            image = [infer_input(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs[0], [demo_avatar_png()])]
            avatar = c.infer(AVATAR_REGISTRY.name, image, headers=auth("alice")).as_numpy("avatar_id").reshape(-1)[0]
        s = Stream(door.url, auth("alice"), turn_inputs(avatar_id=avatar.decode(), text="Hi.",
                                                         options={"max_reply_tokens": 4}))
        try:
            assert s.ended.wait(60) and s.error is None and s.events[-1].type == ev.DONE, s.error
            s.ended.clear()  # the turn is done; its stream stays open, idle
            time.sleep(0.5)
            assert s.error is None, "an idle stream was closed while the server was ready"
            with grpcclient.InferenceServerClient(server.options.grpc_url) as c:
                c.unload_model(TALKING_HEAD.name, headers=admin)
            assert s.ended.wait(10), "the idle stream stayed open during the drain"
            assert status(s.error) == "UNAVAILABLE" and "draining" in str(s.error), s.error
            deadline = time.monotonic() + 20
            while state() != "UNAVAILABLE":
                assert time.monotonic() < deadline, f"talking_head still {state()} after its streams closed"
                time.sleep(0.2)
        finally:
            s.client.close()
            server.reload_model(TALKING_HEAD.name)
    assert state() == "READY"


@pytest.mark.server
def test_a_new_client_stream_gets_the_spare_upstream_stream_unless_it_has_ended(server):
    """The door opens an upstream stream ahead of the next client stream, so a turn's first request skips setting
    one up; the spare is opened a moment after the last was taken (off that turn's path), and one that has ended
    meanwhile (upstream restarted, the call cancelled) is never handed out: a new one is."""
    async def answers(call) -> str:
        await call.write(pb.ModelInferRequest(model_name="no_such_model", id="probe"))
        return (await asyncio.wait_for(call.read(), 10)).error_message

    async def go():
        channel = grpc.aio.insecure_channel(server.options.grpc_url)
        door = FrontDoor(channel, ApiKeys(KEYS))
        calls = []
        try:
            calls.append(door._upstream_stream())  # none opened ahead yet: a new one
            assert door._spare is None, "the spare was opened on the turn's path"
            await asyncio.sleep(SPARE_AFTER_S + 0.2)
            spare = door._spare
            assert spare is not None and not spare.done()
            calls.append(door._upstream_stream())
            assert calls[-1] is spare
            assert "no_such_model" in await answers(spare)
            await asyncio.sleep(SPARE_AFTER_S + 0.2)
            dead = door._spare
            dead.cancel()
            calls.append(door._upstream_stream())
            assert calls[-1] is not dead and not calls[-1].done()
            assert "no_such_model" in await answers(calls[-1])
        finally:
            for call in calls + [door._spare]:
                if call is not None:
                    call.cancel()
            await channel.close()

    asyncio.run(go())
