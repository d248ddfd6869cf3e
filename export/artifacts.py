"""What the export step leaves beside the orchestrator: tokenizers and a manifest naming the preset."""
from __future__ import annotations

import json
from pathlib import Path

from export import vocab

MANIFEST = "export.json"  # in the orchestrator's version folder (model_repository/talking_head/1/)


def write_orchestrator_artifacts(folder: Path, preset: str, seed: int, weights: str = "seeded random") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocab.save(folder / "llm_tokenizer.json")
    vocab.save(folder / "asr_tokenizer.json")
    (folder / MANIFEST).write_text(json.dumps({
        "preset": preset, "seed": seed, "weights": weights,
        "llm_tokenizer": "llm_tokenizer.json", "asr_tokenizer": "asr_tokenizer.json",
    }, indent=2))


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m export` first")
    return json.loads(path.read_text())
