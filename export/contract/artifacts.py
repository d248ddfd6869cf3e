"""What the export step leaves beside the orchestrator: tokenizers and a manifest naming the preset.

With real checkpoints (`python -m export --weights ...`, see export/toolchain/weights.py) the ASR / LLM
tokenizer.json of the checkpoint is copied in place of the tiny word tokenizer, the LLM's chat
template is saved beside it (`llm_chat_template.jinja`, its special tokens in the manifest), and a
TTS lexicon found beside the FastSpeech2 checkpoint is copied as `tts_lexicon.txt` for export/contract/g2p.py.
The manifest records, per family, "seeded random" or where the weights came from.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from export.contract import vocab
from export.contract.piper_voice import default_voice_json

MANIFEST = "export.json"  # in the orchestrator's version folder (model_repository/talking_head/1/)
CHAT_TEMPLATE = "llm_chat_template.jinja"
TTS_LEXICON = "tts_lexicon.txt"
TTS_VOICE = "tts_voice.json"  # the Piper voice config (speech family "vits")
# in a stage's version folder beside model.onnx: the module state of a stage exported from real weights, which
# the PyTorch-on-CUDA variant loads (seeded random stages are rebuilt there from the preset and seed)
STAGE_WEIGHTS = "weights.safetensors"


def _copy(src: Path, dst: Path) -> None:
    if Path(src).resolve() != dst.resolve():
        shutil.copyfile(src, dst)


def write_orchestrator_artifacts(folder: Path, preset: str, seed: int, weights: str | dict = "seeded random", *,
                                 asr_tokenizer: Path | None = None, llm_tokenizer: Path | None = None,
                                 chat_template: str | None = None, tts_lexicon: Path | None = None,
                                 tts_frontend: str | None = None, dims: dict | None = None,
                                 special_tokens: vocab.SpecialTokens = vocab.TINY_SPECIAL_TOKENS,
                                 speech: str = "vits", lipsync: str = "warp", tts_voice: Path | None = None,
                                 models: list[str] | None = None, max_reply_tokens: int | None = None) -> None:
    """Write the tokenizers (the checkpoints' when given, else the tiny word tokenizer) and the manifest.

    weights: "seeded random" for all, or family -> "seeded random" / {"source", "path", "files"}.
    chat_template: the LLM's Jinja2 chat template (a ChatTemplate's .tokens are recorded too).
    dims: family -> the model dimensions exported (when they differ from the named preset's).
    special_tokens: the ASR prompt and end, the LLM's stops and banned tokens (the checkpoints' when real).
    speech, lipsync: the families the orchestrator drives (export/contract/spec.py SPEECH_FAMILIES, LIPSYNC_FAMILIES).
    tts_voice: with speech "vits", the Piper voice's .onnx.json (its phoneme ids and inference scales); None: the
    default espeak phoneme table and Piper's scales (seeded random voices).
    models: the stage models the export wrote, which the server loads (default: none named).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for src, name in ((llm_tokenizer, "llm_tokenizer.json"), (asr_tokenizer, "asr_tokenizer.json")):
        if src is not None:
            _copy(Path(src), folder / name)
        else:
            vocab.save(folder / name)
    manifest = {
        "preset": preset, "seed": seed, "weights": weights,
        "llm_tokenizer": "llm_tokenizer.json", "asr_tokenizer": "asr_tokenizer.json",
        "special_tokens": special_tokens.to_json(), "speech": speech, "lipsync": lipsync,
        "models": list(models or []),
    }
    if max_reply_tokens is not None:
        manifest["max_reply_tokens"] = max_reply_tokens
    if speech == "vits":
        if tts_voice is not None:
            _copy(Path(tts_voice), folder / TTS_VOICE)
        else:
            (folder / TTS_VOICE).write_text(json.dumps(default_voice_json(), indent=1), encoding="utf-8")
        manifest["tts_voice"] = TTS_VOICE
    elif (folder / TTS_VOICE).exists():
        (folder / TTS_VOICE).unlink()
    if chat_template is not None:
        (folder / CHAT_TEMPLATE).write_text(str(chat_template), encoding="utf-8")
        manifest["llm_chat_template"] = CHAT_TEMPLATE
        manifest["llm_special_tokens"] = dict(getattr(chat_template, "tokens", {}) or {})
    elif (folder / CHAT_TEMPLATE).exists():
        (folder / CHAT_TEMPLATE).unlink()  # from an earlier export with real LLM weights
    if tts_lexicon is not None:
        _copy(Path(tts_lexicon), folder / TTS_LEXICON)
        manifest["tts_lexicon"] = TTS_LEXICON
    elif (folder / TTS_LEXICON).exists():
        (folder / TTS_LEXICON).unlink()
    if tts_frontend is not None:
        manifest["tts_frontend"] = tts_frontend
    if dims is not None:
        manifest["dims"] = dims
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m export` first")
    return json.loads(path.read_text())


def manifest_preset(info: dict):
    """The Preset the export wrote: the named preset, with every family whose weights were real
    replaced by the dimensions recorded from its checkpoint (so KV-cache shapes follow it)."""
    import dataclasses

    from export.contract.presets import get_preset

    preset = get_preset(info["preset"])
    for family, dims in (info.get("dims") or {}).items():
        cls = type(getattr(preset, family))
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(map(tuple, v)) if isinstance(v, list) and v and isinstance(v[0], list)
                  else tuple(v) if isinstance(v, list) else v for k, v in dims.items() if k in fields}
        preset = dataclasses.replace(preset, **{family: cls(**values)})
    return dataclasses.replace(preset, speech=info.get("speech", preset.speech),
                               lipsync=info.get("lipsync", preset.lipsync),
                               max_reply_tokens=info.get("max_reply_tokens", preset.max_reply_tokens))


def served_models(folder: Path, config_name: str = "cpu") -> list[str]:
    """What a server of this export loads (`folder`: the orchestrator's version folder, its manifest beside it): the
    stages the manifest names (the speech and lip-sync families the export chose, the VAD, the face detector),
    those the runtime variant `config_name` adds (spec.variant_models), and the orchestration models. Another
    family's folders may stand in the repository with configs and no graph; they stay unloaded."""
    from export.contract.spec import ORCHESTRATION, variant_models

    info = read_manifest(folder)
    if not info.get("models"):
        raise RuntimeError(f"{folder}: the export manifest names no models (an older export); run `python -m export`")
    return [*info["models"], *(s.name for s in variant_models(config_name, info["models"]) + ORCHESTRATION)]
