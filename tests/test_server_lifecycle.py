"""The embedded server starts, serves and stops cleanly; the demo runs end to end."""
import os
import subprocess
import sys

import av
import pytest

from deploy.processes import leaked_shm, server_ports
from deploy.server import EmbeddedServer, ServerOptions
from export.contract.layout import ROOT

pytestmark = pytest.mark.server


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_stop_leaves_no_stub_process_and_no_shared_memory(exported_repository, tmp_path):
    before = set(leaked_shm())
    server = EmbeddedServer(ServerOptions(repository=exported_repository, workdir=tmp_path,
                                          **server_ports()))
    server.start()
    pid = server.process.pid
    stubs = _children(pid)
    assert len(stubs) >= 8, "one Python stub per model instance"
    assert set(leaked_shm()) - before, "the Python backend uses /dev/shm while serving"
    assert server.stop() == 0
    assert not [p for p in stubs if os.path.exists(f"/proc/{p}")], "stub processes outlived the server"
    assert set(leaked_shm()) - before == set(), "shared memory leaked"


def test_demo_writes_answer_wav_and_mp4(exported_repository, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "deploy.demo", "--out", str(out), "--grpc-port", "18301"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in ("first audio chunk (TTFA)", "first video frame (TTFF)", "real-time factor", "SEEDED RANDOM"):
        assert line in proc.stdout
    with av.open(str(out / "answer.mp4")) as c:
        assert sorted(s.codec_context.name for s in c.streams) == ["aac", "h264"]
    assert (out / "answer.wav").stat().st_size > 1000
