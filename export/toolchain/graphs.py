"""The stage graphs of a preset, built from the model zoo with seeded random weights
(or around real checkpoints already loaded, see export/toolchain/weights.py)."""
from __future__ import annotations

import torch

from export.contract import spec
from export.contract.presets import Preset
from export.toolchain.models import fastspeech2, hifigan, mouth_warp, qwen2, vits, wav2lip, whisper


def build_graphs(preset: Preset, seed: int = 0, names: list[str] | None = None,
                 modules: dict[str, torch.nn.Module] | None = None) -> dict[str, torch.nn.Module]:
    """name -> graph module (eval mode, inference weights), for the stage names asked for (default: the stages a
    turn uses with the preset's families).

    modules: a Preset field ("asr", "llm", "vits", "fastspeech2", "hifigan", "wav2lip") -> an already loaded model
    (export/toolchain/weights.py) used instead of a seeded random one built from the preset.
    """
    wanted = set(names) if names else {s.name for s in spec.pipeline_stages(preset)}
    modules = modules or {}

    def model(field: str, build):
        given = modules.get(field)
        return build(getattr(preset, field), seed) if given is None else given

    graphs: dict[str, torch.nn.Module] = {}
    if wanted & {"asr_encoder", "asr_decoder"}:
        asr = model("asr", whisper.build)
        graphs["asr_encoder"] = whisper.EncoderGraph(asr)
        graphs["asr_decoder"] = whisper.DecoderGraph(asr)
    if "llm" in wanted:
        graphs["llm"] = qwen2.LlmGraph(model("llm", qwen2.build))
    if wanted & {"tts", "vocoder"}:  # one voice feeds both stages
        voice = model("vits", vits.build)
        graphs["tts"] = vits.TtsGraph(voice)
        graphs["vocoder"] = vits.VocoderGraph(voice)
    if "fastspeech2" in wanted:
        graphs["fastspeech2"] = fastspeech2.TtsGraph(model("fastspeech2", fastspeech2.build))
    if "hifigan" in wanted:
        graphs["hifigan"] = hifigan.VocoderGraph(model("hifigan", hifigan.build))
    if "lipsync" in wanted:  # the warp: no weights
        graphs["lipsync"] = mouth_warp.LipsyncGraph(mouth_warp.build())
    if "wav2lip" in wanted:
        graphs["wav2lip"] = wav2lip.LipsyncGraph(model("wav2lip", wav2lip.build))
    unknown = wanted - set(graphs)
    if unknown:
        raise ValueError(f"no PyTorch graph for {sorted(unknown)}; stages: {[s.name for s in spec.STAGES]}")
    return {k: v.eval() for k, v in graphs.items() if k in wanted}


def parameter_count(module: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
