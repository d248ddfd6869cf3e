"""LLM text -> text that espeak-ng reads the way a person would (torch-free; runs before the Piper phonemizer).

espeak-ng already reads most written English well: cardinals ("1,234", "3.5", "-5"), "%", "&", "+", "=", "×",
most ordinals ("1st", "22nd"), times with minutes ("10:30", "3:45pm"), "e.g.", "etc.", "U.S.", "a.m.", emails,
acronyms ("NASA", "GPUs"), `__underscores__`, `backticks`, quotes and "?!"/"!!!". This module only rewrites what it
gets wrong for spoken replies (each rule was checked against piper_phonemize's espeak-ng, see REPORT.md):

  markdown       **bold** / *it* (read "asterisk"), # headings ("hash"), bullets, > quotes, [text](url) links,
                 table pipes, ~~strike~~, horizontal rules
  URLs           "https://www.example.com/docs?x=1" (read letter by letter) -> "example.com"
  emoji/symbols  emoji and other So-category symbols are dropped (espeak reads "grinning face", "heart suit",
                 "trade mark"); "→" -> "to"
  punctuation    "..." / "…" (espeak glues the words around it together) -> "," mid-text, "." at the end;
                 dashes ("--", "—", spaced "-"/"–") -> ","; "(aside)" -> ", aside,"; "#1" -> "number 1";
                 "~5" -> "about 5"
  abbreviations  titles before a name ("Dr.", "Mr.", "St.", "Prof.", ... : espeak ends the sentence at the
                 period), "vs." ("V S"), "Jr."/"Sr." ("J R"), "Ph.D.", "No. 5", "approx.", "Jan. 5", initials
  money          "$5" ("dollar five"), "$3.50", "€20", "£3", "¥100", "$2.5 billion", "$5M", "5 USD"
  numbers        "100k" / "1.5M", "100th" ("one hundred th"), decades "1990s" / "'90s" ("nineteen hundred ninety
                 z"), years 1100-1999 ("nineteen hundred ninety" -> "nineteen ninety"), "9:00" ("nine zero zero"),
                 "12:05", ranges "5-10" / "10–20" ("dash"), phone numbers, ISO and US dates, fractions "1/2",
                 "4.5/5", "24/7", "3x", "x²"
  units          after a number: "km", "kg", "cm", "mph", "km/h", "GB", "ms", "°C", "°F", ... (read letter by letter)

Sentence punctuation (, . ! ? ; :) is kept: Piper puts it in the phonemes and the voice was trained with it.

    normalize_for_speech("It's **25°C** in St. Louis... about $5.")
    # "It's 25 degrees Celsius in Saint Louis, about 5 dollars."
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from export.contract import spoken_numbers as sn


@dataclass(frozen=True)
class NormalizeOptions:
    markdown: bool = True  # strip markdown emphasis, headings, bullets, links, quotes, tables
    urls: bool = True  # read a URL as its domain ("example.com")
    symbols: bool = True  # drop emoji and other pictographs (Unicode So), read arrows
    abbreviations: bool = True  # expand titles, "vs.", "No.", month abbreviations, initials
    numbers: bool = True  # money, scales, ordinals, decades, years, times, ranges, dates, fractions, units


# --------------------------------------------------------------------------- characters

_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\t]")
_INVISIBLE = re.compile(r"[\u200b-\u200d\u2060\ufeff\ufe0e\ufe0f\u20e3\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]")
_RUNS = re.compile(r" {2,}")
_NEWLINES = re.compile(r" ?\n[\s]*")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201b": "'", "\u2032": "'", "\u201c": '"',
                         "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"'})


def _drop_symbols(text: str) -> str:
    """Emoji and other pictographs (Unicode category So, e.g. 😀 ✔ ★ ♥ © ™) -> a space."""
    return "".join(" " if unicodedata.category(ch) == "So" else ch for ch in text)


# --------------------------------------------------------------------------- markdown, URLs

_MD_RULES = [
    (re.compile(r"^\s*(?:[-*_]\s*){3,}$", re.MULTILINE), ""),  # horizontal rule
    (re.compile(r"^\s*```.*$", re.MULTILINE), ""),  # code fence line
    (re.compile(r"!?\[([^\]\n]*)\]\([^)\s]*\)"), r"\1"),  # [text](url), ![alt](url)
    (re.compile(r"^\s*\|?(?:\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*$", re.MULTILINE), ""),  # table separator row
    (re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE), r"\1."),  # heading: a sentence of its own
    (re.compile(r"^\s*>+\s?", re.MULTILINE), ""),  # block quote
    (re.compile(r"^\s*[-*+•▪‣◦]\s+", re.MULTILINE), ""),  # bullet
    (re.compile(r"^\s*(\d{1,3})[.)]\s+", re.MULTILINE), r"\1, "),  # "1. Step" -> "1, Step" (no sentence end)
    (re.compile(r"(\d)\s?\*\s?(\d)"), r"\1 times \2"),  # 2*3 before * is dropped
    (re.compile(r"\*+|~~|`+"), ""),  # emphasis, strike-through, code
    (re.compile(r"(?<!\w)_{1,3}(?=\w)|(?<=\w)_{1,3}(?!\w)"), ""),  # _it_, __bold__ (snake_case is kept)
    (re.compile(r"[ \t]*\|[ \t]*"), ", "),  # table cells
]
_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"]+", re.IGNORECASE)
_URL_HOST = re.compile(r"^(?:[a-z]+://)?(?:www\.)?([^/?#:]+)", re.IGNORECASE)


def _url(m: re.Match) -> str:
    url = m.group(0)
    tail = re.search(r"[.,!?;:)\]'\"]*$", url).group(0)  # sentence punctuation after the URL stays
    host = _URL_HOST.match(url[: len(url) - len(tail)] if tail else url)
    return (host.group(1) if host else "") + tail


# --------------------------------------------------------------------------- punctuation

_PUNCT_RULES = [
    (re.compile(r"\s*(?:→|⇒|⟶|->|=>)\s*"), " to "),
    (re.compile(r"[\u2190-\u21ff\u27f0-\u27ff\u2900-\u297f]"), " "),  # other arrows (Sm: not dropped as So)
    (re.compile(r"(?:\.\s?){2,}\.|…"), "\u2026"),  # every ellipsis -> one character, placed below
    (re.compile(r"\u2026(?=[\s\"')\]]*$)"), "."),  # at the end: a full stop
    (re.compile(r"\s*\u2026\s*"), ", "),  # inside: a pause (espeak joins the words around "...")
    (re.compile(r"(?<=\d)\s?[–—]\s?(?=\d)"), "-"),  # 10–20: a range, read below
    (re.compile(r"\s*(?:--+|—|―)\s*|\s+[-–]\s+"), ", "),  # dashes between words -> a pause
    (re.compile(r"#(?=\d)"), "number "),
    (re.compile(r"#(?=[A-Za-z])"), ""),  # hashtags
    (re.compile(r"~\s?(?=\d)|\bca\.\s(?=\d)"), "about "),
    (re.compile(r"~"), " "),
    (re.compile(r"\(\s*\)"), ""),  # print() -> print
    (re.compile(r"\s*\(\s*"), ", "),  # (aside) -> , aside,
    (re.compile(r"\s*\)"), ","),
    (re.compile(r"\s*\[\s*|\s*\]"), " "),
    (re.compile(r"²"), " squared"),
    (re.compile(r"³"), " cubed"),
]

# --------------------------------------------------------------------------- abbreviations

# Before a capitalised word (a name): "Dr. Smith". espeak reads most of these but ends the sentence at the period.
_TITLES = {"Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Dr": "Doctor", "Prof": "Professor", "St": "Saint",
           "Mt": "Mount", "Gen": "General", "Capt": "Captain", "Lt": "Lieutenant", "Col": "Colonel",
           "Sgt": "Sergeant", "Gov": "Governor", "Sen": "Senator", "Rep": "Representative", "Rev": "Reverend",
           "Hon": "Honorable", "Pres": "President", "Fr": "Father"}
_NO_DOT_TITLES = ("Mr", "Mrs", "Ms", "Dr")  # also written without the period
# After a capitalised word (an address or a name): "Main St.", "Elm Dr.", "John Smith Jr."
_AFTER_NAME = {"St": "Street", "Dr": "Drive", "Ave": "Avenue", "Blvd": "Boulevard", "Rd": "Road", "Ln": "Lane",
               "Ltd": "Limited", "Corp": "Corporation", "Bros": "Brothers"}
_ANYWHERE = {"vs": "versus", "approx": "approximately", "i.e": "that is", "Ph.D": "PhD", "Ph.D.s": "PhDs",
             "Jr": "Junior", "Sr": "Senior", "esp": "especially", "dept": "department", "Dept": "Department"}
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_MONTH_ABBR = {m[:3]: m for m in _MONTHS if m != "May"} | {"Sept": "September"}

# Tokens after which a "." does not end a sentence (for a text segmenter: see is_abbreviation).
# ("No." is left out: "I said no." ends sentences far more often than "No. 5" starts a number.)
ABBREVIATIONS = frozenset({*_TITLES, *_AFTER_NAME, *_ANYWHERE, *_MONTH_ABBR, "e.g", "etc", "a.m", "p.m", "U.S",
                           "U.K", "U.S.A", "Inc", "Co", "Fig", "Vol", "ca"})


def _alternatives(words) -> str:
    """A regex alternation, longest first (so "Mrs" is tried before "Mr")."""
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_TITLE_RE = re.compile(rf"\b(?:({_alternatives(_TITLES)})\.|({_alternatives(_NO_DOT_TITLES)}))\s+(?=[A-Z])")
# "Main St." but not "Main St. Louis" (a title, handled first)
_AFTER_RE = re.compile(rf"\b([A-Z][a-z]+|\d+(?:st|nd|rd|th)) ({_alternatives(_AFTER_NAME)})\.(?!\s*[A-Z])")
_ANYWHERE_RE = re.compile(rf"(?<![\w.])({_alternatives(_ANYWHERE)})(?:\.|\b)")
_MONTH_RE = re.compile(rf"\b({_alternatives(_MONTH_ABBR)})\.?\s+(?=\d)")
_NUMBER_ABBR = re.compile(r"\b(?:No|Nos|no)\.\s?(?=\d)")
# "J. R. R. Tolkien", "A.B. Jones" (anchored at the first initial of a run: linear on "A. A. A. ...")
_INITIALS = re.compile(r"(?<![A-Z]\.)(?<![A-Z]\.\s)\b((?:[A-Z]\.\s?){2,})(?=\s*[A-Z][a-z])")
_INITIAL = re.compile(r"(?<=[A-Z][a-z]) ([A-Z])\.(?=\s+[A-Z][a-z])")  # "John F. Kennedy"


def _title(m: re.Match) -> str:
    return _TITLES[m.group(1) or m.group(2)] + " "


def _after_name(m: re.Match) -> str:
    """"Main St." -> "Main Street", keeping the period when it ends the text or a line."""
    rest = m.string[m.end():]
    end = "." if not rest.strip(" ") or rest.lstrip(" ").startswith("\n") else ""
    return f"{m.group(1)} {_AFTER_NAME[m.group(2)]}{end}"


def _abbreviations(text: str) -> str:
    text = _INITIALS.sub(lambda m: " ".join(re.findall(r"[A-Z]", m.group(1))) + " ", text)
    text = _INITIAL.sub(r" \1", text)
    text = _MONTH_RE.sub(lambda m: _MONTH_ABBR[m.group(1)] + " ", text)
    text = _NUMBER_ABBR.sub("number ", text)
    text = _TITLE_RE.sub(_title, text)
    text = _AFTER_RE.sub(_after_name, text)
    return _ANYWHERE_RE.sub(lambda m: _ANYWHERE[m.group(1)], text)


def is_abbreviation(token: str) -> bool:
    """Whether a "." ending `token` (closing quotes/brackets stripped) is an abbreviation's, not a sentence end:
    a known abbreviation ("Dr.", "e.g.", "vs."), an initial ("J."), or dotted initials ("U.S.", "Ph.D.")."""
    word = token.rstrip("\"')]}»”’")
    if not word.endswith("."):
        return False
    word = word.lstrip("\"'([{«“‘")[:-1]
    return (word in ABBREVIATIONS or word.lower() in ABBREVIATIONS or bool(re.fullmatch(r"[A-Z]", word))
            or bool(re.fullmatch(r"(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}", word)))


# --------------------------------------------------------------------------- cleanup

_CLEANUP = [
    (re.compile(r"[ \t]+"), " "),
    (re.compile(r" ?\n\s*"), "\n"),  # no blank lines, no spaces around newlines
    (re.compile(r"(^|\n)[,;: ]+"), r"\1"),  # a line does not start with a pause
    (re.compile(r" +($|\n)"), r"\1"),  # a final "," stays: the segmenter cuts clauses there (Piper keeps it)
    (re.compile(r" ([,.!?;:])"), r"\1"),  # no space before punctuation
    (re.compile(r",(?: ?,)+"), ","),  # ", ," -> ","
    (re.compile(r",([.!?;:])"), r"\1"),  # ",." -> "."
    (re.compile(r"([.!?;:]),"), r"\1"),  # ".," -> "."
    (re.compile(r",(?=[^\s\d])|(?<!\d),(?=\d)"), ", "),  # a space after a comma, but not in 1,234
]


def normalize_for_speech(text: str, options: NormalizeOptions = NormalizeOptions()) -> str:
    """The text as it should be read aloud (see the module docstring); "" when nothing is left to say.

    Newlines are kept (espeak and the segmenter treat a line as a unit); runs of spaces become one.
    """
    text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    text = _INVISIBLE.sub("", _SPACES.sub(" ", text))
    text = _NEWLINES.sub("\n", _RUNS.sub(" ", text))  # first: keeps every \s* below short (no quadratic scans)
    if options.markdown:
        for rx, rep in _MD_RULES:
            text = rx.sub(rep, text)
    if options.urls:
        text = _URL.sub(_url, text)
    if options.numbers:
        text = sn.degrees(text)  # before symbols: "°" and "℃" are So
    if options.symbols:
        text = _drop_symbols(text)
    if options.numbers:
        text = sn.before_punctuation(text)  # ranges and dates before "–" and "/" are rewritten
    for rx, rep in _PUNCT_RULES:
        text = rx.sub(rep, text)
    if options.abbreviations:
        text = _abbreviations(text)
    if options.numbers:
        text = sn.numbers(text)
    for rx, rep in _CLEANUP:
        text = rx.sub(rep, text)
    text = text.strip().lstrip(",;: ")  # a final ":" stays (Piper keeps it: "Here are three tips:")
    return text if re.search(r"\w", text) else ""
