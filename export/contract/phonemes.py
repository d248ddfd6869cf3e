"""Text -> Piper phoneme ids for a Piper VITS voice, in the orchestrator process (torch-free).

Piper's front end, reproduced exactly (rhasspy/piper-phonemize src/phonemize.cpp and src/phoneme_ids.cpp):

  1. espeak-ng turns the text into IPA clause by clause (`piper_phonemize.phonemize_espeak`, the voice's
     espeak voice, e.g. "en-us"); each clause's terminator is kept as a phoneme (". ? !" end a sentence, ", : ;"
     are followed by a space), the IPA is NFD-decomposed into codepoints and (lang) switch flags are dropped;
  2. one sentence -> ids: BOS "^", pad "_", then each phoneme's ids followed by a pad, then EOS "$"
     (`piper_phonemize.phoneme_ids_espeak`, which Piper's training and its C++ binary use). A phoneme missing from
     the voice's phoneme_id_map is skipped, as in Piper (and counted when a Counter is given).

Before espeak the text goes through export/contract/text_normalize.py (markdown, emoji, money, units, ...; see
there), and long sentences are split at clause marks or word boundaries so that no utterance has more than
`max_ids` ids (the tts stage's `phonemes` axis). Piper synthesizes one utterance per sentence; `utterances()` does
the same, `text_to_ids()` flattens the sentences into one id list as Piper's training preprocessing does.

espeak-ng runs in a child process (export/contract/espeak_process.py): text that crashes it (it has memory-safety
bugs plain text reaches) fails that call with `EspeakFailed`, never the process that serves turns.

    ph = PiperPhonemizer.from_json("en_US-joe-medium.onnx.json")      # loads espeak-ng data (~10 ms)
    for u in ph.utterances("Dr. Smith paid $5... at 10:30!"):
        u.ids       # (1, 0, 17, 0, 120, 0, ...)  -> tts input `phonemes` [1, T]
        u.symbols   # ("^", "_", "d", "_", "ˈ", "_", ...)  one IPA symbol per id, for the lip-sync
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from export.contract.espeak_process import EspeakProcess
from export.contract.piper_voice import BOS, EOS, PAD, PiperVoiceConfig, VoiceConfigError, read_voice_config
from export.contract.text_normalize import NormalizeOptions, normalize_for_speech

SPACE = " "
CLAUSE_MARKS = frozenset(",:;")  # Piper adds a space after these (a pause inside a sentence)
SENTENCE_MARKS = frozenset(".?!")
SUPRASEGMENTALS = frozenset("ˈˌːˑ")  # stress and length marks: they get ids (and durations) of their own
OTHER_PUNCTUATION = frozenset("'\"()-#↑↓")  # in Piper's table; espeak rarely emits them


@dataclass(frozen=True)
class PhonemizerOptions:
    normalize: NormalizeOptions | None = field(default_factory=NormalizeOptions)  # None: raw text (as Piper)
    max_ids: int = 400  # most ids in one utterance (tts `phonemes` axis max); longer sentences are split
    data_path: str | None = None  # espeak-ng-data folder; None: piper_phonemize's own (used once per process)

    def __post_init__(self) -> None:
        if self.max_ids < 8:
            raise ValueError(f"max_ids {self.max_ids} is too small (BOS, EOS and pads alone take 3)")


@dataclass(frozen=True)
class PhonemeUtterance:
    """One tts call's input: Piper's ids and the IPA symbol of every id."""

    ids: tuple[int, ...]  # [T] ^ _ p1 _ p2 _ ... pn _ $
    symbols: tuple[str, ...]  # [T] the symbol each id stands for: "^", "_", "$", " ", punctuation, IPA
    phonemes: tuple[str, ...] = field(default=())  # [n] the phonemes (codepoints) without BOS/pads/EOS


def symbol_kind(symbol: str) -> str:
    """What a symbol is, for the lip-sync: "marker" (^ _ $), "space", "punctuation", "suprasegmental" (ˈ ˌ ː ˑ:
    stress/length, best merged with the phoneme next to them) or "phoneme" (IPA letters and diacritics)."""
    if symbol in (BOS, EOS, PAD):
        return "marker"
    if symbol == SPACE:
        return "space"
    if symbol in SUPRASEGMENTALS:
        return "suprasegmental"
    if symbol in CLAUSE_MARKS or symbol in SENTENCE_MARKS or symbol in OTHER_PUNCTUATION:
        return "punctuation"
    return "phoneme"


def split_phonemes(phonemes: list[str], costs: list[int], budget: int) -> list[list[str]]:
    """Cut one sentence's phonemes into runs whose costs (ids per phoneme, pad included) sum to <= budget.

    A run ends, in order of preference, after a clause mark (", " ": " "; ") in the run's second half, after
    a word (at a space), or anywhere when one word alone is too long. Spaces at the cut are dropped.
    """
    if budget < 1:
        raise ValueError("budget must be >= 1")
    runs: list[list[str]] = []
    start = 0
    while start < len(phonemes):
        total, end = 0, start
        while end < len(phonemes) and total + costs[end] <= budget:
            total += costs[end]
            end += 1
        if end < len(phonemes):  # too long: look back for a cut
            clause = max((i + 1 for i in range(start, end) if phonemes[i] in CLAUSE_MARKS
                          and i + 1 - start >= (end - start) // 2), default=None)
            word = max((i for i in range(start + 1, end) if phonemes[i] == SPACE), default=None)
            end = clause or word or max(end, start + 1)
        run = phonemes[start:end]
        while run and run[-1] == SPACE:
            run.pop()
        if run:
            runs.append(run)
        start = end
        while start < len(phonemes) and phonemes[start] == SPACE:
            start += 1
    return runs


def _has_phoneme(phonemes: list[str]) -> bool:
    return any(symbol_kind(p) == "phoneme" for p in phonemes)


class PiperPhonemizer:
    """A Piper voice's text front end: normalization, espeak-ng through piper_phonemize, Piper's id layout.

    Construction imports piper_phonemize, checks the espeak voice and loads espeak-ng's data (the slow first call,
    ~3 ms after a ~12 ms import); later calls take ~0.3-1 ms per sentence.
    """

    def __init__(self, voice: PiperVoiceConfig, options: PhonemizerOptions = PhonemizerOptions(),
                 espeak: EspeakProcess | None = None) -> None:
        if voice.phoneme_type != "espeak":
            raise VoiceConfigError(f"{voice.path}: phoneme_type {voice.phoneme_type!r}: only espeak voices are "
                                   f"supported")
        if not voice.espeak_voice:
            raise VoiceConfigError(f"{voice.path}: no espeak.voice (e.g. \"en-us\")")
        try:
            import piper_phonemize  # noqa: F401  (here for a clear error; espeak-ng itself runs in a child)
        except ImportError:
            raise VoiceConfigError("text -> phonemes needs piper_phonemize "
                                   "(pip install --no-deps piper-phonemize-cross==1.2.1)") from None
        self.voice = voice
        self.options = options
        self.espeak = espeak or EspeakProcess()  # shared by `with_options` copies
        # id -> symbol; the first symbol of the map wins where two share an id (none do in Piper's tables)
        self.id_to_symbol: dict[int, str] = {}
        for symbol, ids in voice.phoneme_id_map.items():
            for i in ids:
                self.id_to_symbol.setdefault(i, symbol)
        try:
            self._run_espeak("a")  # loads espeak-ng's data and checks the voice now, not on the first reply
        except RuntimeError as e:
            raise VoiceConfigError(f"{voice.path}: espeak-ng cannot use voice {voice.espeak_voice!r} ({e})") from e

    def with_options(self, options: PhonemizerOptions) -> PiperPhonemizer:
        """The same voice with other options, reading through the same espeak-ng process."""
        return PiperPhonemizer(self.voice, options, espeak=self.espeak)

    @classmethod
    def from_json(cls, path: str | Path, options: PhonemizerOptions = PhonemizerOptions()) -> PiperPhonemizer:
        return cls(read_voice_config(path), options)

    def _run_espeak(self, text: str) -> list[list[str]]:
        return self.espeak(text, self.voice.espeak_voice, self.options.data_path)

    # ------------------------------------------------------------------ text -> phonemes

    def normalize(self, text: str) -> str:
        """The text espeak will read ("" when nothing is left to say)."""
        if self.options.normalize is None:
            return text.strip()
        return normalize_for_speech(text, self.options.normalize)

    def phonemize(self, text: str) -> list[list[str]]:
        """Normalized text -> espeak-ng phonemes (codepoints) per sentence; sentences with no phoneme are dropped,
        so empty, whitespace-only or emoji-only text gives []."""
        norm = self.normalize(text)
        if not norm:
            return []
        out = []
        for sentence in self._run_espeak(norm):
            sentence = [q for p in sentence for q in self.voice.phoneme_map.get(p, (p,))]
            if _has_phoneme(sentence):
                out.append(sentence)
        return out

    # ------------------------------------------------------------------ phonemes -> ids

    def phoneme_ids(self, phonemes: list[str], missing: Counter | None = None) -> list[int]:
        """Piper's ids for one utterance: ^ _ p1 _ p2 _ ... pn _ $ (phonemes missing from the map are skipped)."""
        table = self.voice.phoneme_id_map
        pad = table[PAD]
        ids = [*table[BOS], *pad]
        for p in phonemes:
            if p not in table:
                if missing is not None:
                    missing[p] += 1
                continue
            ids += [*table[p], *pad]
        return ids + list(table[EOS])

    def _utterance(self, phonemes: list[str], missing: Counter | None) -> PhonemeUtterance:
        ids = self.phoneme_ids(phonemes, missing)
        return PhonemeUtterance(tuple(ids), tuple(self.id_to_symbol[i] for i in ids),
                                tuple(p for p in phonemes if p in self.voice.phoneme_id_map))

    def utterances(self, text: str, missing: Counter | None = None) -> list[PhonemeUtterance]:
        """One utterance per sentence (as Piper synthesizes), each split to at most options.max_ids ids."""
        table = self.voice.phoneme_id_map
        fixed = len(table[BOS]) + len(table[PAD]) + len(table[EOS])
        budget = self.options.max_ids - fixed
        out = []
        for sentence in self.phonemize(text):
            costs = [len(table[p]) + len(table[PAD]) if p in table else 0 for p in sentence]
            if sum(costs) <= budget:
                out.append(self._utterance(sentence, missing))
                continue
            out += [self._utterance(run, missing) for run in split_phonemes(sentence, costs, budget)
                    if _has_phoneme(run)]
        return out

    def text_to_ids(self, text: str, missing: Counter | None = None) -> list[int]:
        """The whole text as one utterance: its sentences' phonemes flattened, then Piper's ids (what Piper's
        training preprocessing does with a line). [] when there is nothing to say; no max_ids split."""
        phonemes = [p for sentence in self.phonemize(text) for p in sentence]
        return self.phoneme_ids(phonemes, missing) if phonemes else []

    def symbols(self, ids) -> list[str]:
        """The IPA symbol of each id (ValueError for an id not in the voice's table)."""
        try:
            return [self.id_to_symbol[int(i)] for i in ids]
        except KeyError as e:
            raise ValueError(f"id {e.args[0]} is not in {self.voice.path}'s phoneme_id_map") from None

    def warm_up(self) -> None:
        """Phonemize a sentence once (construction already loaded espeak-ng; this also warms the normalizer)."""
        self.utterances("Hello, I am ready: 1, 2, 3.")
