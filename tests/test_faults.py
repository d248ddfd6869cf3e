"""Faults inside the server (a server of its own, on free ports): a stage's stub killed mid-session, a stage that raises.

What Triton 2.51 does when a stage's Python stub dies (measured here, see RELIABILITY.md): it does
NOT restart the stub; the model stays READY and `/v2/health/ready` stays 200; every request to the
stage fails with "Stub process '<model>_0_0' is not healthy." (the turn in flight fails at its
next call of that stage, naming it). A plain `load_model` of the still-loaded model changes
nothing (its files did not change); unloading it first and loading it again starts a new stub
(`EmbeddedServer.reload_model`, explicit model control, admin key). The canary notices the dead
stub and names the stage.

A stage that raises for one request fails that turn only: the server here serves a copy of the
repository whose `lipsync` stage is `tests/faulty_stage/model.py` (the real ONNX graph, raising for
faces with an empty colour channel: only the avatar this test registers has one).
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from client.sdk import ServerError, TalkingHeadClient
from deploy.admin import admin_headers
from deploy.processes import server_ports, stubs
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.contract import events as ev
from export.contract import spec
from export.contract.layout import ROOT
from export.contract.presets import get_preset

pytestmark = pytest.mark.server

PORTS = server_ports()
FAULTY = Path(__file__).resolve().parent / "faulty_stage" / "model.py"
LONG_TURN = dict(text="Please tell me a long story about the sea.", options={"max_reply_tokens": 120, "ignore_eos": True})
SHORT_TURN = dict(text="Hello there.", options={"max_reply_tokens": 8})
CANARY_TIMEOUT_S = 10


LIPSYNC = spec.LIPSYNC_FAMILIES[get_preset("tiny").lipsync].name  # the lip-sync stage the tiny export serves


def repository_with_faulty_lipsync(src: Path, dest: Path) -> Path:
    """The exported repository (symlinked), except `lipsync`: the same graph and config served by the
    stock `python` backend from tests/faulty_stage/model.py."""
    dest.mkdir()
    for model in sorted(p for p in src.iterdir() if (p / "config.pbtxt").exists()):
        if model.name != LIPSYNC:
            (dest / model.name).symlink_to(model, target_is_directory=True)
    lipsync = dest / LIPSYNC
    (lipsync / "1").mkdir(parents=True)
    (lipsync / "configs").mkdir()
    config = (src / LIPSYNC / "configs" / "cpu.pbtxt").read_text()
    assert 'backend: "ort_cpu"' in config, "the CPU lipsync config no longer names the ort_cpu backend"
    # the stock python backend runs 1/model.py (it refuses another file name); model.py opens model.onnx
    config = "\n".join(line for line in config.splitlines() if not line.startswith("default_model_filename:"))
    (lipsync / "configs" / "cpu.pbtxt").write_text(config.replace('backend: "ort_cpu"', 'backend: "python"'))
    shutil.copy2(src / LIPSYNC / "config.pbtxt", lipsync / "config.pbtxt")
    for f in (src / LIPSYNC / "1").iterdir():
        if f.is_file():
            (lipsync / "1" / f.name).symlink_to(f)
    shutil.copy2(FAULTY, lipsync / "1" / "model.py")
    return dest


TRITON_8882 = "boost::interprocess::lock_exception"


def aborted_by_triton_8882(server: EmbeddedServer) -> bool:
    """tritonserver died of its own Python-backend bug (triton-inference-server/server#8882, open; RELIABILITY.md,
    "The stub-faults class does not always end clean"): a stub SIGKILLed while it held a lock in the backend's shared
    memory makes a later request abort the whole server with this exception."""
    return (server.process is not None and server.process.poll() is not None
            and TRITON_8882 in server.log_path.read_text(errors="replace"))


def unless_triton_aborts(test):
    """A test that kills a stub: its claims hold while tritonserver survives the kill. When tritonserver aborted of
    Triton's bug #8882 instead (it happened in a fresh CI run here), the test is an expected failure that names it
    (the next test gets a new server, `fault_server`); any other failure fails it."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except Exception:
            if aborted_by_triton_8882(kwargs["fault_server"]):
                pytest.xfail(f"tritonserver aborted ({TRITON_8882}) after a stub was SIGKILLed: Triton's bug "
                             "triton-inference-server/server#8882, not this project's (RELIABILITY.md)")
            raise
    return run


@pytest.fixture(scope="module")
def module_server(exported_repository, tmp_path_factory):
    repo = repository_with_faulty_lipsync(exported_repository, tmp_path_factory.mktemp("faults") / "repo")
    # exit_timeout_s: after a stub was killed, Triton's shutdown waits this long for the dead instance
    options = ServerOptions(repository=repo, workdir=tmp_path_factory.mktemp("triton-faults"), exit_timeout_s=10,
                            **PORTS)
    with EmbeddedServer(options) as server:
        yield server
    # the killed stub's region too: Triton never finalizes a dead instance, stop() removes what is left
    assert server.shm_regions and not [r for r in server.shm_regions if os.path.exists(f"/dev/shm/{r}")]


@pytest.fixture
def fault_server(module_server):
    """The module's server; started again (same ports, the old log kept as tritonserver.log.1) when a test before
    left it dead of Triton's bug #8882."""
    if module_server.process.poll() is not None:
        assert aborted_by_triton_8882(module_server), module_server.log_tail()
        module_server.stop(drain=False)
        module_server.start()
    return module_server


@pytest.fixture(scope="module")
def th(module_server):
    with TalkingHeadClient(module_server.options.grpc_url, turn_timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def avatar(th):
    return th.register_avatar(demo_avatar_png())


@pytest.fixture
def kill_stub(fault_server):
    """`kill_stub(stage)` SIGKILLs the stage's Python stub and returns the stub it killed. The fault is undone in the
    finalizer, not in the test body: a stage whose stub is still dead when the test ends (an assertion failed before
    the test's own reload) is unloaded and loaded again, so the next test gets a healthy server."""
    killed: list[str] = []

    def kill(stage: str):
        stub = {s.model: s for s in stubs(fault_server.process.pid)}[stage]
        os.kill(stub.pid, signal.SIGKILL)
        killed.append(stage)
        return stub

    yield kill
    if fault_server.process.poll() is not None:  # Triton's bug #8882 took the server: the next test starts it again
        return
    for stage in killed:
        if stage not in {s.model for s in stubs(fault_server.process.pid)}:
            fault_server.reload_model(stage)


def _ready(server) -> bool:
    try:
        with urllib.request.urlopen(f"http://localhost:{server.options.http_port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _canary(server) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "deploy.canary", "--url", server.options.grpc_url,
                           "--timeout", str(CANARY_TIMEOUT_S)], cwd=ROOT, capture_output=True, text=True,
                          timeout=CANARY_TIMEOUT_S + 30)
    return proc.returncode, (proc.stdout + proc.stderr).strip(), time.perf_counter() - t0


class Background:
    """A turn in a thread: its event types and its error."""

    def __init__(self, client: TalkingHeadClient, avatar_id: str, turn: dict):
        self.kinds: list[str] = []
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(client, avatar_id, turn), daemon=True)
        self.thread.start()

    def _run(self, client, avatar_id, turn):
        try:
            for e in client.ask(avatar_id=avatar_id, **turn):
                self.kinds.append(e.type)
        except Exception as e:  # recorded, asserted by the test
            self.error = e

    def wait_for(self, kind: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while kind not in self.kinds:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"no {kind} event in {timeout_s} s"
            time.sleep(0.005)


@unless_triton_aborts
def test_killed_stub_fails_its_session_the_canary_names_it_and_a_reload_brings_it_back(fault_server, th, avatar,
                                                                                       kill_stub):
    stage = "vocoder"
    server = fault_server
    before = {s.model: s for s in stubs(server.process.pid)}
    assert stage in before, sorted(before)
    turn = Background(th, avatar.id, LONG_TURN)
    turn.wait_for(ev.AUDIO)
    kill_stub(stage)
    t_kill = time.perf_counter()

    # the canary, started right after the kill, fails and names the stage
    code, canary_out, canary_s = _canary(server)
    canary_since_kill = time.perf_counter() - t_kill
    assert code == 1, canary_out
    assert f"(model: {stage})" in canary_out and "is not healthy" in canary_out, canary_out

    # the session in flight failed with an error naming the stage
    turn.thread.join(60)
    assert isinstance(turn.error, ServerError), turn.error
    assert f"{stage}: Stub process '{stage}_0_0' is not healthy" in turn.error.message, turn.error.message
    assert ev.DONE not in turn.kinds

    # Triton 2.51: no restart, health still 200, the model still READY; every turn fails the same way
    assert stage not in {s.model for s in stubs(server.process.pid)}
    assert _ready(server)
    with server.admin_client() as admin:
        assert admin.is_model_ready(stage)
        t_load = time.perf_counter()
        admin.load_model(stage, headers=admin_headers(server.options.admin_key))  # files unchanged: a no-op
        plain_load_s = time.perf_counter() - t_load
    with pytest.raises(ServerError, match=f"Stub process '{stage}_0_0' is not healthy"):
        th.turn(avatar_id=avatar.id, **SHORT_TURN)

    # unload + load (explicit model control) starts a new stub: new sessions succeed (the fixture's finalizer
    # reloads it too, should an assertion above fail first)
    reload_s = server.reload_model(stage)
    after = {s.model: s for s in stubs(server.process.pid)}
    assert after[stage].pid != before[stage].pid
    result = th.turn(avatar_id=avatar.id, **SHORT_TURN)
    assert result.done is not None and result.audio.size > 0 and result.frames
    code_after, canary_after, _ = _canary(server)
    assert code_after == 0, canary_after
    print(f"\n{stage} stub SIGKILLed after the first audio chunk: the turn failed with {turn.error.message!r}; "
          f"canary started at the kill exited 1 after {canary_s:.2f} s ({canary_since_kill:.2f} s after the kill): "
          f"{canary_out!r}; /v2/health/ready still 200, model still READY; a plain load_model took "
          f"{plain_load_s * 1000:.0f} ms and changed nothing; reload (unload + load) {reload_s:.2f} s, then a turn "
          f"completed ({len(result.frames)} frames) and the canary passed ({canary_after!r})")


@unless_triton_aborts
def test_the_watchdog_brings_a_dead_stub_back(fault_server, th, avatar, kill_stub):
    """deploy/watchdog.py: a canary round after a stage's stub died names the stage and reloads it; the next round
    passes and user turns succeed again, with no operator."""
    from deploy.watchdog import Watchdog

    stage, lines = "tts", []
    dog = Watchdog(fault_server.options.grpc_url, fault_server.reload_model, timeout_s=CANARY_TIMEOUT_S,
                   log=lines.append)
    assert dog.check().ok, lines
    old = kill_stub(stage)
    with pytest.raises(ServerError, match=f"Stub process '{stage}_0_0' is not healthy"):
        th.turn(avatar_id=avatar.id, **SHORT_TURN)
    broken = dog.check()
    assert not broken.ok and broken.failed_model == stage and broken.reloaded == stage, lines
    assert dog.check().ok, lines
    assert {s.model: s for s in stubs(fault_server.process.pid)}[stage].pid != old.pid
    result = th.turn(avatar_id=avatar.id, **SHORT_TURN)
    assert result.done is not None and result.audio.size > 0
    print("\n" + "\n".join(lines))


def _blue_less_demo_face() -> bytes:
    img = cv2.imdecode(np.frombuffer(demo_avatar_png(), np.uint8), cv2.IMREAD_COLOR)
    img[:, :, 0] = 0  # no blue at all: the faulty stage's marker
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def test_a_stage_raising_fails_only_its_session(fault_server, th, avatar):
    marked = th.register_avatar(_blue_less_demo_face())
    assert marked.id != avatar.id
    with ThreadPoolExecutor(3) as pool:
        healthy = [pool.submit(th.turn, avatar_id=avatar.id, **SHORT_TURN) for _ in range(2)]
        t0 = time.perf_counter()
        with pytest.raises(ServerError) as failed:
            th.turn(avatar_id=marked.id, **SHORT_TURN)
        failed_s = time.perf_counter() - t0
        results = [f.result(timeout=120) for f in healthy]
    assert f"{LIPSYNC}: faulty_stage: refusing a face" in failed.value.message, failed.value.message
    assert failed.value.message.startswith(f"internal error: StageError: {LIPSYNC}:"), failed.value.message
    for r in results:  # the sessions beside it, served by the same lipsync instance, complete
        assert r.done is not None and r.audio.size > 0 and r.frames
    after = th.turn(avatar_id=avatar.id, **SHORT_TURN)  # and the stage keeps serving: no reload needed
    assert after.done is not None and after.frames
    assert _ready(fault_server)
    print(f"\nthe marked session failed after {failed_s:.2f} s with {failed.value.message!r}; "
          f"{len(results)} concurrent sessions and the next one completed with video")


@unless_triton_aborts
def test_a_dead_orchestrator_ends_its_streams_at_the_door_and_the_watchdog_brings_it_back(fault_server, th, avatar,
                                                                                          kill_stub):
    """Triton 2.51 leaves the streams of a killed orchestrator stub open forever, health 200. Through the front door
    such a stream ends with UNAVAILABLE once the server has sent nothing for max_upstream_silence_s with a turn in
    flight; the watchdog's next round names talking_head and reloads it, and turns work again."""
    import queue

    import tritonclient.grpc as grpcclient

    from client.wire import action_inputs
    from deploy.front_door import FrontDoorOptions, FrontDoorThread
    from deploy.front_door.quota import ApiKeys, Limits
    from deploy.watchdog import Watchdog

    key, silence = "carol-key-0123456789abcdef", 2.0
    options = FrontDoorOptions(upstream=fault_server.options.grpc_url, listen="127.0.0.1:0",
                               keys=ApiKeys({"carol": key}), limits=Limits(max_upstream_silence_s=silence))
    results: queue.Queue = queue.Queue()
    with FrontDoorThread(options) as door:
        client = grpcclient.InferenceServerClient(door.url)
        client.start_stream(callback=lambda result, error: results.put(error),
                            headers={"authorization": f"Bearer {key}", "triton_grpc_error": "true"})
        # idle motion for 60 s: paced in real time, so the request is in flight when its stub dies
        client.async_stream_infer(spec.TALKING_HEAD.name, action_inputs("idle", avatar.id, {"idle_s": 60}))
        assert results.get(timeout=60) is None  # its first frame: the turn runs
        kill_stub("talking_head")
        t0 = time.monotonic()
        error = None
        while error is None:
            error = results.get(timeout=30)
        ended_s = time.monotonic() - t0
        client.stop_stream()
        client.close()
    assert error.status() == "StatusCode.UNAVAILABLE" and f"sent nothing for {silence:g} s" in error.message()
    assert ended_s < silence + 5, ended_s
    lines: list[str] = []
    dog = Watchdog(fault_server.options.grpc_url, fault_server.reload_model, timeout_s=CANARY_TIMEOUT_S,
                   log=lines.append)
    broken = dog.check()
    assert not broken.ok and broken.failed_model == "talking_head" and broken.reloaded == "talking_head", lines
    assert dog.check().ok, lines
    result = th.turn(avatar_id=avatar.id, **SHORT_TURN)
    assert result.done is not None and result.audio.size > 0
    print(f"\nstream ended {ended_s:.2f} s after the orchestrator's stub died; " + "; ".join(lines))


def test_a_full_or_draining_server_is_alive_to_the_canary_and_the_watchdog_leaves_it_alone(fault_server, th, avatar,
                                                                                             tmp_path):
    """Every turn slot taken, then talking_head unloading for a drain, then unloaded: none is a broken model. The
    liveness canary (Kubernetes' probe) passes as `busy` (before: it failed, 6 of 7 under load, and three failures
    restart the container); the watchdog reloads nothing and readiness stays (before: it loaded talking_head back in
    the middle of the drain, and a full pod left its Service); the unloaded model stays unloaded."""
    from deploy.admin import unload_orchestrator
    from deploy.watchdog import Watchdog

    url, lines, ready = fault_server.options.grpc_url, [], tmp_path / "ready"
    dog = Watchdog(url, fault_server.reload_model, timeout_s=CANARY_TIMEOUT_S, log=lines.append, ready_file=ready)
    fault_server.set_parameters("talking_head", {"max_sessions": 1})
    try:
        assert dog.check().ok and ready.exists(), lines
        turn = Background(th, avatar.id, LONG_TURN)
        turn.wait_for(ev.AUDIO)
        rc, out, _ = _canary(fault_server)
        assert rc == 0 and "canary busy" in out and "server busy: 1 turns in flight (limit 1)" in out, out
        full = dog.check()
        assert full.busy and full.reloaded is None and ready.exists(), lines
        unload_orchestrator(url, fault_server.options.admin_key)
        draining = dog.check()
        assert draining.busy and "has no available versions" in draining.error and draining.reloaded is None, lines
        rc, out, _ = _canary(fault_server)
        assert rc == 0 and "canary busy" in out, out
        turn.thread.join(120)
        assert turn.error is None and ev.DONE in turn.kinds  # the drained turn ran to its end
        with fault_server.admin_client() as admin:
            headers, deadline = admin_headers(fault_server.options.admin_key), time.monotonic() + 30
            while {m.name: m.state for m in admin.get_model_repository_index(headers=headers).models
                   }["talking_head"] != "UNAVAILABLE":  # unloaded (UNLOADING until its streams close)
                assert time.monotonic() < deadline, "talking_head did not finish unloading"
                time.sleep(0.2)
            unloaded = dog.check()  # Triton: "has no available versions" still
            assert unloaded.busy and unloaded.reloaded is None and ready.exists(), lines
            assert not admin.is_model_ready("talking_head"), lines
        print("\n" + "\n".join(lines))
    finally:
        with fault_server.admin_client() as admin:  # the repository's config again (max_sessions as exported)
            admin.load_model("talking_head", headers=admin_headers(fault_server.options.admin_key))
