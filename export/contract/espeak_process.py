"""espeak-ng in a child process: a crash inside espeak-ng ends one call, never the process that serves turns.

The espeak-ng that piper-phonemize-cross 1.2.1 bundles has memory-safety bugs that plain text reaches, each a
SIGSEGV of the calling process: "a.m." * 44 (a dotted abbreviation copied past an 80-byte stack buffer, fixed
upstream in espeak-ng#2428), "s'" * 220 (suffixes stacked past a 200-byte buffer, espeak-ng#2495), "e.g. " * 341.
In the orchestrator's stub one such `say` (or an LLM reply holding one) killed the stub, and every turn of every
client failed until the model was reloaded. So espeak-ng runs in a child process, answering over a pair of pipes:
when the child dies, or takes longer than `timeout_s`, the call raises `EspeakFailed` saying so, and the next call
starts a new child. One child per `EspeakProcess`; calls take turns (espeak-ng keeps its state in C globals).

    espeak = EspeakProcess()
    espeak("Hello there.", "en-us")      # [['h', 'ə', 'l', 'ˈ', 'o', 'ʊ', ...]]  (piper_phonemize.phonemize_espeak)

A new interpreter (`python -m export.contract.espeak_process`), not a fork: a fork of a process that runs other
threads (gRPC's, a Triton stub's) may copy a lock held at that instant, and the child then aborted on its first
text. The interpreter is the caller's own (`sys.executable`, or in a Triton stub, where that may not name a Python,
`python3.X` of the caller's prefix), with the caller's `sys.path`. Starting one takes ~50 ms, once per child; a
round trip then costs ~0.1 ms beside espeak-ng's own work.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from pathlib import Path


class EspeakFailed(RuntimeError):
    """espeak-ng died or hung on a text; that text was not phonemized."""


def _serve(requests: Connection, answers: Connection) -> None:
    """The child: phonemize each (text, voice, data_path) it receives until its parent goes away."""
    for sig in (signal.SIGTERM, signal.SIGINT):  # an ignored signal survives exec: this child ends on either
        signal.signal(sig, signal.SIG_DFL)
    import piper_phonemize

    while True:
        try:
            text, voice, data_path = requests.recv()
        except (EOFError, OSError):  # the parent closed its end or died
            return
        try:
            args = (text, voice) if data_path is None else (text, voice, data_path)
            answers.send(("ok", piper_phonemize.phonemize_espeak(*args)))
        except Exception as e:  # espeak-ng's own refusal (an unknown voice, ...): the parent raises it
            answers.send(("error", f"{type(e).__name__}: {e}"))


def python_interpreter() -> str:
    """The caller's Python: `sys.executable` where it names one (a Triton stub may name itself, or nothing)."""
    exe = sys.executable
    if exe and Path(exe).name.startswith("python") and os.access(exe, os.X_OK):
        return exe
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for prefix in dict.fromkeys([sys.prefix, sys.exec_prefix, sys.base_prefix]):
        candidate = Path(prefix) / "bin" / version
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(version)
    if found is None:
        raise EspeakFailed(f"no {version} to run espeak-ng in (sys.executable is {exe!r}, prefix {sys.prefix})")
    return found


def _end(proc: subprocess.Popen) -> int | None:
    """Kills the child if it still runs; its return code (None: still not reaped after 5 s)."""
    if proc.poll() is None:
        proc.kill()
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None


def _how(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class EspeakProcess:
    """`piper_phonemize.phonemize_espeak`, run in a child process that is replaced when it dies."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self.restarts = 0  # children started after the first
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._requests: Connection | None = None
        self._answers: Connection | None = None
        self._reaper: weakref.finalize | None = None

    def _start(self) -> None:
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        env.pop("PYTHONFAULTHANDLER", None)  # a crash here is the parent's to report, without a traceback dump
        try:
            proc = subprocess.Popen([python_interpreter(), "-m", __name__, str(requests_r), str(answers_w)],
                                    stdin=subprocess.DEVNULL, pass_fds=(requests_r, answers_w), env=env)
        except BaseException:
            for fd in (requests_w, answers_r):
                os.close(fd)
            raise
        finally:
            os.close(requests_r)
            os.close(answers_w)
        if self._proc is not None:
            self.restarts += 1
        self._proc = proc
        # at the caller's exit too (a finalizer runs at exit): the child is gone, and reaped, before its parent is
        self._reaper = weakref.finalize(self, _end, proc)
        self._requests = Connection(requests_w, readable=False)
        self._answers = Connection(answers_r, writable=False)

    def _stop(self) -> int | None:
        """Ends the child (if it still runs) and returns how it ended."""
        for conn in (self._requests, self._answers):
            if conn is not None:
                conn.close()
        self._requests = self._answers = None
        if self._reaper is not None:
            self._reaper.detach()
            self._reaper = None
        return None if self._proc is None else _end(self._proc)

    def __call__(self, text: str, voice: str, data_path: str | None = None) -> list[list[str]]:
        with self._lock:
            if self._requests is None or self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._start()
            assert self._requests is not None and self._answers is not None
            try:
                self._requests.send((text, voice, data_path))
                if not self._answers.poll(self.timeout_s):
                    self._stop()
                    raise EspeakFailed(f"espeak-ng took over {self.timeout_s:g} s on a {len(text)}-character text "
                                       "and was stopped; the text was not spoken")
                status, value = self._answers.recv()
            except (EOFError, OSError):  # a pipe broke: the child died
                how = _how(self._stop())
                raise EspeakFailed(f"espeak-ng crashed on a {len(text)}-character text ({how}); the text was not "
                                   "spoken, and a new espeak-ng reads the next one") from None
        if status == "error":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        with self._lock:
            self._stop()
            self._proc = None


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
