"""espeak-ng in a child process: a crash inside espeak-ng ends one call, never the process that serves turns.

The espeak-ng that piper-phonemize-cross 1.2.1 bundles has memory-safety bugs that plain text reaches, each a
SIGSEGV of the calling process: "a.m." * 44 (a dotted abbreviation copied past an 80-byte stack buffer, fixed
upstream in espeak-ng#2428), "s'" * 220 (suffixes stacked past a 200-byte buffer, espeak-ng#2495), "e.g. " * 341.
In the orchestrator's stub one such `say` (or an LLM reply holding one) killed the stub, and every turn of every
client failed until the model was reloaded. So espeak-ng runs in a child forked from the caller, answering over a
pipe: when the child dies, or takes longer than `timeout_s`, the call raises `EspeakFailed` saying so, and the next
call forks a new child. One child per `EspeakProcess`; calls take turns (espeak-ng keeps its state in C globals).

    espeak = EspeakProcess()
    espeak("Hello there.", "en-us")      # [['h', 'ə', 'l', 'ˈ', 'o', 'ʊ', ...]]  (piper_phonemize.phonemize_espeak)

Forked, not spawned: a Triton Python stub has no reliable `sys.executable` to spawn with, and the child needs only
what the caller already imported. A round trip costs ~0.1 ms beside espeak-ng's own work.
"""
from __future__ import annotations

import faulthandler
import multiprocessing as mp
import signal
import threading
from multiprocessing.connection import Connection


class EspeakFailed(RuntimeError):
    """espeak-ng died or hung on a text; that text was not phonemized."""


def _serve(conn: Connection, parent_end: Connection) -> None:
    """The child: phonemize each (text, voice, data_path) it receives until its parent goes away."""
    parent_end.close()  # else the parent's death would not end this loop
    faulthandler.disable()  # a crash here is the parent's to report, without a traceback dump in its log
    for sig in (signal.SIGTERM, signal.SIGINT):  # a Triton stub's handlers only set a flag: the parent's exit
        signal.signal(sig, signal.SIG_DFL)       # terminates this child (multiprocessing's atexit) and joins it
    import piper_phonemize

    while True:
        try:
            text, voice, data_path = conn.recv()
        except (EOFError, OSError):
            return
        try:
            args = (text, voice) if data_path is None else (text, voice, data_path)
            conn.send(("ok", piper_phonemize.phonemize_espeak(*args)))
        except Exception as e:  # espeak-ng's own refusal (an unknown voice, ...): the parent raises it
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class EspeakProcess:
    """`piper_phonemize.phonemize_espeak`, run in a child process that is replaced when it dies."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self.restarts = 0  # children started after the first
        self._lock = threading.Lock()
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        ctx = mp.get_context("fork")
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child_end, parent_end), name="espeak-ng", daemon=True)
        proc.start()
        child_end.close()
        if self._proc is not None:
            self.restarts += 1
        self._proc, self._conn = proc, parent_end

    def _stop(self) -> int | None:
        """Ends the child (if it still runs) and returns how it ended."""
        proc, conn = self._proc, self._conn
        self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        return proc.exitcode

    def __call__(self, text: str, voice: str, data_path: str | None = None) -> list[list[str]]:
        with self._lock:
            if self._conn is None or self._proc is None or not self._proc.is_alive():
                self._stop()
                self._start()
            assert self._conn is not None
            try:
                self._conn.send((text, voice, data_path))
                if not self._conn.poll(self.timeout_s):
                    self._stop()
                    raise EspeakFailed(f"espeak-ng took over {self.timeout_s:g} s on a {len(text)}-character text "
                                       "and was stopped; the text was not spoken")
                status, value = self._conn.recv()
            except (EOFError, OSError):  # the pipe broke: the child died
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
