"""Phoneme timings -> mouth parameters per video frame (visemes), streamed piece by piece, numpy only.

The speech stage gives each reply piece as symbols with their durations on the audio clock (Turn.phones:
(symbol, start s, length s); Piper ids are one IPA code point each, "" for pads, BOS and EOS). This module turns
them into one row of export.contract.mouth.VISEME_PARAMS per 25 fps video frame for the `mouth_warp` stage.

1. Symbols -> segments. A phoneme symbol starts a segment with its viseme's targets (`TABLE`); a pad ("") or a
   length/diacritic mark (ː, ʰ, combining marks) extends the segment before it (VITS gives pads real durations:
   the sound of the phoneme before them); a stress mark (ˈ ˌ) and the pads after it open the NEXT segment early
   (they carry the vowel's onset) and make its jaw open wider; a space is a weak word gap, punctuation a pause
   that closes the mouth. A symbol with several code points ('ˈoʊ', 'tʃ') is split, the time shared among its
   phonemes. A space right after punctuation belongs to the pause. Unknown symbols get a neutral viseme and are counted (`VisemeTrack.unknown`).
2. Co-articulation (Cohen & Massaro's dominance model): each segment pulls each parameter towards its target with
   a weight that is its `jaw` / `lips` dominance inside the segment and falls off exponentially before it
   (anticipation, `tau_ahead`) and after it (carry-over, `tau_behind`), to zero at `horizon_s`. The parameter is
   the weighted mean of the targets, plus a faint `rest` weight so that long silences settle at rest. Strong
   segments (p b m, f v) are strong inside but only sqrt(weight) outside, so the lips still close for a 25 ms
   /m/ while their neighbours are not closed early.
3. Frames: the curve is sampled every `step_s` and averaged over each frame's 40 ms (a box filter: the
   smoothing before sampling at 25 fps); `press` and `dental` take the maximum over the frame instead, so a
   closure shorter than a frame is still shown closed.

Streaming: `VisemeTrack.push(phones)` takes one piece's phones as the TTS answers and returns the rows of every
frame that starts before the piece's audio ends, indexed on the turn's frame clock (`VisemeTrack.next_frame`),
but for the last `holdback_s` (two frames), which the next push returns once it can anticipate the next piece's
first shape (`finish` returns them at the end of the turn). The segments near the end of the previous piece are
kept, so its carry-over continues into the new piece. The streamed track equals the whole reply's but in the
frames from `horizon_s` to `holdback_s` before a piece boundary, which miss the next piece's (faint, distant)
anticipation. `add` + `frames(indices)` is the same track fed symbol by symbol and read by frame index, frames made
on demand (Turn._add_phones / the video task's due slots).
"""
from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from export.contract import media
from export.contract.mouth import VISEME_PARAMS, VISEMES

Phone = tuple[str, float, float]  # (symbol, start s, length s) on the turn's audio clock

OPEN, SPREAD, PRESS, DENTAL, TEETH = (VISEME_PARAMS.index(n) for n in ("open", "spread", "press", "dental", "teeth"))


@dataclass(frozen=True)
class Viseme:
    """One mouth shape's targets (export.contract.mouth.VISEME_PARAMS) and how strongly it holds them."""

    name: str
    open: float  # jaw/lip opening 0..1
    spread: float  # -1 rounded .. +1 spread
    press: float = 0.0  # lips closed and pressed (p b m)
    dental: float = 0.0  # lower lip to upper teeth (f v)
    teeth: float = 0.0  # teeth shown
    jaw: float = 1.0  # dominance of `open` and `teeth` against the neighbours' co-articulation
    lips: float = 1.0  # dominance of `spread`, `press` and `dental`

    def targets(self) -> np.ndarray:
        return np.array([self.open, self.spread, self.press, self.dental, self.teeth])

    def weights(self) -> np.ndarray:
        return np.array([self.jaw, self.lips, self.lips, self.lips, self.jaw])


# fmt: off
REST = Viseme("rest", 0.0, 0.0, jaw=2.5, lips=2.5)  # punctuation pause: closed, relaxed (the avatar's own rest)
GAP = Viseme("gap", 0.0, 0.0, jaw=0.12, lips=0.12)  # word boundary: bridged by its neighbours unless long
NEUTRAL = Viseme("neutral", 0.3, 0.0, jaw=0.5, lips=0.5)  # a symbol not in the table
VISEME_TABLE: dict[str, Viseme] = {v.name: v for v in (
    REST, GAP, NEUTRAL,
    Viseme("bilabial",     0.00,  0.00, press=1.0,              jaw=3.0, lips=8.0),   # p b m
    Viseme("labiodental",  0.06,  0.10, dental=1.0, teeth=0.6,  jaw=2.0, lips=5.0),   # f v
    Viseme("dental",       0.20,  0.15, teeth=0.8,              jaw=1.0, lips=0.5),   # θ ð
    Viseme("alveolar",     0.18,  0.15, teeth=0.5,              jaw=0.8, lips=0.3),   # t d n l ɾ
    Viseme("sibilant",     0.08,  0.30, teeth=0.9,              jaw=1.4, lips=0.6),   # s z
    Viseme("postalveolar", 0.12, -0.50, teeth=0.7,              jaw=1.2, lips=1.2),   # ʃ ʒ (tʃ dʒ)
    Viseme("velar",        0.25,  0.00, teeth=0.2,              jaw=0.6, lips=0.2),   # k g ŋ x
    Viseme("glottal",      0.30,  0.00,                         jaw=0.1, lips=0.05),  # h ʔ: the neighbours' shape
    Viseme("rhotic",       0.20, -0.45, teeth=0.2,              jaw=0.7, lips=1.0),   # ɹ r
    Viseme("w",            0.10, -1.00,                         jaw=1.0, lips=2.5),   # w
    Viseme("j",            0.16,  0.60, teeth=0.5,              jaw=0.7, lips=0.7),   # j
    Viseme("i",            0.25,  0.85, teeth=0.8,              jaw=1.5),             # i (beet)
    Viseme("ɪ",            0.35,  0.50, teeth=0.6,              jaw=1.5),             # ɪ ᵻ (bit)
    Viseme("e",            0.50,  0.55, teeth=0.6,              jaw=1.5),             # e (bait)
    Viseme("ɛ",            0.60,  0.45, teeth=0.5,              jaw=1.5),             # ɛ (bet)
    Viseme("æ",            0.80,  0.45, teeth=0.5,              jaw=1.5),             # æ (bat)
    Viseme("a",            0.90,  0.15, teeth=0.3,              jaw=1.5),             # a (bite, bout)
    Viseme("ɑ",            1.00, -0.05, teeth=0.2,              jaw=1.5),             # ɑ ɒ (father)
    Viseme("ʌ",            0.65,  0.05, teeth=0.3,              jaw=1.5),             # ʌ (but)
    Viseme("ɐ",            0.50,  0.00, teeth=0.3,              jaw=1.0, lips=0.6),   # ɐ (reduced "a")
    Viseme("ə",            0.40,  0.00, teeth=0.3,              jaw=0.8, lips=0.5),   # ə (about)
    Viseme("ɚ",            0.35, -0.35, teeth=0.3,              jaw=1.2),             # ɚ ɝ ɜ (bird)
    Viseme("ɔ",            0.75, -0.60, teeth=0.1,              jaw=1.5, lips=1.5),   # ɔ (bought)
    Viseme("o",            0.55, -0.80,                         jaw=1.5, lips=1.8),   # o (boat)
    Viseme("ʊ",            0.35, -0.70,                         jaw=1.2, lips=1.8),   # ʊ (book)
    Viseme("u",            0.25, -1.00,                         jaw=1.2, lips=2.2),   # u (boot)
)}
# IPA code point -> viseme name: every phoneme espeak-ng (en) emits, and Piper's other vowels and consonants
_GROUPS = {
    "bilabial": "pbmɓʙɸβⱱʘ", "labiodental": "fvɱʋ", "dental": "θð", "alveolar": "tdnlɾɫɬɮɭɺʈɖɗɳɽǀǁǂǃ",
    "sibilant": "szʂʐɕʑç", "postalveolar": "ʃʒɧ", "velar": "kgɡŋxɣɠɢɰʟqɴχʁʀcɟɲʎʄʛ", "glottal": "hʔɦħʕʜʢʡ",
    "rhotic": "ɹrɻ", "w": "wʍɥ", "j": "jʝ", "i": "iy", "ɪ": "ɪᵻɨʏ", "e": "eøɘ", "ɛ": "ɛεœ", "æ": "æ",
    "a": "aɶ", "ɑ": "ɑɒ", "ʌ": "ʌɤ", "ɐ": "ɐ", "ə": "ə", "ɚ": "ɚɝɜɞ", "ɔ": "ɔ", "o": "oɵ", "ʊ": "ʊ", "u": "uʉɯ",
}
# fmt: on
PHONEME_VISEMES: dict[str, str] = {ch: name for name, chars in _GROUPS.items() for ch in chars}
PAUSES = frozenset(".,!?;:…—–-()\"«»¡¿↓↑|‖")  # punctuation and intonation marks: a pause, mouth at rest
STRESS = {"ˈ": 1.0, "ˌ": 0.5}  # primary, secondary
MARKERS = frozenset("^$_#")  # Piper's BOS / EOS / pad (the orchestrator sends them as ""), extend the segment before
EXTENDERS = frozenset("ːˑʰʲʷˤ˞ʼ'")  # length and secondary articulation marks: part of the segment before
# ARPAbet (the fastspeech2 family's front end; stress digits dropped, primary stress kept) -> IPA
ARPABET = {
    "AA": "ɑ", "AE": "æ", "AH": "ʌ", "AO": "ɔ", "AW": "aʊ", "AY": "aɪ", "EH": "ɛ", "ER": "ɚ", "EY": "eɪ", "IH": "ɪ",
    "IY": "i", "OW": "oʊ", "OY": "ɔɪ", "UH": "ʊ", "UW": "u", "B": "b", "CH": "tʃ", "D": "d", "DH": "ð", "F": "f",
    "G": "ɡ", "HH": "h", "JH": "dʒ", "K": "k", "L": "l", "M": "m", "N": "n", "NG": "ŋ", "P": "p", "R": "ɹ", "S": "s",
    "SH": "ʃ", "T": "t", "TH": "θ", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ",
}


def ipa(symbol: str) -> str:
    """A front end's symbol as IPA code points: ARPAbet ("AH1") is mapped, anything else is already IPA."""
    if symbol[:1].isupper() and (base := symbol.rstrip("012")) in ARPABET:
        return ("ˈ" if symbol.endswith("1") else "") + ARPABET[base]
    return symbol


@dataclass(frozen=True)
class VisemeOptions:
    # per parameter (VISEME_PARAMS order: open, spread, press, dental, teeth), seconds
    tau_ahead: tuple[float, ...] = (0.035, 0.080, 0.020, 0.020, 0.040)  # anticipation before a segment starts
    tau_behind: tuple[float, ...] = (0.030, 0.060, 0.015, 0.015, 0.035)  # carry-over after it ends
    horizon_s: float = 0.30  # a segment's influence is exactly zero this far outside it
    ramp_s: float = 0.020  # inside a segment its weight rises from sqrt(weight) to weight over this much time
    rest_weight: float = 0.02  # background pull towards REST (settles long silences)
    stress_open: float = 0.15  # a primary-stressed vowel opens this much wider (x(1 + ...)); secondary half
    step_s: float = 0.005  # curve sampling step; must divide the 40 ms frame
    # the mouth leads the audio by this much (frame f shows the curve at f / fps + lead): the voice's durations
    # put the sound ~20 ms after where the mouth matches it best (tools/render_reply.py --lead; REPORT.md)
    lead_s: float = 0.02
    fps: int = media.VIDEO_FPS
    # `push` holds back the frames of a piece's last this-many seconds until the next piece (or `finish`): they can
    # then anticipate its first shape (a /m/ after a pause closes over two frames, not snapping shut in one)
    holdback_s: float = 0.08
    max_symbols: int = 2048  # one push may not carry more (a guard against a runaway input)

    def __post_init__(self) -> None:
        if len(self.tau_ahead) != VISEMES or len(self.tau_behind) != VISEMES:
            raise ValueError(f"tau_ahead and tau_behind need {VISEMES} values ({VISEME_PARAMS})")
        if min(self.tau_ahead + self.tau_behind) <= 0 or self.horizon_s <= 0 or self.step_s <= 0:
            raise ValueError("time constants, horizon_s and step_s must be > 0")
        per_frame = 1.0 / self.fps / self.step_s
        if abs(per_frame - round(per_frame)) > 1e-6:
            raise ValueError(f"step_s {self.step_s} must divide the frame time 1/{self.fps}")


@dataclass
class _Segment:
    viseme: str  # its Viseme's name
    start: float
    end: float
    targets: np.ndarray  # [K]
    weights: np.ndarray  # [K]


@dataclass
class _Pending:
    start: float | None = None  # where the next segment starts (a stress mark or pads opened it early)
    stress: float = 0.0


@dataclass
class VisemeTrack:
    """The viseme rows of one turn, piece by piece (see the module docstring). Not thread-safe: one per turn."""

    options: VisemeOptions = VisemeOptions()
    next_frame: int = 0  # the first frame the next push / finish returns
    unknown: Counter = field(default_factory=Counter)  # symbols not in the table, with their counts
    _segments: list[_Segment] = field(default_factory=list)
    _pending: _Pending = field(default_factory=_Pending)
    _end_s: float = 0.0  # end of the phones pushed so far
    _rows: list[np.ndarray] = field(default_factory=list)  # every row made so far (frames 0 .. next_frame - 1)

    def push(self, phones: Iterable[Phone]) -> np.ndarray:
        """Add one piece's phones (in time order); the rows [n, K] float32 of frames next_frame .. next_frame + n - 1:
        every frame that starts before these phones end, but for those of the last `holdback_s` (the next push or
        `finish` returns them)."""
        phones = list(phones)
        if len(phones) > self.options.max_symbols:
            raise ValueError(f"{len(phones)} symbols in one piece; at most {self.options.max_symbols}")
        for symbol, start, length in phones:
            self._add(symbol, float(start), float(length))
        return self.frames_until(self._end_s - self.options.holdback_s)

    def finish(self, end_s: float | None = None) -> np.ndarray:
        """Rows of the frames left up to `end_s` (default: where the phones end), mouth settling to rest."""
        return self.frames_until(self._end_s if end_s is None else end_s)

    def frames_until(self, end_s: float) -> np.ndarray:
        """Rows of frames next_frame .. the last one starting before `end_s` (none if it is not ahead)."""
        o = self.options
        last = math.ceil(end_s * o.fps - 1e-6)  # frames [next_frame, last) start before end_s
        n = max(0, last - self.next_frame)
        if n == 0:
            return np.zeros((0, VISEMES), np.float32)
        per_frame = round(1.0 / o.fps / o.step_s)
        t = ((self.next_frame + np.arange(n * per_frame) / per_frame) / o.fps + (0.5 * o.step_s + o.lead_s))
        block = per_frame * o.fps  # one second of samples at a time: memory stays bounded for long pieces
        curve = np.concatenate([self._curve(t[i:i + block]) for i in range(0, t.size, block)])
        curve = curve.reshape(n, per_frame, VISEMES)
        rows = curve.mean(axis=1)
        rows[:, [PRESS, DENTAL]] = curve[:, :, [PRESS, DENTAL]].max(axis=1)
        self.next_frame += n
        self._forget(self.next_frame / o.fps + o.lead_s)
        rows = rows.astype(np.float32)
        self._rows.append(rows)
        return rows

    # ------------------------------------------------------------------ per-symbol feeding, rows by index
    def add(self, symbol: str, start_s: float, length_s: float) -> None:
        """Add one symbol (what Turn._add_phones has per id); its frames are made when `frames` asks for them."""
        self._add(ipa(symbol), float(start_s), float(length_s))

    def frames(self, indices: Sequence[int], fps: int = media.VIDEO_FPS) -> np.ndarray:
        """Rows [len(indices), K] of frames on the turn's clock: frames not made yet are made now from the symbols
        added so far (rest after them), in order; a frame once made does not change."""
        if fps != self.options.fps:
            raise ValueError(f"this track runs at {self.options.fps} fps, not {fps}")
        indices = [int(i) for i in indices]
        if not indices:
            return np.zeros((0, VISEMES), np.float32)
        if min(indices) < 0:
            raise ValueError(f"negative frame index {min(indices)}")
        need = max(indices) + 1
        if need > self.next_frame:
            self.frames_until((need - 0.5) / fps)
        made = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        self._rows = [made]
        return made[indices]

    # ------------------------------------------------------------------ symbols -> segments
    def _add(self, symbol: str, start: float, length: float) -> None:
        if length < 0:
            raise ValueError(f"phone {symbol!r} at {start:.3f} s has a negative length {length}")
        end = start + length
        self._end_s = max(self._end_s, end)
        chars = [c for c in symbol if not c.isspace()] or ([" "] if symbol else [])
        if not chars or all(c in MARKERS for c in chars):  # pad, BOS, EOS
            self._extend(start, end)
            return
        bases = [c for c in chars if self._is_base(c)]
        share = length / max(1, len(bases))
        t = start
        for c in chars:
            if c in STRESS:
                self._open_pending(t, STRESS[c])
            elif c in EXTENDERS or unicodedata.combining(c) or c in MARKERS:
                self._extend(t, t if bases else end)  # a mark alone brings its time to the segment before
            else:
                self._segment(c, t, t + share)
                t += share

    @staticmethod
    def _is_base(c: str) -> bool:
        return not (c in STRESS or c in EXTENDERS or c in MARKERS or unicodedata.combining(c))

    def _open_pending(self, t: float, stress: float) -> None:
        if self._pending.start is None:
            self._pending.start = t
        self._pending.stress = max(self._pending.stress, stress)

    def _extend(self, start: float, end: float) -> None:
        if self._pending.start is not None:
            return  # pads after a stress mark: the next segment's onset
        if self._segments and self._segments[-1].end >= start - 1e-9:
            self._segments[-1].end = max(self._segments[-1].end, end)
        elif end > start:  # pads before any phoneme (BOS), or after a gap: silence
            self._append(REST, start, end, 0.0)

    def _segment(self, c: str, start: float, end: float) -> None:
        if c == " " and self._segments and self._segments[-1].viseme == REST.name and self._pending.start is None:
            self._extend(start, end)  # the word gap after punctuation is part of the pause
            return
        if c == " ":
            viseme = GAP
        elif c in PAUSES:
            viseme = REST
        elif c in PHONEME_VISEMES:
            viseme = VISEME_TABLE[PHONEME_VISEMES[c]]
        else:
            self.unknown[c] += 1
            viseme = NEUTRAL
        stress = self._pending.stress
        if self._pending.start is not None:
            start = min(start, self._pending.start)
            self._pending = _Pending()
        self._append(viseme, start, end, stress)

    def _append(self, viseme: Viseme, start: float, end: float, stress: float) -> None:
        targets, weights = viseme.targets(), viseme.weights()
        if stress and viseme.open >= 0.2:  # a stressed vowel (or open consonant) opens wider
            targets[OPEN] = min(1.0, targets[OPEN] * (1.0 + self.options.stress_open * stress))
        self._segments.append(_Segment(viseme.name, start, end, targets, weights))

    def _forget(self, t: float) -> None:
        """Drop segments whose influence has ended before time t (they cannot change later frames)."""
        horizon = self.options.horizon_s
        keep = 0
        while keep < len(self._segments) - 1 and self._segments[keep].end + horizon < t:
            keep += 1
        del self._segments[:keep]

    # ------------------------------------------------------------------ dominance blend
    def _curve(self, t: np.ndarray) -> np.ndarray:
        """The parameters [len(t), K] at times t: dominance-weighted mean of the segments' targets."""
        o = self.options
        rest_t, rest_w = REST.targets(), o.rest_weight
        near = [g for g in self._segments if g.end > t[0] - o.horizon_s and g.start < t[-1] + o.horizon_s]
        if not near:
            return np.broadcast_to(rest_t, (t.size, VISEMES)).copy()
        s = np.array([g.start for g in near])[:, None, None]  # [S, 1, 1]
        e = np.array([g.end for g in near])[:, None, None]
        w = np.stack([g.weights for g in near])[:, None, :]  # [S, 1, K]
        tg = np.stack([g.targets for g in near])[:, None, :]
        tt = t[None, :, None]  # [1, N, 1]
        before, after = np.maximum(s - tt, 0.0), np.maximum(tt - e, 0.0)  # [S, N, 1]
        d = before + after
        inside = d == 0.0
        decay = np.where(before > 0, np.exp(-before / np.asarray(o.tau_ahead)),
                         np.exp(-after / np.asarray(o.tau_behind)))  # [S, N, K]
        taper = np.clip(1.0 - d / o.horizon_s, 0.0, 1.0) ** 2
        edge = np.minimum(tt - s, e - tt)  # how deep inside the segment
        ramp = np.clip(edge / np.maximum(np.minimum(o.ramp_s, (e - s) / 2), 1e-6), 0.0, 1.0)
        outer = np.sqrt(w)
        dom = np.where(inside, outer + (w - outer) * ramp * ramp * (3 - 2 * ramp), outer * decay * taper)
        num = (dom * tg).sum(axis=0) + rest_w * rest_t
        return num / (dom.sum(axis=0) + rest_w)


def track(phones: Sequence[Phone], options: VisemeOptions = VisemeOptions(), end_s: float | None = None
          ) -> np.ndarray:
    """A whole reply's rows [n_frames, K] (frames 0 .. the last starting before end_s, default the phones' end)."""
    t = VisemeTrack(options)
    return np.concatenate([t.push(phones), t.finish(end_s)])
