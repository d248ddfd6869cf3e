"""Text handling: validating user text and cutting streamed LLM text into TTS pieces."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ensemble.errors import InputError
from export.contract.text_normalize import is_abbreviation

_SENTENCE_END = ".!?…"
_CLAUSE_MARK = ",;:"
_CLOSERS = "\"')]}»”’"  # may follow the punctuation: `end."` still ends the sentence
_TOKEN = re.compile(r"(?<!\S)\S+(?=(\s+))")  # a word is complete only once whitespace follows it; (?<!\S): tried
# from word starts only, else a long run without whitespace is tried from each of its characters (quadratic)
_HAS_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class SegmenterOptions:
    first_max_words: int = 4  # the first piece is cut after this many words even without punctuation
    max_words: int = 16  # later pieces are cut after this many words even without punctuation
    min_words: int = 2  # no piece (but the very last) is cut with fewer words than this
    clause_words: int = 8  # a later piece is cut at , ; : once it has at least this many words

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.first_max_words <= self.max_words:
            raise ValueError("need 1 <= min_words <= first_max_words <= max_words")
        if not self.min_words <= self.clause_words:
            raise ValueError("clause_words must be >= min_words")


class Segmenter:
    """Cuts streamed LLM text into pieces for TTS.

    `push(delta)` returns the pieces completed by this delta; `finish()` the remainder.
    Cuts happen only after a complete word (whitespace has followed it), at:
      * a sentence end (. ! ? …, optionally followed by closing quotes/brackets) or a newline;
      * a clause mark (, ; :) once the piece is long (first piece: as soon as it has
        min_words, to cut time to first audio; later pieces: clause_words);
      * the word limit (first_max_words for the first piece, then max_words).
    Every piece has at least min_words words (except the final remainder) and at least one
    letter or digit; a final remainder with no letter or digit (e.g. "...") is dropped, since
    there is nothing to speak. Pieces are stripped; inner whitespace is kept as written.
    """

    def __init__(self, first_max_words: int = 4, max_words: int = 16, min_words: int = 2, *,
                 options: SegmenterOptions | None = None) -> None:
        self.options = options or SegmenterOptions(first_max_words, max_words, min_words,
                                                   max(min_words, max_words // 2))
        self._buf = ""
        self._first = True  # the next piece is the first
        self._scan_from = 0  # tokens before this offset of _buf were already judged uncuttable
        self._words = 0  # words counted in _buf[:_scan_from]
        self._finished = False

    @property
    def first_piece_sent(self) -> bool:
        """Whether a piece has been returned yet (later pieces use max_words / clause_words)."""
        return not self._first

    def push(self, text_delta: str) -> list[str]:
        if self._finished:
            raise RuntimeError("push after finish")
        self._buf += text_delta
        out = []
        while (cut := self._find_cut()) is not None:
            piece, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip()
            self._scan_from = self._words = 0
            self._first = False
            out.append(piece)
        return out

    def finish(self) -> list[str]:
        if self._finished:
            raise RuntimeError("finish called twice")
        self._finished = True
        rest, self._buf = self._buf.strip(), ""
        return [rest] if _HAS_WORD.search(rest) else []

    def _find_cut(self) -> int | None:
        o = self.options
        limit = o.first_max_words if self._first else o.max_words
        clause_words = o.min_words if self._first else o.clause_words
        for m in _TOKEN.finditer(self._buf, self._scan_from):
            token = m.group(0)
            if _HAS_WORD.search(token):
                self._words += 1
            self._scan_from = m.end()
            n = self._words
            if n < o.min_words:
                continue
            bare = token.rstrip(_CLOSERS)
            # "Dr." / "e.g." end no sentence, and a piece ending on one loses what it abbreviates ("Dr." Smith)
            abbreviation = bare.endswith(".") and is_abbreviation(token)
            if bare and bare[-1] in _SENTENCE_END and not abbreviation or "\n" in m.group(1):
                return m.end()
            if bare and bare[-1] in _CLAUSE_MARK and n >= clause_words:
                return m.end()
            if n >= limit and not abbreviation:
                return m.end()
        return None


# --------------------------------------------------------------------------- validation

_KEEP_CONTROLS = {"\n", "\t"}
# <|im_start|>, <|im_end|>, <|endoftext|>, ...: the LLM tokenizer turns these into special tokens (matched
# before normalisation), so typed user text could otherwise close its own turn and open a `system` one.
_CHAT_MARKUP = re.compile(r"<\|[^<>|\s]{0,64}\|>")
_H_SPACE = re.compile(r"[^\S\n]+")  # whitespace other than newline
_NEWLINES = re.compile(r" ?\n[\s]*")


RAW_BYTES_PER_CHAR = 16  # raw text may carry spaces and markup the cleaning drops, not megabytes of it


def validate_text(raw: bytes | str, max_chars: int) -> str:
    """User text -> clean str, or InputError naming the problem.

    Decodes bytes as strict UTF-8 (a leading BOM is dropped), NFC-normalises, removes control
    characters except newline and tab, removes chat-template markup (`<|...|>`, see
    strip_chat_markup), collapses runs of spaces/tabs to one space and runs of blank lines to one
    newline, strips the ends; then rejects empty text and text longer than max_chars characters
    (counted after cleaning). Input over RAW_BYTES_PER_CHAR x max_chars bytes (or characters) is refused before any
    of that work, so one request cannot hold the orchestrator's event loop. Everything else, including "ignore your instructions"-style prompt
    injection, is kept: it is the user's words, given to the LLM inside the user turn of the
    chat template, and the reply is only ever spoken.
    """
    if isinstance(raw, (bytes, bytearray, memoryview, str)) and len(raw) > RAW_BYTES_PER_CHAR * max_chars:
        raise InputError(f"text has {len(raw)} bytes before cleaning; the limit is {RAW_BYTES_PER_CHAR * max_chars} "
                         f"({max_chars} characters after cleaning)")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        b = bytes(raw)
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"text is not valid UTF-8 (byte 0x{b[e.start]:02x} at offset {e.start})") from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise InputError(f"text must be UTF-8 bytes or a string, got {type(raw).__name__}")
    text = unicodedata.normalize("NFC", text.removeprefix("\ufeff"))
    text = "".join(ch for ch in text if ch in _KEEP_CONTROLS or unicodedata.category(ch) != "Cc")
    text = strip_chat_markup(text)
    text = _NEWLINES.sub("\n", _H_SPACE.sub(" ", text)).strip()
    if not text:
        raise InputError("text is empty")
    if len(text) > max_chars:
        raise InputError(f"text has {len(text)} characters; the limit is {max_chars}")
    return text


def strip_chat_markup(text: str) -> str:
    """Text with every `<|name|>` chat-template marker replaced by a space, until none is left.

    Repeated to a fixed point, so no marker is left; since each is replaced by a space, one hidden
    inside another (`<|im_<|x|>start|>`) cannot re-form a marker either.
    """
    while True:
        cleaned = _CHAT_MARKUP.sub(" ", text)
        if cleaned == text:
            return text
        text = cleaned
