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
    espeak("Hello.", "en-us")
    espeak.timeout_s = 0.0  # no answer can come in no time
    with pytest.raises(EspeakFailed, match="took over 0 s on a 6-character text and was stopped"):
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
    """A Triton stub handles SIGTERM by setting a flag; a child keeping that handler outlived multiprocessing's
    terminate at the stub's exit, whose join then held the model's unload to Triton's exit timeout."""
    import os
    import signal

    old = signal.signal(signal.SIGTERM, lambda *_: None)  # as the stub: SIGTERM does not end it
    try:
        espeak("Hello.", "en-us")
        os.kill(espeak._proc.pid, signal.SIGTERM)
        espeak._proc.join(5)
        assert espeak._proc.exitcode == -signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, old)
