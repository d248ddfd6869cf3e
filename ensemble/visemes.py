"""Visemes from the speech's phoneme timings: how open, spread or rounded the mouth is at any time of the audio.

Each phoneme symbol (espeak-ng IPA as a Piper voice says it; ARPAbet for a FastSpeech2 front end) has a target
(media.VISEMES: open 0..1, width -1 rounded .. +1 spread, teeth 0..1 for f/v); a stress or length mark, a
space, punctuation and silence have none (the mouth closes, relaxed). The track over time is the piecewise
constant target signal smoothed by a Gaussian (co-articulation: a phoneme's shape starts before it and lingers
after it, as the muscles move), computed exactly per frame time with error functions, so frames of a streamed
reply need only the phonemes within a few sigma of them. Bilabials (p, b, m) close the lips whatever their
neighbours: their closure is smoothed with a shorter Gaussian and cuts the opening, so the lips meet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Viseme:
    open: float  # jaw and lips, 0 (closed) .. 1 (wide open)
    width: float = 0.0  # -1 rounded (oo, w) .. +1 spread (ee)
    teeth: float = 0.0  # the lower lip under the upper teeth (f, v)
    closure: bool = False  # a bilabial: the lips must meet


_V = Viseme
# the targets, by the phoneme's first letter (diacritics and length marks follow it and are ignored)
TARGETS: dict[str, Viseme] = {
    # bilabials
    "p": _V(0.0, closure=True), "b": _V(0.0, closure=True), "m": _V(0.0, closure=True),
    # labiodentals
    "f": _V(0.10, teeth=1.0), "v": _V(0.10, teeth=1.0),
    # rounded
    "w": _V(0.20, -1.0), "u": _V(0.35, -0.9), "ʊ": _V(0.35, -0.7), "o": _V(0.55, -0.7), "ɔ": _V(0.65, -0.5),
    "ɒ": _V(0.70, -0.4), "ʍ": _V(0.20, -1.0), "ɥ": _V(0.25, -0.8), "y": _V(0.30, -0.6),
    # open
    "a": _V(0.90, 0.2), "ɑ": _V(0.95, 0.0), "æ": _V(0.80, 0.4), "ʌ": _V(0.65, 0.1), "ɐ": _V(0.70, 0.1),
    # mid
    "ə": _V(0.45), "ɚ": _V(0.40, -0.2), "ɜ": _V(0.50, -0.1), "ɛ": _V(0.60, 0.4), "e": _V(0.45, 0.6),
    "ɘ": _V(0.40), "ɵ": _V(0.40, -0.4),
    # close, spread
    "i": _V(0.25, 0.9), "ɪ": _V(0.35, 0.7), "ɨ": _V(0.30, 0.5), "ᵻ": _V(0.30, 0.5), "j": _V(0.25, 0.7),
    # tongue and throat consonants: nearly closed, the jaw up (stops are silent: so is the mouth)
    "θ": _V(0.12, 0.2), "ð": _V(0.12, 0.2), "t": _V(0.08, 0.3), "d": _V(0.10, 0.3), "n": _V(0.08, 0.3),
    "l": _V(0.20, 0.2), "ɾ": _V(0.12, 0.3), "s": _V(0.06, 0.5), "z": _V(0.08, 0.5),
    "ʃ": _V(0.12, -0.5), "ʒ": _V(0.12, -0.5), "ɹ": _V(0.20, -0.4), "r": _V(0.20, -0.3),
    "k": _V(0.12), "g": _V(0.15), "ɡ": _V(0.15), "ŋ": _V(0.10), "h": _V(0.30), "x": _V(0.15), "ʔ": _V(0.05),
}
# ARPAbet (FastSpeech2's front end), by its letters without stress digits
ARPABET: dict[str, Viseme] = {
    "P": TARGETS["p"], "B": TARGETS["b"], "M": TARGETS["m"], "F": TARGETS["f"], "V": TARGETS["v"],
    "W": TARGETS["w"], "UW": TARGETS["u"], "UH": TARGETS["ʊ"], "OW": TARGETS["o"], "AO": TARGETS["ɔ"],
    "OY": TARGETS["ɔ"], "AA": TARGETS["ɑ"], "AE": TARGETS["æ"], "AH": TARGETS["ʌ"], "AW": TARGETS["a"],
    "AY": TARGETS["a"], "ER": TARGETS["ɚ"], "EH": TARGETS["ɛ"], "EY": TARGETS["e"], "IY": TARGETS["i"],
    "IH": TARGETS["ɪ"], "Y": TARGETS["j"], "TH": TARGETS["θ"], "DH": TARGETS["ð"], "T": TARGETS["t"],
    "D": TARGETS["d"], "N": TARGETS["n"], "L": TARGETS["l"], "S": TARGETS["s"], "Z": TARGETS["z"],
    "SH": TARGETS["ʃ"], "ZH": TARGETS["ʒ"], "CH": TARGETS["ʃ"], "JH": TARGETS["ʒ"], "R": TARGETS["ɹ"],
    "K": TARGETS["k"], "G": TARGETS["g"], "NG": TARGETS["ŋ"], "HH": TARGETS["h"],
}
SIGMA_S = 0.030  # co-articulation: the smoothing of the targets, seconds
CLOSURE_SIGMA_S = 0.015  # a bilabial's closure, smoothed less so the lips meet
# The mouth leads the sound: lips and jaw reach a shape ~50 ms before it is heard (co-articulation), and a VITS
# voice's durations place a phoneme's sound about a frame after its id (its audio onset comes early). Measured on
# the registry voice: Pearson r of opening vs loudness peaks at a 40-60 ms lead (loadtests/quality.py).
LEAD_S = 0.05
# no shape of their own, the mouth goes on with the phoneme before: Piper's pad between ids, stress, length and
# diacritic marks, the space between words (running speech does not close the mouth there)
CONTINUE = set("_ ˈˌːˑ̝̩̪̯̺̻̃̊ʰʲ˞ˤ")
# stress marks come before the syllable they stress, and VITS gives them (and their pad) the vowel's onset: they
# belong to the phoneme after them
LEADING = set("ˈˌ")


def target(symbol: str) -> Viseme | None:
    """The symbol's viseme, or None (silence, punctuation, an utterance's start or end: the mouth rests)."""
    if not symbol or symbol in CONTINUE:
        return None
    if symbol[0].isupper():  # ARPAbet
        return ARPABET.get(symbol.rstrip("012"))
    return TARGETS.get(symbol[0])


class VisemeTrack:
    """The viseme parameters at any time of a reply, from its phonemes as they arrive (audio clock, seconds)."""

    def __init__(self, sigma_s: float = SIGMA_S, closure_sigma_s: float = CLOSURE_SIGMA_S):
        self.sigma_s, self.closure_sigma_s = sigma_s, closure_sigma_s
        self._shapes: list[tuple[float, float, np.ndarray]] = []  # (start, end, [open, width, teeth])
        self._closures: list[tuple[float, float]] = []
        self._lead: float | None = None  # start of a stress mark (and its pads) waiting for its phoneme

    def add(self, symbol: str, start_s: float, length_s: float) -> None:
        if length_s <= 0:
            return
        end = start_s + length_s
        if symbol in LEADING:
            self._lead = start_s if self._lead is None else self._lead
            return
        if self._lead is not None and symbol in CONTINUE:  # the pads after a stress mark wait with it
            return
        if self._lead is not None:
            start_s, self._lead = self._lead, None
        if symbol in CONTINUE and self._shapes and abs(self._shapes[-1][1] - start_s) < 1e-6:
            s, _, shape = self._shapes[-1]  # a pad or mark: the phoneme before lasts through it
            self._shapes[-1] = (s, end, shape)
            if self._closures and abs(self._closures[-1][1] - start_s) < 1e-6:
                self._closures[-1] = (self._closures[-1][0], end)
            return
        v = target(symbol)
        if v is None:
            return
        self._shapes.append((start_s, end, np.array([v.open, v.width, v.teeth], np.float64)))
        if v.closure:
            self._closures.append((start_s, end))

    def __call__(self, t: float) -> np.ndarray:
        """[open, width, teeth] at time t (float32): a Gaussian-weighted mean of the targets around t + LEAD_S,
        silence 0."""
        t = t + LEAD_S
        out = np.zeros(3, np.float64)
        reach = 4 * self.sigma_s
        for start, end, shape in self._shapes:
            if end > t - reach and start < t + reach:
                out += shape * _covered(start, end, t, self.sigma_s)
        closed = sum(_covered(s, e, t, self.closure_sigma_s) for s, e in self._closures
                     if e > t - 4 * self.closure_sigma_s and s < t + 4 * self.closure_sigma_s)
        out[0] *= max(0.0, 1.0 - 1.5 * closed)  # a bilabial shuts the lips
        return out.astype(np.float32)

    def frames(self, indices, fps: int) -> np.ndarray:
        """[n, 3] parameters of video frames `indices` (frame i at i / fps)."""
        return np.stack([self(i / fps) for i in indices]) if len(indices) else np.zeros((0, 3), np.float32)


def _covered(start: float, end: float, t: float, sigma: float) -> float:
    """How much of a Gaussian around t (sigma) falls inside [start, end)."""
    k = 1.0 / (sigma * math.sqrt(2.0))
    return 0.5 * (math.erf((end - t) * k) - math.erf((start - t) * k))
