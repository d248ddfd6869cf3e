"""Text -> FastSpeech2 symbol ids: ming024/FastSpeech2's symbol table (text/symbols.py) and a
character-level front end (english_cleaners-like).

The symbol lists below are copied from ming024/FastSpeech2 (text/symbols.py, text/cmudict.py
`valid_symbols`, text/pinyin.py `valid_symbols`, which keithito/tacotron's table extends), in the
same order, so ids match the released checkpoints: `symbols[i]` has id i, id 0 ("_") is padding, and
the encoder's embedding has len(symbols) + 1 rows (ming024's `n_src_vocab`).

`text_to_ids` follows ming024's `text_to_sequence(text, ["english_cleaners"])`: ARPAbet in curly
braces ("{HH AH0 L OW1}") is looked up as phonemes; other text is cleaned (ASCII transliteration,
lowercase, numbers spelled out, abbreviations expanded, whitespace collapsed; the input's ends are stripped) and every character in
the table except "_" is kept. Differences: numbers are spelled with a small built-in speller (the
original uses `inflect`, which also handles currency and ordinals); characters without an ASCII
form are dropped (the original uses `unidecode`). The released LJSpeech checkpoint was trained on
ARPAbet phonemes (`{...}`, from g2p_en); the character path is for the demo models.
"""
from __future__ import annotations

import re
import unicodedata

_pad = "_"
_punctuation = "!'(),.:;? "
_special = "-"
_letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_silences = ["@sp", "@spn", "@sil"]

# text/cmudict.py
CMUDICT_VALID_SYMBOLS = [
    "AA", "AA0", "AA1", "AA2", "AE", "AE0", "AE1", "AE2", "AH", "AH0", "AH1", "AH2",
    "AO", "AO0", "AO1", "AO2", "AW", "AW0", "AW1", "AW2", "AY", "AY0", "AY1", "AY2",
    "B", "CH", "D", "DH", "EH", "EH0", "EH1", "EH2", "ER", "ER0", "ER1", "ER2", "EY",
    "EY0", "EY1", "EY2", "F", "G", "HH", "IH", "IH0", "IH1", "IH2", "IY", "IY0", "IY1",
    "IY2", "JH", "K", "L", "M", "N", "NG", "OW", "OW0", "OW1", "OW2", "OY", "OY0",
    "OY1", "OY2", "P", "R", "S", "SH", "T", "TH", "UH", "UH0", "UH1", "UH2", "UW",
    "UW0", "UW1", "UW2", "V", "W", "Y", "Z", "ZH",
]

# text/pinyin.py
PINYIN_INITIALS = [
    "b", "c", "ch", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "q", "r", "s", "sh", "t",
    "w", "x", "y", "z", "zh",
]
PINYIN_FINALS = [
    "a1", "a2", "a3", "a4", "a5", "ai1", "ai2", "ai3", "ai4", "ai5",
    "an1", "an2", "an3", "an4", "an5", "ang1", "ang2", "ang3", "ang4", "ang5",
    "ao1", "ao2", "ao3", "ao4", "ao5", "e1", "e2", "e3", "e4", "e5",
    "ei1", "ei2", "ei3", "ei4", "ei5", "en1", "en2", "en3", "en4", "en5",
    "eng1", "eng2", "eng3", "eng4", "eng5", "er1", "er2", "er3", "er4", "er5",
    "i1", "i2", "i3", "i4", "i5", "ia1", "ia2", "ia3", "ia4", "ia5",
    "ian1", "ian2", "ian3", "ian4", "ian5", "iang1", "iang2", "iang3", "iang4", "iang5",
    "iao1", "iao2", "iao3", "iao4", "iao5", "ie1", "ie2", "ie3", "ie4", "ie5",
    "ii1", "ii2", "ii3", "ii4", "ii5", "iii1", "iii2", "iii3", "iii4", "iii5",
    "in1", "in2", "in3", "in4", "in5", "ing1", "ing2", "ing3", "ing4", "ing5",
    "iong1", "iong2", "iong3", "iong4", "iong5", "iou1", "iou2", "iou3", "iou4", "iou5",
    "o1", "o2", "o3", "o4", "o5", "ong1", "ong2", "ong3", "ong4", "ong5",
    "ou1", "ou2", "ou3", "ou4", "ou5", "u1", "u2", "u3", "u4", "u5",
    "ua1", "ua2", "ua3", "ua4", "ua5", "uai1", "uai2", "uai3", "uai4", "uai5",
    "uan1", "uan2", "uan3", "uan4", "uan5", "uang1", "uang2", "uang3", "uang4", "uang5",
    "uei1", "uei2", "uei3", "uei4", "uei5", "uen1", "uen2", "uen3", "uen4", "uen5",
    "uo1", "uo2", "uo3", "uo4", "uo5", "v1", "v2", "v3", "v4", "v5",
    "van1", "van2", "van3", "van4", "van5", "ve1", "ve2", "ve3", "ve4", "ve5",
    "vn1", "vn2", "vn3", "vn4", "vn5",
]
PINYIN_VALID_SYMBOLS = PINYIN_INITIALS + PINYIN_FINALS + ["rr"]

# Prepend "@" to ARPAbet symbols to ensure uniqueness (some are the same as uppercase letters):
_arpabet = ["@" + s for s in CMUDICT_VALID_SYMBOLS]
_pinyin = ["@" + s for s in PINYIN_VALID_SYMBOLS]

# Export all symbols:
symbols = [_pad] + list(_special) + list(_punctuation) + list(_letters) + _arpabet + _pinyin + _silences

N_SYMBOLS = len(symbols) + 1  # rows of the encoder's src_word_emb (FastSpeech2Config.n_symbols)
PAD_ID = 0

assert len(CMUDICT_VALID_SYMBOLS) == 84 and len(PINYIN_VALID_SYMBOLS) == 209
assert len(set(symbols)) == len(symbols)

_symbol_to_id = {s: i for i, s in enumerate(symbols)}
_id_to_symbol = dict(enumerate(symbols))

_curly_re = re.compile(r"(.*?)\{(.+?)\}(.*)")
_whitespace_re = re.compile(r"\s+")

# text/cleaners.py (keithito): abbreviations expanded by english_cleaners
_abbreviations = [
    (re.compile(r"\b%s\." % abbr, re.IGNORECASE), full)
    for abbr, full in [
        ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
        ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
        ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
        ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"),
    ]
]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand")]


def number_to_words(n: int) -> str:
    """Cardinal number in English words ("one hundred twenty three")."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for scale, name in _SCALES:
        if n >= scale:
            if n // scale >= 1000:
                continue
            rest = n % scale
            return number_to_words(n // scale) + " " + name + ("" if rest == 0 else " " + number_to_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))  # 10**15 and above: digit by digit


def _expand_number(m: re.Match) -> str:
    whole, _, frac = m.group(0).replace(",", "").partition(".")
    words = number_to_words(int(whole)) if len(whole) <= 15 else " ".join(_ONES[int(d)] for d in whole)
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return words


def expand_numbers(text: str) -> str:
    return re.sub(r"\d[\d,]*(?:\.\d+)?", _expand_number, text)


def convert_to_ascii(text: str) -> str:
    """Closest ASCII (NFKD, combining marks and other non-ASCII characters dropped)."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def english_cleaners(text: str) -> str:
    text = convert_to_ascii(text)
    text = text.lower()
    text = expand_numbers(text)
    for regex, replacement in _abbreviations:
        text = re.sub(regex, replacement, text)
    return _whitespace_re.sub(" ", text)  # collapse_whitespace (no strip, as in the original)


def _symbols_to_ids(syms) -> list[int]:
    return [_symbol_to_id[s] for s in syms if s in _symbol_to_id and s not in ("_", "~")]


def arpabet_to_ids(phones: list[str] | str) -> list[int]:
    """ARPAbet phonemes ("HH", "AH0", ... or "@HH"; "sp", "spn", "sil" silences; punctuation-only
    tokens become "sp" as in ming024's preprocess_english) -> ids. A string is split on whitespace.
    Unknown phonemes raise ValueError."""
    if isinstance(phones, str):
        phones = phones.split()
    ids = []
    for p in phones:
        p = p.strip()
        if not p:
            continue
        if re.fullmatch(r"[^\w\s]+", p):
            p = "sp"
        sym = p if p.startswith("@") else "@" + p
        if sym not in _symbol_to_id:
            raise ValueError(f"unknown phoneme {p!r}")
        ids.append(_symbol_to_id[sym])
    return ids


def text_to_ids(text: str) -> list[int]:
    """Text -> symbol ids (every id in 1..N_SYMBOLS-2). "{...}" spans are ARPAbet phonemes."""
    ids: list[int] = []
    text = text.strip()
    while text:
        m = _curly_re.match(text)
        if not m:
            ids += _symbols_to_ids(english_cleaners(text))
            break
        ids += _symbols_to_ids(english_cleaners(m.group(1)))
        ids += arpabet_to_ids(m.group(2))
        text = m.group(3)
    return ids


def ids_to_text(ids) -> str:
    """Inverse of text_to_ids (ARPAbet back in curly braces)."""
    out = []
    for i in ids:
        s = _id_to_symbol.get(int(i))
        if s is None or s == _pad:
            continue
        if len(s) > 1 and s[0] == "@":
            s = "{%s}" % s[1:]
        out.append(s)
    return "".join(out).replace("}{", " ")
