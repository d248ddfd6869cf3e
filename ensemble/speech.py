"""The speech families on the orchestrator's side: text -> symbol ids (with what each id says, for the lip-sync),
and the acoustic stage's inputs for one utterance (export/contract/spec.py SPEECH_FAMILIES has the stages).

  vits         a Piper voice: text normalized for speech, espeak-ng phonemes, the voice's ids, one utterance per
               sentence (as Piper synthesizes; export/contract/phonemes.py); scales = noise_scale, length_scale / speed,
               noise_w from the voice's json, and a seed per utterance
  fastspeech2  ARPAbet (lexicon or CMUdict) or characters (export/contract/g2p.py); controls = pitch, energy,
               1 / speed

`Voice.utterances(text)` cuts a reply piece into utterances; `Voice.request(utterance, options, seed)` is the
acoustic stage's request (names checked against the spec by the caller).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ensemble.options import TurnOptions
from export.contract import text_frontend
from export.contract.phonemes import PhonemizerOptions, PiperPhonemizer
from export.contract.piper_voice import PiperVoiceConfig
from export.contract.spec import SPEECH_FAMILIES, SpeechStages


@dataclass(frozen=True)
class Utterance:
    """One acoustic-model call's input: its ids, and what each says (a phoneme, a pad or marker symbol, "" unknown)."""

    ids: tuple[int, ...]
    symbols: tuple[str, ...]  # same length as ids


class Voice(Protocol):
    family: str

    @property
    def stages(self) -> SpeechStages: ...

    def utterances(self, text: str, max_ids: int) -> list[Utterance]: ...

    def request(self, u: Utterance, options: TurnOptions, seed: int) -> dict[str, np.ndarray]: ...


def _row(values, dtype) -> np.ndarray:
    return np.asarray([values], dtype=dtype)


@dataclass(frozen=True)
class PiperVoice:
    """The vits family's front end: a Piper voice's phonemizer (the export copies the voice json beside the
    orchestrator). Its max_ids is fixed at load (the stage's `phonemes` axis); `max_ids` here can only lower it."""

    phonemizer: PiperPhonemizer
    family: str = "vits"

    @property
    def config(self) -> PiperVoiceConfig:
        return self.phonemizer.voice

    @property
    def stages(self) -> SpeechStages:
        return SPEECH_FAMILIES[self.family]

    def utterances(self, text: str, max_ids: int) -> list[Utterance]:
        ph = self.phonemizer
        if max_ids < ph.options.max_ids:
            ph = ph.with_options(replace(ph.options, max_ids=max_ids))
        return [Utterance(u.ids, u.symbols) for u in ph.utterances(text)]

    def request(self, u: Utterance, options: TurnOptions, seed: int) -> dict[str, np.ndarray]:
        c = self.config
        return {"phonemes": _row(u.ids, np.int64), "phoneme_lengths": _row([len(u.ids)], np.int64),
                "scales": _row(c.scales(options.speed), np.float32), "seed": _row([seed], np.int64)}


@dataclass(frozen=True)
class FastSpeech2Voice:
    """The fastspeech2 family's front end: ARPAbet or characters, one utterance per piece."""

    text_to_ids: object  # Callable[[str], list[int]] (export/contract/g2p.py G2P.text_to_ids or characters)
    family: str = "fastspeech2"

    @property
    def stages(self) -> SpeechStages:
        return SPEECH_FAMILIES[self.family]

    def utterances(self, text: str, max_ids: int) -> list[Utterance]:
        ids = list(self.text_to_ids(text))[:max_ids]
        if not ids:
            return []
        table = text_frontend.symbols
        return [Utterance(tuple(ids), tuple(table[i].lstrip("@") if 0 < i < len(table) else "" for i in ids))]

    def request(self, u: Utterance, options: TurnOptions, seed: int) -> dict[str, np.ndarray]:
        return {"phonemes": _row(u.ids, np.int64), "phoneme_lengths": _row([len(u.ids)], np.int64),
                "controls": _row([options.pitch, options.energy, 1.0 / options.speed], np.float32)}


def load_voice(artifacts: Path, info: dict) -> Voice:
    """The front end the export's manifest names (`speech`, and `tts_voice` / `tts_frontend` / `tts_lexicon`)."""
    family = info.get("speech")
    if family == "vits":
        max_ids = SPEECH_FAMILIES[family].acoustic.axis("phonemes").max
        return PiperVoice(PiperPhonemizer.from_json(artifacts / info["tts_voice"], PhonemizerOptions(max_ids=max_ids)))
    if family == "fastspeech2":
        if info.get("tts_frontend") != "arpabet":
            return FastSpeech2Voice(text_frontend.text_to_ids)
        from export.contract.g2p import make_g2p

        lexicon = artifacts / info["tts_lexicon"] if "tts_lexicon" in info else None
        return FastSpeech2Voice(make_g2p(lexicon).text_to_ids)
    raise ValueError(f"{artifacts}/export.json: speech family {family!r} is not one of {sorted(SPEECH_FAMILIES)}; "
                     f"run `python -m export` again")
