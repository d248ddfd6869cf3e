"""The six stage graphs of a preset, built from the model zoo with seeded random weights
(or around real checkpoints already loaded, see export/toolchain/weights.py)."""
from __future__ import annotations

import torch

from export.contract.presets import Preset
from export.toolchain.models import fastspeech2, hifigan, qwen2, wav2lip, whisper


def build_graphs(preset: Preset, seed: int = 0, names: list[str] | None = None,
                 modules: dict[str, torch.nn.Module] | None = None) -> dict[str, torch.nn.Module]:
    """name -> graph module (eval mode, inference weights), for the stage names asked for.

    modules: family ("asr", "llm", "tts", "vocoder", "lipsync") -> an already loaded model
    (export/toolchain/weights.py) used instead of a seeded random one built from the preset.
    """
    wanted = set(names) if names else {"asr_encoder", "asr_decoder", "llm", "tts", "vocoder", "lipsync"}
    modules = modules or {}
    graphs: dict[str, torch.nn.Module] = {}
    if wanted & {"asr_encoder", "asr_decoder"}:
        asr = _given(modules, "asr", lambda: whisper.build(preset.asr, seed))
        graphs["asr_encoder"] = whisper.EncoderGraph(asr)
        graphs["asr_decoder"] = whisper.DecoderGraph(asr)
    if "llm" in wanted:
        graphs["llm"] = qwen2.LlmGraph(_given(modules, "llm", lambda: qwen2.build(preset.llm, seed)))
    if "tts" in wanted:
        graphs["tts"] = fastspeech2.TtsGraph(_given(modules, "tts", lambda: fastspeech2.build(preset.tts, seed)))
    if "vocoder" in wanted:
        graphs["vocoder"] = hifigan.VocoderGraph(_given(modules, "vocoder", lambda: hifigan.build(preset.vocoder, seed)))
    if "lipsync" in wanted:
        graphs["lipsync"] = wav2lip.LipsyncGraph(_given(modules, "lipsync", lambda: wav2lip.build(preset.lipsync, seed)))
    return {k: v.eval() for k, v in graphs.items() if k in wanted}


def _given(modules: dict[str, torch.nn.Module], family: str, build) -> torch.nn.Module:
    module = modules.get(family)
    return build() if module is None else module


def parameter_count(module: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
