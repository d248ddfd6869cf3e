"""GGUF (llama.cpp) Llama-family language models -> `export.toolchain.models.qwen2.Qwen2ForCausalLM`, with the
tokenizer and chat template the file carries.

    model, tokenizer, template = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

Read with the `gguf` library (PyPI, llama.cpp's own reader):
* config from the metadata: `{arch}.block_count`, `embedding_length`, `feed_forward_length`,
  `attention.head_count(_kv)`, `rope.freq_base`, `attention.layer_norm_rms_epsilon`, `context_length`; tied
  embeddings when the file has no `output.weight`; architectures `llama` (no QKV bias) and `qwen2` (QKV bias);
* every tensor dequantized to float32 (`gguf.quants.dequantize`; Q4_1, Q8_0, F16, ... as the file holds them):
  the model computes with the quantized file's values, not the original checkpoint's;
* names mapped back to transformers' (token_embd -> model.embed_tokens, blk.N.attn_q -> ...q_proj, ...);
* llama.cpp's converter permutes the rows of Q and K (LlamaModel.permute, for its rotary layout); undone here
  for `llama` (qwen2 files are not permuted);
* the tokenizer: `tokenizer.ggml.model` gpt2 = byte-level BPE from `tokens` and `merges`, the pre-tokenizer named
  by `tokenizer.ggml.pre` (digits split one by one for smollm / llama-bpe / qwen2, as their tokenizer.json),
  control tokens (`token_type` 3) added as special tokens; `tokenizer.chat_template` as a ChatTemplate with the
  bos / eos tokens it may print.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from export.contract.chat import ChatTemplate
from export.contract.presets import Qwen2Config
from export.toolchain.checkpoints.common import CheckpointError, load_state_dict_strict
from export.toolchain.models.qwen2 import Qwen2ForCausalLM

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
CONTROL = 3  # llama.cpp's token_type of control (special) tokens
# tokenizer.ggml.pre values whose pre-tokenizer splits digits one by one before GPT-2's byte-level regex
DIGIT_SPLITTING = ("smollm", "llama-bpe", "qwen2", "default")

_NAMES = {  # llama.cpp tensor name -> transformers' (per block, with {i})
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise CheckpointError("reading GGUF needs the `gguf` package (pip install --no-deps gguf==0.19.0)") from None
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # not GGUF, truncated, an unknown version
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _field(reader, key: str, source: Path, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise CheckpointError(f"{source}: no {key!r} in the GGUF metadata")
        return default
    return field.contents()


def config_from_gguf(reader, source: Path) -> tuple[str, Qwen2Config]:
    arch = _field(reader, "general.architecture", source)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"{source}: architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    names = {t.name for t in reader.tensors}
    tokens = _field(reader, "tokenizer.ggml.tokens", source)
    heads = int(_field(reader, f"{arch}.attention.head_count", source))
    hidden = int(_field(reader, f"{arch}.embedding_length", source))
    rope_dims = int(_field(reader, f"{arch}.rope.dimension_count", source, default=hidden // heads))
    if rope_dims != hidden // heads:
        raise CheckpointError(f"{source}: rotary on {rope_dims} of {hidden // heads} head dims (partial RoPE): "
                              f"not supported")
    return arch, Qwen2Config(
        vocab_size=len(tokens), hidden_size=hidden,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length", source)),
        num_hidden_layers=int(_field(reader, f"{arch}.block_count", source)), num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, f"{arch}.attention.head_count_kv", source, default=heads)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", source, default=10000.0)),
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", source, default=1e-6)),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", source, default=2048)),
        tie_word_embeddings="output.weight" not in names, attention_bias="blk.0.attn_q.bias" in names)


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's LlamaModel.permute of a Q or K projection's rows (heads: that projection's heads)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def state_dict_from_gguf(reader, arch: str, config: Qwen2Config, source: Path) -> dict[str, torch.Tensor]:
    from gguf.quants import dequantize

    by_ours = {}
    for i in range(config.num_hidden_layers):
        by_ours.update({k.format(i=i): v.format(i=i) for k, v in _NAMES.items() if "{i}" in k})
    by_ours.update({k: v for k, v in _NAMES.items() if "{i}" not in k})
    out = {}
    for t in reader.tensors:
        name = by_ours.get(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":
                raise CheckpointError(f"{source}: rope_freqs (scaled RoPE): not supported")
            raise CheckpointError(f"{source}: tensor {t.name!r} has no place in a {arch} model")
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(list(reversed(t.shape.tolist())))
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = unpermute(w, config.num_attention_heads if "q_proj" in name else config.num_key_value_heads)
        out[name] = torch.from_numpy(w.copy())
    if config.tie_word_embeddings:  # one matrix, under both of the module's names
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def tokenizer_from_gguf(reader, source: Path):
    """The GGUF's byte-level BPE as a `tokenizers.Tokenizer` (what tokenizer.json of the same model holds)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model", source)
    if kind != "gpt2":
        raise CheckpointError(f"{source}: tokenizer.ggml.model {kind!r}; only byte-level BPE (gpt2) is supported")
    tokens = list(_field(reader, "tokenizer.ggml.tokens", source))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", source)]
    types = list(_field(reader, "tokenizer.ggml.token_type", source, default=[1] * len(tokens)))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    pre = _field(reader, "tokenizer.ggml.pre", source, default="default")
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{N}"), "isolated"), byte_level])
                         if pre in DIGIT_SPLITTING else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t, kind in zip(tokens, types) if kind == CONTROL])
    return tok


def load_gguf(path: str | os.PathLike) -> tuple[Qwen2ForCausalLM, object, ChatTemplate | None]:
    """(model in float32, eval; tokenizers.Tokenizer; ChatTemplate or None) from one .gguf file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    reader = _reader(path)
    arch, config = config_from_gguf(reader, path)
    model = Qwen2ForCausalLM(config)
    load_state_dict_strict(model, state_dict_from_gguf(reader, arch, config, path), source=str(path))
    tokenizer = tokenizer_from_gguf(reader, path)
    template = reader.fields.get("tokenizer.chat_template")
    tokens = _field(reader, "tokenizer.ggml.tokens", path)
    specials = {}
    for key, name in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
        if name in reader.fields:
            specials[key] = tokens[int(reader.fields[name].contents())]
    return model.eval(), tokenizer, None if template is None else ChatTemplate(template.contents(), specials)
