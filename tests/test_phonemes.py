"""Text -> Piper phoneme ids (export/contract/phonemes.py) against piper-phonemize's own phonemize + ids path."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from piper_ref import SENTENCES, TEXT  # the voice's ids of TEXT, one list per sentence

from export.contract.phonemes import PhonemizerOptions, PiperPhonemizer, split_phonemes, symbol_kind
from export.contract.piper_voice import VoiceConfigError, read_voice_config
from export.contract.text_normalize import normalize_for_speech

PIECES = [
    "Sure, I can help with that.",
    "How can I help you today?",
    "Here are a few tips to get started:",
    "Honestly, it's hard to say; opinions vary a lot.",
    "The meeting is at 10:30 a.m. on Jan. 5, 2024.",
    "Dr. Smith paid $5.99 for the book... at 10:30!",
    "I think München and Beyoncé are in the news.",
    "Well — it's **25°C** in St. Louis 😊",
    'He said: "Go!" and left.',
    "(This is an aside.)",
]


def reference_ids(pp, text: str) -> list[list[int]]:
    """piper-phonemize's own path, one id list per non-empty sentence (what Piper's C++ binary synthesizes)."""
    return [pp.phoneme_ids_espeak(s) for s in pp.phonemize_espeak(text, "en-us") if s]


def test_known_sentence_ids(phonemizer, raw_phonemizer):
    assert [list(u.ids) for u in raw_phonemizer.utterances(TEXT)] == SENTENCES
    assert [list(u.ids) for u in phonemizer.utterances(TEXT)] == SENTENCES  # nothing to normalize here


@pytest.mark.parametrize("text", PIECES)
def test_raw_text_matches_piper_phonemize(pp, raw_phonemizer, text):
    assert [list(u.ids) for u in raw_phonemizer.utterances(text)] == reference_ids(pp, text)


@pytest.mark.parametrize("text", PIECES)
def test_normalized_text_matches_piper_phonemize(pp, phonemizer, text):
    assert [list(u.ids) for u in phonemizer.utterances(text)] == reference_ids(pp, normalize_for_speech(text))


def test_text_to_ids_flattens_sentences_like_piper_training(pp, raw_phonemizer):
    flat = [p for s in pp.phonemize_espeak(TEXT, "en-us") for p in s]
    assert raw_phonemizer.text_to_ids(TEXT) == pp.phoneme_ids_espeak(flat)


def test_layout_matches_piper_python_logic(phonemizer, voice_json):
    """Piper's phonemes_to_ids re-done from the voice json: ^ _ then (ids, pad) per phoneme, then $."""
    id_map = json.loads(Path(voice_json).read_text(encoding="utf-8"))["phoneme_id_map"]
    for u in phonemizer.utterances("Could you say that again, please? Yes!"):
        expected = id_map["^"] + id_map["_"]
        for p in u.phonemes:
            expected += id_map[p] + id_map["_"]
        assert list(u.ids) == expected + id_map["$"]
        assert u.ids[:2] == (1, 0) and u.ids[-2:] == (0, 2) and set(u.ids[1::2]) == {0}


def test_symbols_name_every_id(phonemizer):
    (u,) = phonemizer.utterances("Hello, world!")
    assert len(u.symbols) == len(u.ids)
    assert u.symbols[:2] == ("^", "_") and u.symbols[-1] == "$"
    assert "".join(u.symbols[2:-1:2]) == "".join(u.phonemes) == "həlˈoʊ, wˈɜːld!"
    assert phonemizer.symbols(u.ids) == list(u.symbols)
    assert phonemizer.id_to_symbol[120] == "ˈ" and phonemizer.id_to_symbol[3] == " "
    with pytest.raises(ValueError, match="not in"):
        phonemizer.symbols([1, 9999])
    kinds = {symbol_kind(s) for s in u.symbols}
    assert kinds == {"marker", "phoneme", "suprasegmental", "space", "punctuation"}
    assert [symbol_kind(s) for s in ("^", "_", "$", " ", ",", "ˈ", "ː", "ɹ", "\u0303")] == [
        "marker", "marker", "marker", "space", "punctuation", "suprasegmental", "suprasegmental", "phoneme",
        "phoneme"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "😊👍", "...", "!!!", "** **", "```"])
def test_nothing_to_say_gives_nothing(phonemizer, text):
    assert phonemizer.utterances(text) == []
    assert phonemizer.text_to_ids(text) == []
    assert phonemizer.phonemize(text) == []


def test_trailing_empty_sentence_is_dropped(pp, raw_phonemizer):
    assert pp.phonemize_espeak("(This is an aside.)", "en-us")[-1] == []  # what espeak gives
    assert len(raw_phonemizer.utterances("(This is an aside.)")) == 1


def test_long_sentence_is_split_under_max_ids(phonemizer):
    words = ("the quick brown fox jumps over the lazy dog and then it runs far away, " * 12).strip(", ") + "."
    (whole,) = phonemizer.phonemize(words)
    utts = phonemizer.utterances(words)
    assert len(utts) > 1
    assert all(len(u.ids) <= 400 and u.ids[:2] == (1, 0) and u.ids[-2:] == (0, 2) for u in utts)
    # nothing is lost but the spaces at the cuts, and every cut is after a clause mark or at a word boundary
    joined = [p for u in utts for p in u.phonemes]
    assert [p for p in joined if p != " "] == [p for p in whole if p != " "]
    for u in utts[:-1]:
        assert u.phonemes[-1] == "," or u.phonemes[-1].isalpha() or u.phonemes[-1] in "ːˈˌ"
    assert utts[-1].phonemes[-1] == "."


def test_max_ids_option_and_unbreakable_words(pp, voice_json):
    ph = PiperPhonemizer.from_json(voice_json, PhonemizerOptions(max_ids=64))
    utts = ph.utterances("Supercalifragilisticexpialidocious " * 4)
    assert utts and all(len(u.ids) <= 64 for u in utts)
    with pytest.raises(ValueError, match="too small"):
        PhonemizerOptions(max_ids=5)


def test_split_phonemes_prefers_clause_marks():
    ph = list("ab cd, ef gh ij")
    assert split_phonemes(ph, [2] * len(ph), 24) == [list("ab cd,"), list("ef gh ij")]
    assert split_phonemes(ph, [2] * len(ph), 10) == [list("ab"), list("cd,"), list("ef"), list("gh ij")]
    assert split_phonemes(ph, [2] * len(ph), 8) == [list("ab"), list("cd,"), list("ef"), list("gh"), list("ij")]
    assert split_phonemes(list("abcdef"), [2] * 6, 4) == [list("ab"), list("cd"), list("ef")]


def test_missing_phonemes_are_skipped_and_counted(pp, voice_json):
    voice = read_voice_config(voice_json)
    smaller = replace(voice, phoneme_id_map={k: v for k, v in voice.phoneme_id_map.items() if k != "ɹ"})
    ph = PiperPhonemizer(smaller)
    missing = Counter()
    (u,) = ph.utterances("A red car.", missing)
    assert missing == Counter({"ɹ": 2}) and "ɹ" not in u.symbols and 88 not in u.ids


def test_bad_voice_is_a_clear_error(pp, voice_json):
    voice = read_voice_config(voice_json)
    with pytest.raises(VoiceConfigError, match="cannot use voice 'xx-nope'"):
        PiperPhonemizer(replace(voice, espeak_voice="xx-nope"))
    with pytest.raises(VoiceConfigError, match="only espeak voices"):
        PiperPhonemizer(replace(voice, phoneme_type="text"))


def test_threads_get_the_serial_answer(phonemizer):
    texts = PIECES * 3
    expected = [phonemizer.utterances(t) for t in texts]
    results: dict[int, list] = {}

    def work(k: int) -> None:
        results[k] = [phonemizer.utterances(t) for t in (texts[k:] + texts[:k])]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, got in results.items():
        assert got == expected[k:] + expected[:k]


_WORKER = """
import json, sys
sys.path.insert(0, {root!r})
from export.contract.phonemes import PiperPhonemizer
ph = PiperPhonemizer.from_json({voice!r})
texts = json.loads(sys.stdin.read())
print(json.dumps([[list(u.ids) for u in ph.utterances(t)] for _ in range(20) for t in texts][-len(texts):]))
"""


def test_processes_run_at_once(phonemizer, voice_json):
    """Several orchestrator processes phonemize at the same time: each has its own espeak-ng."""
    root = str(Path(__file__).resolve().parents[1])
    code = _WORKER.format(root=root, voice=str(voice_json))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(json.dumps(PIECES), timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    expected = [[list(u.ids) for u in phonemizer.utterances(t)] for t in PIECES]
    assert all(json.loads(o) == expected for o in outs)
