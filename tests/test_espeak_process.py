"""espeak-ng in its own process: the texts that crash it fail their call, and the next call is read."""
from __future__ import annotations

import pytest

from export.contract.espeak_process import EspeakFailed, EspeakProcess

# each one a SIGSEGV of the process that calls the espeak-ng of piper-phonemize-cross 1.2.1
CRASHERS = ["a.m." * 44, "s'" * 220, "e.g. " * 341]


@pytest.fixture
def espeak():
    e = EspeakProcess()
    yield e
    e.close()


def test_it_reads_as_piper_phonemize_does(espeak):
    import piper_phonemize

    text = "Dr. Smith paid five dollars. Is that so?"
    assert espeak(text, "en-us") == piper_phonemize.phonemize_espeak(text, "en-us")


@pytest.mark.parametrize("text", CRASHERS, ids=["dotted-abbreviations", "stacked-suffixes", "e.g.-spaced"])
def test_a_text_that_crashes_espeak_fails_its_call_only(espeak, text):
    before = espeak("Hello.", "en-us")
    with pytest.raises(EspeakFailed, match=rf"espeak-ng crashed on a {len(text)}-character text \(killed by SIG"):
        espeak(text, "en-us")
    assert espeak("Hello.", "en-us") == before  # a new child reads the next text
    assert espeak.restarts == 1


def test_a_call_past_its_time_is_stopped_and_the_next_one_read(espeak):
    import os
    import signal

    espeak("Hello.", "en-us")
    os.kill(espeak._proc.pid, signal.SIGSTOP)  # as an espeak-ng that never returns
    espeak.timeout_s = 0.5
    with pytest.raises(EspeakFailed, match="took over 0.5 s on a 6-character text and was stopped"):
        espeak("Hello.", "en-us")
    espeak.timeout_s = 10.0
    assert espeak("Hello.", "en-us") and espeak.restarts == 1


def test_espeaks_own_refusal_is_raised_and_the_child_lives(espeak):
    with pytest.raises(RuntimeError) as e:
        espeak("Hello.", "xx-nope")
    assert not isinstance(e.value, EspeakFailed)
    assert espeak("Hello.", "en-us") and espeak.restarts == 0


def test_the_child_is_the_callers_and_goes_with_close(espeak):
    import os

    from deploy.processes import children

    espeak("Hello.", "en-us")
    pid = espeak._proc.pid
    assert pid in children(os.getpid())  # benchmarks count its CPU with its parent's (loadtests/bench_gpu.py)
    espeak.close()
    assert pid not in children(os.getpid())


def test_sigterm_ends_the_child_whatever_the_parent_does_with_it(espeak):
    """A Triton stub handles SIGTERM by setting a flag; a forked child keeping that handler outlived the stub's exit
    and held the model's unload to Triton's exit timeout. An ignored SIGTERM would survive even an exec."""
    import os
    import signal

    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited across exec, unlike a handler
    try:
        espeak("Hello.", "en-us")
        os.kill(espeak._proc.pid, signal.SIGTERM)
        assert espeak._proc.wait(5) == -signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, old)


def test_the_child_is_a_new_interpreter_not_a_fork(espeak):
    """A fork of a process running other threads (pytest's gRPC clients here) once aborted on its first text."""
    espeak("Hello.", "en-us")
    with open(f"/proc/{espeak._proc.pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert argv[1:3] == [b"-m", b"export.contract.espeak_process"]


def test_in_a_triton_stub_the_interpreter_is_the_callers_python(monkeypatch):
    import os
    import sys

    from export.contract.espeak_process import python_interpreter

    monkeypatch.setattr(sys, "executable", "/opt/tritonserver/backends/python/triton_python_backend_stub")
    exe = python_interpreter()
    assert os.path.basename(exe) == f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert os.access(exe, os.X_OK)


def _pid_gone(pid: int) -> bool:
    import psutil

    try:  # a zombie has exited, waiting for its new parent to reap it
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _child_of_a_process_that(ends: str) -> int:
    import subprocess
    import sys

    script = ("import os, sys\nfrom export.contract.espeak_process import EspeakProcess\n"
              f"e = EspeakProcess(); e('Hello.', 'en-us'); print(e._proc.pid, flush=True); {ends}\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout)


def test_the_child_is_reaped_before_its_parent_exits():
    """A Triton stub's exit: the child is not left for init, and tritonserver's exit leaves no process behind."""
    import os

    pid = _child_of_a_process_that(ends="sys.exit(0)")
    assert not os.path.exists(f"/proc/{pid}")


def test_the_child_ends_with_its_parent_however_it_dies():
    """A killed parent runs no exit code: the child reads the end of its pipe and ends itself."""
    import time

    pid = _child_of_a_process_that(ends="os._exit(0)")
    deadline = time.monotonic() + 10
    while not _pid_gone(pid):
        assert time.monotonic() < deadline, f"espeak-ng child {pid} outlived its parent"
        time.sleep(0.05)
