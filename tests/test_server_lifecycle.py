"""The embedded server starts, serves and stops cleanly; the demo runs end to end."""
import os
import subprocess
import sys

import av
import cv2
import numpy as np
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


def test_demo_answers_with_a_voice_and_a_moving_mouth(tmp_path):
    """The README's demo command, end to end on the real weight set: it hears the question, answers it, the answer's
    audio is intelligible to the served ASR, and the mouth is not the same in every frame of the answer."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "deploy.demo", "--out", str(out), "--grpc-port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout
    for line in ("first audio chunk (TTFA)", "first video frame (TTFF)", "real-time factor", "cold turn:"):
        assert line in log
    assert "transcript: What is the capital of France?" in log
    assert "paris" in log.split("reply:", 1)[1].split("\n", 1)[0].lower()
    heard = int(log.split("the ASR hears in it:", 1)[1].split("(", 1)[1].split("%", 1)[0])
    assert heard >= 80, log[-2000:]
    with av.open(str(out / "answer.mp4")) as c:
        assert sorted(s.codec_context.name for s in c.streams) == ["aac", "h264"]
    assert (out / "answer.wav").stat().st_size > 1000
    sheet = cv2.imread(str(out / "answer_mouth.png"), cv2.IMREAD_GRAYSCALE)
    tiles = np.array_split(sheet[:, : sheet.shape[1] // 10 * 10], 10, axis=1)
    assert max(float(np.abs(t.astype(int) - tiles[0].astype(int)).mean()) for t in tiles) > 2.0  # the lips move
