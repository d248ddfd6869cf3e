"""Shutdown with a turn in flight (ports 18900-18902).

Triton 2.51's own SIGTERM handling stops every model at once and counts no decoupled BLS turn as
in flight, so a turn still running fails at its next stage call ("Server not ready"):
`test_sigterm_straight_to_tritonserver_cuts_the_turn_in_flight` pins that down. The server's
entrypoint (`python -m deploy.server`, EmbeddedServer.stop) therefore drains first: on SIGTERM it
creates the drain file (new registrations refused, UNAVAILABLE) and asks Triton (explicit model
control) to unload `talking_head`, which Triton marks UNLOADING at once: `/v2/health/ready` turns
503 and new turns are refused by Triton, while the turns in flight run to their end (the unload
waits for them). When `talking_head_active_sessions` is 0 it gives Triton its SIGTERM.
`test_sigterm_to_the_server_drains_the_turn_in_flight` checks that path end to end.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from client.retry import is_retryable_refusal
from client.sdk import ClientError, ServerError, TalkingHeadClient
from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.contract import events as ev
from export.contract.layout import ROOT

pytestmark = pytest.mark.server

PYTHON_SHM = "triton_python_backend_shm_region"  # the stock Python backend's regions
PORTS = server_ports()
GRPC_URL = f"localhost:{PORTS['grpc_port']}"
READY_URL = f"http://localhost:{PORTS['http_port']}/v2/health/ready"
LONG_TURN = dict(text="Please tell me a long story about the sea.", options={"max_reply_tokens": 120, "ignore_eos": True})
EXIT_TIMEOUT_S = 30


def _ready() -> bool:
    try:
        with urllib.request.urlopen(READY_URL, timeout=1) as r:
            return r.status == 200
    except OSError:  # refused, reset, 503 (HTTPError is an OSError)
        return False


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _shm_regions(*pids: int) -> set[str]:
    """Shared-memory regions of the Python backend (`triton_python_backend_shm_region_*`) and of the
    Python-based `ort_cpu` backend (`triton_ort_cpu_backend_shm_region_*`) that these processes map:
    ours only, other servers may run beside."""
    names = set()
    for pid in pids:
        with open(f"/proc/{pid}/maps") as f:
            names |= {Path(line.split()[-1]).name for line in f
                      if "/dev/shm/triton_" in line and "_backend_shm_region_" in line}
    return names


class Watch:
    """A turn in a thread: its events with arrival times, and its error."""

    def __init__(self, client: TalkingHeadClient, avatar_id: str, t0: float):
        self.events: list[tuple[float, str]] = []
        self.error: Exception | None = None
        self.t0 = t0
        self.thread = threading.Thread(target=self._run, args=(client, avatar_id), daemon=True)
        self.thread.start()

    def _run(self, client, avatar_id):
        try:
            for e in client.ask(avatar_id=avatar_id, **LONG_TURN):
                self.events.append((time.perf_counter() - self.t0, e.type))
        except Exception as e:  # recorded, asserted by the test
            self.error = e

    def wait_for(self, kind: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(k == kind for _, k in self.events):
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"no {kind} event in {timeout_s} s"
            time.sleep(0.005)


def _unready_after(t0: float, limit_s: float) -> float | None:
    while time.perf_counter() - t0 < limit_s:
        if not _ready():
            return time.perf_counter() - t0
        time.sleep(0.01)
    return None


class Readiness:
    """/v2/health/ready polled every 10 ms in a thread: (seconds since t0, ready) at every change."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.changes: list[tuple[float, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            ready = _ready()
            if not self.changes or self.changes[-1][1] != ready:
                self.changes.append((time.perf_counter() - self.t0, ready))
            time.sleep(0.01)

    def first_unready_after(self, t: float) -> float | None:
        return next((s for s, ready in self.changes if s >= t and not ready), None)


def _long_turn_under_watch():
    """A long turn streaming (after its first audio chunk) with readiness polled beside it (and ready so far):
    (client, avatar, t0, turn, readiness)."""
    client = TalkingHeadClient(GRPC_URL, turn_timeout_s=120)
    avatar = client.register_avatar(demo_avatar_png())
    t0 = time.perf_counter()
    turn = Watch(client, avatar.id, t0)
    turn.wait_for(ev.AUDIO)
    readiness = Readiness(t0)
    time.sleep(0.05)
    assert readiness.changes == [(readiness.changes[0][0], True)]
    return client, avatar, t0, turn, readiness


def test_sigterm_to_the_server_drains_the_turn_in_flight(exported_repository, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "deploy.server", "--repository", str(exported_repository),
                             "--workdir", str(tmp_path), "--exit-timeout", str(EXIT_TIMEOUT_S),
                             *(f"--{k.replace('_', '-')}={v}" for k, v in PORTS.items())],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while not any("Ctrl-C stops it" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        triton = _descendants(proc.pid)  # tritonserver and its stubs
        regions = _shm_regions(*triton)
        assert any(r.startswith(PYTHON_SHM) for r in regions) and any("ort_cpu" in r for r in regions), regions
        assert oct((tmp_path / "admin-key").stat().st_mode & 0o777) == "0o600"  # the per-run admin key

        client, avatar, t0, turn, readiness = _long_turn_under_watch()
        t_term = time.perf_counter() - t0
        proc.send_signal(signal.SIGTERM)

        # readiness goes at once; a new turn is then refused by Triton itself, at once, and a new
        # registration by the registry (drain file)
        while readiness.first_unready_after(t_term) is None:  # bounded by the turn: it must not end first
            assert turn.thread.is_alive(), "the turn in flight ended while the server still said ready"
            time.sleep(0.005)
        unready_s = readiness.first_unready_after(t_term) - t_term
        t_new = time.perf_counter()
        with TalkingHeadClient(GRPC_URL, turn_timeout_s=30) as late:
            with pytest.raises(ServerError) as refused:
                late.turn(text="A new turn.", avatar_id=avatar.id)
            refused_s = time.perf_counter() - t_new
            with pytest.raises(ServerError, match="server is shutting down"):
                late.register_avatar(demo_avatar_png())
        assert "Request for unknown model: 'talking_head' has no available versions" in refused.value.message, \
            refused.value.message
        assert is_retryable_refusal(refused.value.message)  # the SDK's RetryPolicy tries another time/replica

        # the turn in flight runs to its done event, the server stays unready, then exits
        turn.thread.join(EXIT_TIMEOUT_S + 15)
        assert turn.error is None, turn.error
        kinds = [k for _, k in turn.events]
        assert kinds[-1] == ev.DONE
        done_s = turn.events[-1][0]
        assert proc.wait(EXIT_TIMEOUT_S + 30) == 0
        exit_s = time.perf_counter() - t0
        readiness.stop.set()
        readiness.thread.join(5)
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(lines)
    after_term = [(s, r) for s, r in readiness.changes if s >= t_term]
    print(f"\nSIGTERM at {t_term:.2f} s into the turn; /v2/health/ready unready {unready_s * 1000:.0f} ms later; "
          f"new turn refused in {refused_s * 1000:.0f} ms ({refused.value.message!r}); turn in flight done at "
          f"{done_s:.2f} s ({done_s - t_term:.2f} s after SIGTERM, {kinds.count(ev.AUDIO)} audio chunks); "
          f"process exited at {exit_s:.2f} s; readiness after SIGTERM: {after_term}; {len(triton)} processes and "
          f"{len(regions)} shared-memory regions gone\n{log.strip().splitlines()[-1]}")
    # behaviour, not wall time: readiness went off while the turn in flight was still streaming
    assert t_term + unready_s < done_s
    assert all(not r for _, r in after_term), "ready again before the process exited"
    assert "drained in" in log
    time.sleep(0.2)
    assert [p for p in triton if os.path.exists(f"/proc/{p}")] == [], "tritonserver or a stub outlived the server"
    assert {r for r in regions if os.path.exists(f"/dev/shm/{r}")} == set(), "shared memory leaked"
    assert not (tmp_path / "draining").exists() and not (tmp_path / "admin-key").exists()


def test_sigterm_straight_to_tritonserver_cuts_the_turn_in_flight(exported_repository, tmp_path):
    """Why the entrypoint drains first: Triton's own SIGTERM handling, measured."""
    server = EmbeddedServer(ServerOptions(repository=exported_repository, workdir=tmp_path,
                                          exit_timeout_s=EXIT_TIMEOUT_S, **PORTS))
    server.start()
    try:
        pid = server.process.pid
        stubs = _descendants(pid)
        regions = _shm_regions(pid, *stubs)
        assert any(r.startswith(PYTHON_SHM) for r in regions) and any("ort_cpu" in r for r in regions), regions
        client = TalkingHeadClient(GRPC_URL, turn_timeout_s=60)
        avatar = client.register_avatar(demo_avatar_png())
        t0 = time.perf_counter()
        turn = Watch(client, avatar.id, t0)
        turn.wait_for(ev.AUDIO)
        t_term = time.perf_counter() - t0
        server.process.send_signal(signal.SIGTERM)
        unready_s = _unready_after(t0, 5)
        turn.thread.join(30)
        code = server.process.wait(EXIT_TIMEOUT_S + 15)
        exit_s = time.perf_counter() - t0
        client.close()
    finally:
        server.stop()
    print(f"\nSIGTERM straight to tritonserver at {t_term:.2f} s into the turn: /v2/health/ready unready "
          f"{(unready_s - t_term) * 1000:.0f} ms later; the turn in flight failed: {turn.error}; "
          f"exit code {code} at {exit_s:.2f} s")
    assert unready_s is not None  # unready at once: polled for 5 s after SIGTERM (the timings: the print above)
    assert isinstance(turn.error, ClientError) and "Server not ready" in str(turn.error)  # Triton 2.51
    assert ev.DONE not in [k for _, k in turn.events]
    assert code == 0
    assert [p for p in stubs if os.path.exists(f"/proc/{p}")] == []
    assert {r for r in regions if os.path.exists(f"/dev/shm/{r}")} == set()


def test_drain_unload_for_kubernetes_prestop(exported_repository, tmp_path, monkeypatch):
    """`python -m deploy.drain --unload` (the Kubernetes preStop): readiness off at once, the turn in flight
    finishes, and once the unload completes strict readiness says 200 again (an unloaded model does not
    count): which is why the kubelet's SIGTERM, or deploy.server's, must follow the drain at once."""
    from deploy import drain

    server = EmbeddedServer(ServerOptions(repository=exported_repository, workdir=tmp_path, **PORTS))
    server.start()
    try:
        monkeypatch.setenv("TEST_ADMIN_KEY", server.options.admin_key)
        client, _, t0, turn, readiness = _long_turn_under_watch()
        t_drain = time.perf_counter() - t0
        code = drain.main(["--url", f"localhost:{PORTS['metrics_port']}", "--timeout", "60", "--interval", "0.05",
                           "--unload", "--grpc-url", GRPC_URL, "--admin-key-env", "TEST_ADMIN_KEY"])
        drained_s = time.perf_counter() - t0
        turn.thread.join(30)
        deadline = time.monotonic() + 15
        while not _ready() and time.monotonic() < deadline:  # the unload completes ~1 s after the last turn
            time.sleep(0.02)
        ready_again = _ready()
        ready_again_s = time.perf_counter() - t0
        readiness.stop.set()
        readiness.thread.join(5)
        client.close()
    finally:
        server.stop()
    unready_s = readiness.first_unready_after(t_drain) - t_drain
    print(f"\ndeploy.drain --unload at {t_drain:.2f} s into the turn: unready {unready_s * 1000:.0f} ms later; the turn "
          f"finished at {turn.events[-1][0]:.2f} s; drain returned {code} at {drained_s:.2f} s; /v2/health/ready 200 "
          f"again at {ready_again_s:.2f} s (talking_head unloaded)")
    assert code == 0
    assert t_drain + unready_s < turn.events[-1][0], "still ready after the drain started, until the turn ended"
    assert turn.error is None and turn.events[-1][1] == ev.DONE
    assert ready_again, "strict readiness stayed 503 for 15 s after talking_head was unloaded"


def test_a_dead_tritonserver_makes_the_launcher_fail_and_its_log_is_kept(exported_repository, tmp_path):
    """tritonserver killed under the launcher: `python -m deploy.server` exits non-zero (so compose or Kubernetes
    restarts it), prints the log's end, and the next start keeps that log as tritonserver.log.1."""
    ports = server_ports()
    argv = [sys.executable, "-m", "deploy.server", "--repository", str(exported_repository), "--workdir",
            str(tmp_path), *(f"--{k.replace('_', '-')}={v}" for k, v in ports.items())]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    deadline = time.monotonic() + 180
    while not any("Ctrl-C stops it" in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    # the launcher says ready only after a spoken and a text turn went through every model (deploy/canary.py)
    assert any(line.startswith("warm-up turns (deploy/canary.py): ") for line in lines), "".join(lines)
    import psutil

    (triton,) = [p for p in _descendants(proc.pid) if psutil.Process(p).name() == "tritonserver"]
    os.kill(triton, signal.SIGKILL)
    assert proc.wait(timeout=60) != 0, "".join(lines)
    assert "tritonserver died on its own" in "".join(lines)
    first_log = (tmp_path / "tritonserver.log").read_text()
    second = EmbeddedServer(ServerOptions(repository=exported_repository, workdir=tmp_path, **server_ports()))
    second.start()
    second.stop()
    assert (tmp_path / "tritonserver.log.1").read_text() == first_log
