"""A Piper voice's `.onnx.json` (torch-free): audio rate, espeak voice, inference defaults, phoneme -> id table.

    voice = read_voice_config("en_US-joe-medium.onnx.json")
    voice.scales(speed=1.2)     # the tts stage's `scales` row

Text -> the voice's phoneme ids (espeak-ng, Piper's id layout) is export/contract/phonemes.py PiperPhonemizer.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

BOS, EOS, PAD = "^", "$", "_"


class VoiceConfigError(ValueError):
    """A voice .onnx.json that is missing, unreadable or unusable here (the message says which field)."""


@dataclass(frozen=True)
class PiperVoiceConfig:
    path: str  # the .onnx.json it was read from
    sample_rate: int  # audio.sample_rate (Hz)
    quality: str  # audio.quality: x_low, low, medium, high ("" when absent)
    espeak_voice: str  # espeak.voice, e.g. "en-us"
    phoneme_type: str  # "espeak" (or "text": codepoints, not supported by text_to_ids)
    phoneme_id_map: dict[str, tuple[int, ...]] = field(compare=False, repr=False)  # phoneme -> ids
    phoneme_map: dict[str, tuple[str, ...]] = field(compare=False, repr=False)  # phoneme -> replacement phonemes
    num_symbols: int = 256  # rows of the phoneme embedding
    num_speakers: int = 1
    noise_scale: float = 0.667  # inference defaults
    length_scale: float = 1.0
    noise_w: float = 0.8
    language: str = ""  # language.code, e.g. "en_US"

    def scales(self, speed: float = 1.0) -> list[float]:
        """The tts stage's `scales` row: noise_scale, length_scale / speed, noise_w."""
        return [self.noise_scale, self.length_scale / speed, self.noise_w]


def _get(cfg: dict, path: str, source: str, required: bool = True, default=None):
    node = cfg
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            if required:
                raise VoiceConfigError(f"{source}: no {path!r} (a Piper voice config has it)")
            return default
        node = node[key]
    return node


def default_voice_json() -> dict:
    """A voice config for a seeded random VITS (presets tiny, base): piper_phonemize's own espeak phoneme table
    (every Piper espeak voice's is a subset of it), en-us, Piper's inference defaults."""
    try:
        from piper_phonemize import get_espeak_map
    except ImportError:
        raise VoiceConfigError("the default phoneme table needs piper_phonemize "
                               "(pip install --no-deps piper-phonemize-cross==1.2.1)") from None
    return {"audio": {"sample_rate": 22050, "quality": "medium"}, "espeak": {"voice": "en-us"},
            "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}, "phoneme_type": "espeak",
            "phoneme_map": {}, "phoneme_id_map": get_espeak_map(), "num_symbols": 256, "num_speakers": 1,
            "dataset": "seeded random (no voice)"}


def read_voice_config(path: str | os.PathLike) -> PiperVoiceConfig:
    """Parse and check a Piper .onnx.json."""
    source = str(path)
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VoiceConfigError(f"{source}: cannot read JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise VoiceConfigError(f"{source}: a Piper voice config is a JSON object")
    id_map = _get(cfg, "phoneme_id_map", source)
    if not isinstance(id_map, dict) or not id_map:
        raise VoiceConfigError(f"{source}: phoneme_id_map must be a non-empty object phoneme -> [ids]")
    bad = [k for k, v in id_map.items() if not (isinstance(v, list) and v and all(isinstance(i, int) for i in v))]
    if bad:
        raise VoiceConfigError(f"{source}: phoneme_id_map entries must be lists of ints: {bad[:5]}")
    absent = [s for s in (BOS, EOS, PAD) if s not in id_map]
    if absent:
        raise VoiceConfigError(f"{source}: phoneme_id_map lacks {absent} (BOS ^, EOS $, pad _)")
    num_symbols = int(_get(cfg, "num_symbols", source, required=False, default=256))
    too_big = max(max(v) for v in id_map.values())
    if too_big >= num_symbols:
        raise VoiceConfigError(f"{source}: phoneme id {too_big} >= num_symbols {num_symbols}")
    inference = cfg.get("inference") or {}
    return PiperVoiceConfig(
        path=source, sample_rate=int(_get(cfg, "audio.sample_rate", source)),
        quality=str(_get(cfg, "audio.quality", source, required=False, default="")),
        espeak_voice=str(_get(cfg, "espeak.voice", source, required=False, default="")),
        phoneme_type=str(cfg.get("phoneme_type", "espeak")),
        phoneme_id_map={k: tuple(v) for k, v in id_map.items()},
        phoneme_map={k: tuple(v) for k, v in (cfg.get("phoneme_map") or {}).items()},
        num_symbols=num_symbols, num_speakers=int(cfg.get("num_speakers", 1)),
        noise_scale=float(inference.get("noise_scale", 0.667)), length_scale=float(inference.get("length_scale", 1.0)),
        noise_w=float(inference.get("noise_w", 0.8)), language=str((cfg.get("language") or {}).get("code", "")))
