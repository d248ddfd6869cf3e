from __future__ import annotations

import time

import numpy as np
import pytest

from ensemble.errors import InputError
from ensemble.text import Segmenter, SegmenterOptions, validate_text


def _run(text: str, deltas: list[int] | None = None, **kw) -> tuple[list[str], list[list[str]]]:
    seg = Segmenter(**kw)
    per_push = []
    if deltas is None:
        deltas = [1] * len(text)
    i = 0
    for n in deltas:
        per_push.append(seg.push(text[i:i + n]))
        i += n
    assert i >= len(text)
    per_push.append(seg.finish())
    return [p for ps in per_push for p in ps], per_push


REPLY = ("Well, that is a great question about the weather. It will be sunny tomorrow; "
         "however, the evening might bring some light rain, so take an umbrella with you "
         "when you go out. Anything else?")


def test_sentences_and_early_first_piece():
    pieces, _ = _run(REPLY)
    # first piece cut at the first clause mark (>= min_words? "Well," has 1 word, so not there)
    assert pieces[0] == "Well, that is a"
    assert pieces[1] == "great question about the weather."
    assert pieces[-1] == "Anything else?"
    assert " ".join(pieces) == REPLY
    for p in pieces:
        assert p == p.strip() and p and len(p.split()) <= 16


def test_first_piece_at_clause_mark():
    pieces, _ = _run("Sure thing, I can help with that. Here goes.")
    assert pieces == ["Sure thing,", "I can help with that.", "Here goes."]


def test_long_clause_split_on_clause_mark_and_word_limit():
    text = ("Okay then. one two three four five six seven eight nine, ten eleven twelve "
            "a b c d e f g h i j k l m n o p q r s t u v end")
    pieces, _ = _run(text)
    assert pieces[0] == "Okay then."
    assert pieces[1] == "one two three four five six seven eight nine,"  # clause mark after >= 8 words
    assert all(len(p.split()) <= 16 for p in pieces)
    assert pieces[2].split() == "ten eleven twelve a b c d e f g h i j k l m".split()  # 16-word limit
    assert " ".join(pieces) == text


def test_short_clause_not_split_later():
    pieces, _ = _run("Right now. I think, yes, that works fine. ")
    assert pieces == ["Right now.", "I think, yes, that works fine."]


def test_never_splits_inside_a_word_and_same_result_for_any_chunking():
    rng = np.random.default_rng(0)
    whole, _ = _run(REPLY, [len(REPLY)])
    for _ in range(20):
        sizes = list(rng.integers(1, 12, size=len(REPLY)))
        pieces, per_push = _run(REPLY, sizes)
        assert pieces == whole
    words = set(REPLY.split())
    for p in whole:
        assert set(p.split()) <= words  # every piece is made of whole words


def test_word_is_incomplete_until_followed_by_space():
    seg = Segmenter()
    assert seg.push("Hello there my frie") == [] and not seg.first_piece_sent
    assert seg.push("nd") == []  # "friend" may still continue
    assert seg.push(" and") == ["Hello there my friend"] and seg.first_piece_sent
    assert seg.finish() == ["and"]


def test_sentence_end_with_closing_quote_and_newline():
    pieces, _ = _run('He said "stop it." Then left\nNew line here')
    assert pieces == ['He said "stop it."', "Then left", "New line here"]


def test_decimal_and_min_words():
    pieces, _ = _run("Hi. Pi is 3.14 roughly. Ok.")
    # "Hi." alone is below min_words (2) and is merged; 3.14 is not a sentence end; the first
    # piece is cut at 4 words; "roughly." alone is below min_words; the last remainder is kept
    assert pieces == ["Hi. Pi is 3.14", "roughly. Ok."]
    pieces, _ = _run("Yes. I agree with you. Ok.", min_words=1)
    assert pieces == ["Yes.", "I agree with you.", "Ok."]


def test_no_empty_or_punctuation_only_pieces():
    assert _run("   \n  ")[0] == []
    assert _run("")[0] == []
    assert _run("Done here. ... ")[0] == ["Done here."]
    pieces, _ = _run("One. ! ? Two three.")
    assert all(any(c.isalnum() for c in p) for p in pieces)


def test_a_long_run_without_whitespace_is_scanned_once():
    """Tried from every character, 20000 dots took ~3.6 s of the orchestrator's event loop (2000: 36 ms, ~20 a
    second at the door's rate limit); from word starts only, well under a millisecond here."""
    s = Segmenter(4)
    t0 = time.thread_time()  # this thread's CPU time: another process on a shared machine does not stretch it
    assert s.push("." * 20000) == [] and s.finish() == []
    assert time.thread_time() - t0 < 1.0
    assert Segmenter(4).push("x" * 5000 + " and more words here. ") == ["x" * 5000 + " and more words"]


def test_segmenter_errors():
    with pytest.raises(ValueError):
        SegmenterOptions(first_max_words=1, min_words=2)
    with pytest.raises(ValueError):
        SegmenterOptions(max_words=3, first_max_words=4)
    seg = Segmenter()
    seg.finish()
    with pytest.raises(RuntimeError):
        seg.push("x")
    with pytest.raises(RuntimeError):
        seg.finish()


# --------------------------------------------------------------------------- validate_text


def test_validate_text_cleans():
    assert validate_text("  Hello\t\tworld \r\n\n\n  next\x00line\x07 ", 100) == "Hello world\nnextline"
    assert validate_text("caf\u0065\u0301".encode(), 10) == "caf\u00e9"  # NFC
    assert validate_text(b"\xef\xbb\xbfhi", 10) == "hi"  # BOM dropped
    assert validate_text(bytearray(b"ok"), 10) == "ok"
    assert validate_text(np.bytes_(b"numpy bytes"), 20) == "numpy bytes"


def test_validate_text_bad_utf8():
    with pytest.raises(InputError, match=r"^text is not valid UTF-8 \(byte 0xff at offset 3\)$"):
        validate_text(b"abc\xffdef", 100)
    with pytest.raises(InputError, match=r"byte 0xc3 at offset 0"):
        validate_text(b"\xc3(", 100)


@pytest.mark.parametrize("raw", ["", "   ", b"\n\t \r", "\x00\x01", "\u00a0\u2003"])
def test_validate_text_empty(raw):
    with pytest.raises(InputError, match=r"^text is empty$"):
        validate_text(raw, 100)


def test_validate_text_too_long():
    assert validate_text("x" * 10, 10) == "x" * 10
    with pytest.raises(InputError, match=r"^text has 11 characters; the limit is 10$"):
        validate_text("x" * 11, 10)
    # counted after cleaning: whitespace runs do not count against the limit
    assert validate_text("a" + " " * 40 + "b", 3) == "a b"
    # ... up to 16 raw bytes per allowed character, refused before any cleaning beyond that
    with pytest.raises(InputError, match=r"^text has 49 bytes before cleaning; the limit is 48"):
        validate_text("a" + " " * 47 + "b", 3)


def test_validate_text_wrong_type():
    with pytest.raises(InputError, match="text must be"):
        validate_text(123, 10)  # type: ignore[arg-type]
    assert issubclass(InputError, ValueError)


def test_abbreviations_end_no_piece():
    text = "Yes, I met Dr. Smith and Mrs. Jones in the U.S. last year, e.g. in May. It was fun."
    pieces, _ = _run(text)
    assert " ".join(pieces) == text
    assert not any(p.endswith(("Dr.", "Mrs.", "U.S.", "e.g.")) for p in pieces)
    assert pieces[-1] == "It was fun."
