"""Write a CTranslate2 model.bin (ModelSpec._serialize's layout) and re-quantize one as CTranslate2 would
(ModelSpec._quantize "int8_float32" / "int16"): test fixtures for the reader, loadable by ctranslate2 itself.

    python tools/ct2_write.py SRC_DIR DST_DIR int8     # DST_DIR gets model.bin (+ config.json, tokenizer.json copied)
"""
from __future__ import annotations

import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

TYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
            np.dtype("float16"): 4, np.dtype("uint16"): 5}  # uint16: bfloat16 bits (see bfloat16_bits)
# the variables whose spec has a `<key>_scale` (LinearSpec, Conv1DSpec, EmbeddingsSpec weights)
QUANTIZABLE = re.compile(r"(/linear_\d+/weight|encoder/conv\d/weight|decoder/embeddings/weight)$")


def write_ct2(path: Path, spec: str, revision: int, variables: dict[str, np.ndarray], aliases: dict[str, str],
              version: int = 6) -> None:
    def string(s: str) -> bytes:
        raw = s.encode("utf-8")
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    with open(path, "wb") as f:
        f.write(struct.pack("<I", version) + string(spec) + struct.pack("<II", revision, len(variables)))
        for name in sorted(variables):
            a = np.array(variables[name], order="C")  # (np.ascontiguousarray would make a scalar 1-D)
            f.write(string(name) + struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape))
            f.write(struct.pack("<BI", TYPE_IDS[a.dtype], a.nbytes) + a.tobytes())
        f.write(struct.pack("<I", len(aliases)))
        f.writelines(string(alias) + string(target) for alias, target in sorted(aliases.items()))


def bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round half up) as its raw 16 bits, the way write_ct2 stores a bfloat16 variable."""
    return ((np.asarray(a, np.float32).view(np.uint32) + 0x8000) >> 16).astype(np.uint16)


def quantize(value: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(quantized, scale) exactly as ModelSpec._quantize computes them."""
    value = value.astype(np.float32)
    if kind == "int16":
        scale = np.float32(2 ** 10 / np.amax(np.absolute(value)))
        return np.clip(np.rint(value * scale), -32768, 32767).astype(np.int16), np.asarray(scale, np.float32)
    rows = value.reshape(value.shape[0], -1)
    amax = np.amax(np.absolute(rows), axis=1)
    amax[amax == 0] = 127.0
    amax = np.maximum(amax, np.float32(127) / np.finfo(np.float32).max)
    scale = (127.0 / amax).astype(np.float32)
    return np.rint(rows * scale[:, None]).astype(np.int8).reshape(value.shape), scale


def requantize(variables: dict[str, np.ndarray], aliases: dict[str, str], kind: str) -> dict[str, np.ndarray]:
    """int8 / int16 weights with their scales, every other float variable as float32 (aliases left out)."""
    out = {}
    for name, a in variables.items():
        if name in aliases:
            continue
        if QUANTIZABLE.search(name):
            out[name], out[name + "_scale"] = quantize(np.asarray(a), kind)
        elif a.dtype == np.float16:
            out[name] = np.asarray(a, np.float32)
        else:
            out[name] = np.asarray(a)
    return out


def main(src: Path, dst: Path, kind: str) -> None:
    import overlay  # noqa: F401

    from export.toolchain.checkpoints.ctranslate2 import read_ct2
    m = read_ct2(src / "model.bin")
    dst.mkdir(parents=True, exist_ok=True)
    write_ct2(dst / "model.bin", m.spec, m.revision, requantize(m.variables, m.aliases, kind), m.aliases)
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (src / f).is_file():
            shutil.copyfile(src / f, dst / f)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])


def ct2_variables_from_whisper(model, dtype=np.float16) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The inverse of the converter, written from CTranslate2's transformers.py WhisperLoader layout: our Whisper's
    weights as a WhisperSpec's variables (fused QKV with a zero key bias, fused cross KV, tied projection alias)."""
    sd = {k: v.detach().numpy().astype(dtype) for k, v in model.state_dict().items()}
    d = model.dims
    v: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str) -> None:
        v[f"{dst}/weight"], v[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def norm(dst: str, src: str) -> None:
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def attention(dst: str, src: str, cross: bool) -> None:
        zero = np.zeros_like(sd[f"{src}.query.bias"])
        if cross:
            linear(f"{dst}/linear_0", f"{src}.query")
            v[f"{dst}/linear_1/weight"] = np.concatenate([sd[f"{src}.key.weight"], sd[f"{src}.value.weight"]])
            v[f"{dst}/linear_1/bias"] = np.concatenate([zero, sd[f"{src}.value.bias"]])
        else:
            v[f"{dst}/linear_0/weight"] = np.concatenate([sd[f"{src}.{p}.weight"] for p in ("query", "key", "value")])
            v[f"{dst}/linear_0/bias"] = np.concatenate([sd[f"{src}.query.bias"], zero, sd[f"{src}.value.bias"]])
        linear(f"{dst}/linear_{2 if cross else 1}", f"{src}.out")
        norm(f"{dst}/layer_norm", f"{src}_ln")

    for side, layers in (("encoder", d.n_audio_layer), ("decoder", d.n_text_layer)):
        v[f"{side}/position_encodings/encodings"] = sd[f"{side}.positional_embedding"]
        for i in range(layers):
            dst, src = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            attention(f"{dst}/self_attention", f"{src}.attn", False)
            if side == "decoder":
                attention(f"{dst}/attention", f"{src}.cross_attn", True)
            linear(f"{dst}/ffn/linear_0", f"{src}.mlp.0")
            linear(f"{dst}/ffn/linear_1", f"{src}.mlp.2")
            norm(f"{dst}/ffn/layer_norm", f"{src}.mlp_ln")
    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    norm("encoder/layer_norm", "encoder.ln_post")
    norm("decoder/layer_norm", "decoder.ln")
    v["decoder/embeddings/weight"] = sd["decoder.token_embedding.weight"]
    v["encoder/num_heads"] = np.asarray(d.n_audio_head, np.int16)
    v["decoder/num_heads"] = np.asarray(d.n_text_head, np.int16)
    v.update({"decoder/activation": np.asarray(3, np.int8), "decoder/pre_norm": np.asarray(1, np.int8),
              "decoder/scale_embeddings": np.asarray(0, np.int8), "decoder/alibi": np.asarray(0, np.int8),
              "decoder/start_from_zero_embedding": np.asarray(0, np.int8),
              "decoder/alignment_heads": np.asarray(1, np.int16), "decoder/alignment_layer": np.asarray(-1, np.int16)})
    return v, {"decoder/projection/weight": "decoder/embeddings/weight"}
