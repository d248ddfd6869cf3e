"""Released Whisper checkpoints -> `export.toolchain.models.whisper.Whisper` (+ the tokenizer when there is one).

Two layouts:

* Hugging Face (`openai/whisper-tiny` on the Hub, or `WhisperForConditionalGeneration.save_pretrained`):
  `config.json` gives `WhisperDims`; `model.safetensors` (or sharded through
  `model.safetensors.index.json`, or `pytorch_model.bin`) holds `model.encoder.*`,
  `model.decoder.*` and usually no `proj_out.weight` (tied to `model.decoder.embed_tokens.weight`).
  Names map one-to-one onto OpenAI's (see `hf_key`); `tokenizer.json` is read with `tokenizers`.
* OpenAI (`tiny.pt` ... `large-v3.pt` from the openai-whisper package): one torch pickle
  `{"dims": {...}, "model_state_dict": {...}}`, read with `weights_only=True`. Its names are ours.
  It carries no tokenizer: openai-whisper builds one with tiktoken from the `gpt2.tiktoken` /
  `multilingual.tiktoken` files inside the package (`whisper.tokenizer.get_tokenizer`). The token
  ids are the same as the Hugging Face `tokenizer.json` of the same model, so pass
  `tokenizer=".../tokenizer.json"` (e.g. from `openai/whisper-tiny`, or `whisper-tiny.en` for the
  English-only `*.en.pt`), or put that file beside the `.pt`; otherwise the tokenizer is None
  (`require_tokenizer=True` makes that an error).

    model, tok = load_whisper("path/to/whisper-tiny")   # HF folder
    model, tok = load_whisper("tiny.pt", tokenizer="whisper-tiny/tokenizer.json")
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from export.contract.presets import WhisperDims
from export.toolchain.checkpoints.common import (
    CheckpointError,
    load_state_dict_strict,
    load_tokenizer,
    read_json,
    read_state_dict,
    read_torch,
    resolve,
)
from export.toolchain.models.whisper import Whisper

OPENAI_TOKENIZER_NOTE = (
    "an OpenAI Whisper .pt holds no tokenizer: openai-whisper builds it with tiktoken "
    "(whisper.tokenizer.get_tokenizer). Pass tokenizer= the tokenizer.json of the same model "
    "from the Hugging Face Hub (openai/whisper-<size>[.en]; the ids are the same), or put it beside the .pt")

# one-to-one renames of dotted name segments, ours (openai) -> Hugging Face
_SEGMENTS = {
    "blocks": "layers", "attn": "self_attn", "cross_attn": "encoder_attn",
    "query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj",
    "attn_ln": "self_attn_layer_norm", "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp_ln": "final_layer_norm", "ln_post": "layer_norm", "ln": "layer_norm",
    "token_embedding": "embed_tokens",
}


def hf_key(key: str) -> str:
    """Our (= OpenAI's) state-dict key -> the Hugging Face WhisperForConditionalGeneration key.

    encoder.blocks.0.attn.query.weight -> model.encoder.layers.0.self_attn.q_proj.weight
    encoder.positional_embedding       -> model.encoder.embed_positions.weight
    decoder.blocks.1.mlp.2.bias        -> model.decoder.layers.1.fc2.bias
    """
    if key.endswith(".positional_embedding"):
        return "model." + key[: -len("positional_embedding")] + "embed_positions.weight"
    key = re.sub(r"\.mlp\.0\.", ".fc1.", key)
    key = re.sub(r"\.mlp\.2\.", ".fc2.", key)
    return "model." + ".".join(_SEGMENTS.get(seg, seg) for seg in key.split("."))


def dims_from_hf_config(config: dict, source: str = "config.json") -> WhisperDims:
    """WhisperDims from a Hugging Face WhisperConfig dict; CheckpointError for what our module cannot express."""
    if config.get("model_type", "whisper") != "whisper":
        raise CheckpointError(f"{source}: model_type is {config.get('model_type')!r}, not 'whisper'")
    need = ("d_model", "encoder_layers", "encoder_attention_heads", "decoder_layers", "decoder_attention_heads",
            "num_mel_bins", "vocab_size", "max_source_positions", "max_target_positions")
    absent = [k for k in need if k not in config]
    if absent:
        raise CheckpointError(f"{source}: a Whisper config.json needs {', '.join(absent)}")
    d = config["d_model"]
    unsupported = []
    for k in ("encoder_ffn_dim", "decoder_ffn_dim"):
        if config.get(k, 4 * d) != 4 * d:
            unsupported.append(f"{k}={config[k]} (export/toolchain/models/whisper.py fixes the MLP width at "
                               f"4 * d_model = {4 * d})")
    if config.get("activation_function", "gelu") != "gelu":
        unsupported.append(f"activation_function={config['activation_function']!r} (ours is exact 'gelu')")
    if config.get("scale_embedding", False):
        unsupported.append("scale_embedding=true (ours adds unscaled token embeddings)")
    if config.get("tie_word_embeddings", True) is False:
        unsupported.append("tie_word_embeddings=false (our decoder's output projection is the token embedding)")
    if unsupported:
        raise CheckpointError(f"{source}: unsupported Whisper variant: " + "; ".join(unsupported))
    return WhisperDims(
        n_mels=config["num_mel_bins"], n_audio_ctx=config["max_source_positions"], n_audio_state=d,
        n_audio_head=config["encoder_attention_heads"], n_audio_layer=config["encoder_layers"],
        n_vocab=config["vocab_size"], n_text_ctx=config["max_target_positions"], n_text_state=d,
        n_text_head=config["decoder_attention_heads"], n_text_layer=config["decoder_layers"])


def dims_from_openai(dims: dict, source: str) -> WhisperDims:
    fields = set(WhisperDims.__dataclass_fields__)
    if not isinstance(dims, dict) or set(dims) != fields:
        got = sorted(dims) if isinstance(dims, dict) else type(dims).__name__
        raise CheckpointError(f"{source}: 'dims' should have exactly {sorted(fields)}, got {got}")
    return WhisperDims(**{k: int(v) for k, v in dims.items()})


def _load_hf(folder: Path, weights: Path | None = None) -> Whisper:
    source = str(weights or folder)
    dims = dims_from_hf_config(read_json(folder / "config.json"), str(folder / "config.json"))
    sd = read_state_dict(weights or folder)
    if sd and not any(k.startswith("model.") for k in sd) and any(k.startswith("encoder.layers.") for k in sd):
        sd = {"model." + k: v for k, v in sd.items()}  # a WhisperModel (no "model." prefix, no proj_out)
    model = Whisper(dims)
    proj = sd.pop("proj_out.weight", None)
    emb = sd.get("model.decoder.embed_tokens.weight")
    if proj is not None and emb is not None and (proj.shape != emb.shape or not torch.equal(proj, emb)):
        raise CheckpointError(f"{source}: proj_out.weight differs from model.decoder.embed_tokens.weight; "
                              f"export/toolchain/models/whisper.py ties the output projection to the token embedding")
    rename = {hf_key(k): k for k in model.state_dict()}
    return load_state_dict_strict(model, sd, source=source, rename=rename)


def _load_openai(file: Path) -> Whisper:
    ckpt = read_torch(file)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        got = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{file}: an OpenAI Whisper checkpoint is {{'dims': ..., 'model_state_dict': ...}}, "
                              f"this one has {got}")
    model = Whisper(dims_from_openai(ckpt["dims"], str(file)))
    return load_state_dict_strict(model, ckpt["model_state_dict"], source=str(file))


def load_whisper(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                 require_tokenizer: bool = False, allow_download: bool = True,
                 dtype: torch.dtype = torch.float32):
    """(Whisper in eval mode, tokenizers.Tokenizer or None) from a HF folder/hub id, a weights file, or an OpenAI .pt.

    path: a folder with config.json (+ model.safetensors / index / pytorch_model.bin), one weights
    file inside such a folder, an OpenAI `.pt`, or a hub id (downloaded when allowed; see `resolve`).
    tokenizer: a tokenizer.json (or a folder holding one) to use instead of the checkpoint's own.
    """
    p = resolve(path, allow_download)
    folder = p if p.is_dir() else p.parent
    if p.is_dir() and (p / "config.json").is_file():
        model = _load_hf(p)
    elif p.is_file() and (p.suffix == ".safetensors" or p.name.endswith(".index.json")
                          or (p.suffix == ".bin" and (folder / "config.json").is_file())):
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{p}: a Hugging Face weights file needs the config.json beside it")
        model = _load_hf(folder, p)
    elif p.is_file():
        model = _load_openai(p)
    else:
        pts = sorted(p.glob("*.pt"))
        if len(pts) != 1:
            raise CheckpointError(f"{p}: neither a Hugging Face Whisper folder (no config.json) nor a folder "
                                  f"with one OpenAI .pt (found {[x.name for x in pts]})")
        p = pts[0]
        model = _load_openai(p)
    tok = load_tokenizer(Path(tokenizer)) if tokenizer is not None else load_tokenizer(folder)
    if tokenizer is not None and tok is None:
        raise CheckpointError(f"{tokenizer}: no tokenizer.json there")
    if tok is None and require_tokenizer:
        note = OPENAI_TOKENIZER_NOTE if p.is_file() and p.suffix in (".pt", ".pth") else \
            f"{folder} has no tokenizer.json"
        raise CheckpointError(f"{p}: no tokenizer: {note}")
    return model.to(dtype).eval(), tok


def state_dict_to_hf(model: Whisper) -> dict[str, Tensor]:
    """Our weights under Hugging Face names (the inverse of loading; used by tests and conversions)."""
    return {hf_key(k): v for k, v in model.state_dict().items()}
