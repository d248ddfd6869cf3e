"""GGUF (llama.cpp) Llama-family language models -> `export.toolchain.models.qwen2.Qwen2ForCausalLM`, with the
tokenizer and chat template the file carries.

    model, tokenizer, template = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

Read with the `gguf` library (PyPI, llama.cpp's own reader; it imports numpy and PyYAML, and requests / tqdm
only for downloads and writing):
* config from the metadata: `{arch}.block_count`, `embedding_length`, `feed_forward_length`,
  `attention.head_count(_kv)`, `rope.freq_base`, `attention.layer_norm_rms_epsilon`, `context_length`; tied
  embeddings when the file has no `output.weight`; architectures `llama` (no QKV bias) and `qwen2` (QKV bias);
  scaled or partial RoPE and head sizes other than hidden / heads are refused;
* every tensor dequantized to float32 (`gguf.quants.dequantize`; Q4_1, Q8_0, F16, ... as the file holds them):
  the model computes with the quantized file's values, not the original checkpoint's;
* names mapped back to transformers' (token_embd -> model.embed_tokens, blk.N.attn_q -> ...q_proj, ...);
* llama.cpp's converter permutes the rows of Q and K (convert_hf_to_gguf.py LlamaModel.permute, for its rotary
  layout); undone here for `llama` (qwen2 files are not permuted);
* the tokenizer: `tokenizer.ggml.model` gpt2 = byte-level BPE from `tokens` and `merges`, with the pre-tokenizer
  of the model's own tokenizer.json, chosen by `tokenizer.ggml.pre` (PRE_TOKENIZERS; the regexes are the ones
  llama.cpp's llama-vocab.cpp uses for the same names; an unknown name is an error, not a guess); control tokens
  (`token_type` 3) become special added tokens, user-defined ones (4) plain added tokens; a BOS post-processor when
  `tokenizer.ggml.add_bos_token` says so. `tokenizer.chat_template` becomes a ChatTemplate with the bos / eos
  tokens it may print.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.contract.chat import ChatTemplate
from export.contract.presets import Qwen2Config
from export.toolchain.checkpoints.common import CheckpointError, load_state_dict_strict
from export.toolchain.models.qwen2 import Qwen2ForCausalLM

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types of special tokens and of plain added tokens

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


# ----------------------------------------------------------------------------- pre-tokenizers

@dataclass(frozen=True)
class PreTokenizer:
    """How one family's tokenizer.json splits text before BPE (what `tokenizer.ggml.pre` names)."""

    split: str | None  # a regex whose matches are isolated before the byte-level step; None: GPT-2's own regex
    digits: bool = False  # every digit its own piece first (pre_tokenizers.Digits(individual_digits=True))
    nfc: bool = False  # NFC normalizer (Qwen2's tokenizer.json has one)
    ignore_merges: bool = False  # a word that is in the vocabulary is one token, merges or not (Llama 3)


_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "gpt-2": PreTokenizer(None),  # GPT-2 itself and its byte-level BPE descendants (phi-2, ...)
    "phi-2": PreTokenizer(None),
    "smollm": PreTokenizer(None, digits=True),  # SmolLM / SmolLM2 (the StarCoder scheme)
    "starcoder": PreTokenizer(None, digits=True),
    "refact": PreTokenizer(None, digits=True),
    "qwen2": PreTokenizer(_QWEN2, nfc=True),
    "deepseek-r1-qwen": PreTokenizer(_QWEN2, nfc=True),
    "llama-bpe": PreTokenizer(_LLAMA3, ignore_merges=True),  # Llama 3.x
    "llama3": PreTokenizer(_LLAMA3, ignore_merges=True),
    "llama-v3": PreTokenizer(_LLAMA3, ignore_merges=True),
}


# ----------------------------------------------------------------------------- reading

def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise CheckpointError("reading GGUF needs the `gguf` package (pip install --no-deps gguf==0.19.0)") from None
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # not GGUF, truncated, an unknown version: the reader raises several kinds
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


_REQUIRED = object()


def _field(reader, key: str, source: Path, default=_REQUIRED):
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{source}: no {key!r} in the GGUF metadata")
        return default
    return field.contents()


def _f32(x) -> float:
    """A float32 metadata value as the decimal it was written from (9.999999747e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def config_from_gguf(reader, source: Path) -> tuple[str, Qwen2Config]:
    arch = _field(reader, "general.architecture", source)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"{source}: architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    names = {t.name for t in reader.tensors}
    heads = int(_field(reader, f"{arch}.attention.head_count", source))
    hidden = int(_field(reader, f"{arch}.embedding_length", source))
    head_dim = hidden // heads
    problems = []
    if hidden % heads:
        problems.append(f"embedding_length {hidden} is not a multiple of head_count {heads}")
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        value = _field(reader, f"{arch}.{key}", source, default=head_dim)
        if int(value) != head_dim:
            problems.append(f"{key} {value} != embedding_length / head_count = {head_dim} (partial RoPE or a "
                            f"separate head size, which export/toolchain/models/qwen2.py does not compute)")
    scaling = _field(reader, f"{arch}.rope.scaling.type", source, default="none")
    if scaling != "none" or "rope_freqs.weight" in names:
        problems.append(f"RoPE scaling ({scaling if scaling != 'none' else 'rope_freqs'}): ours is plain RoPE")
    if int(_field(reader, f"{arch}.expert_count", source, default=0)):
        problems.append("a mixture of experts")
    if problems:
        raise CheckpointError(f"{source}: unsupported {arch} variant: " + "; ".join(problems))
    return arch, Qwen2Config(
        vocab_size=len(_field(reader, "tokenizer.ggml.tokens", source)), hidden_size=hidden,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length", source)),
        num_hidden_layers=int(_field(reader, f"{arch}.block_count", source)), num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, f"{arch}.attention.head_count_kv", source, default=heads)),
        rope_theta=_f32(_field(reader, f"{arch}.rope.freq_base", source, default=10000.0)),
        rms_norm_eps=_f32(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", source, default=1e-6)),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", source, default=2048)),
        tie_word_embeddings="output.weight" not in names, attention_bias="blk.0.attn_q.bias" in names)


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute of a Q or K projection's rows: per head, the rotary pairs (i, i + Dh/2) of
    transformers' rotate_half layout become adjacent rows (i.e. GPT-J's interleaved layout)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `permute` (heads: that projection's heads: attention heads for Q, KV heads for K)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def state_dict_from_gguf(reader, arch: str, config: Qwen2Config, source: Path) -> dict[str, torch.Tensor]:
    """transformers-named float32 tensors; a tied head shares the embedding's tensor."""
    from gguf.quants import dequantize

    by_ours = {k: v for k, v in _NAMES.items() if "{i}" not in k}
    for i in range(config.num_hidden_layers):
        by_ours.update({k.format(i=i): v.format(i=i) for k, v in _NAMES.items() if "{i}" in k})
    out = {}
    for t in reader.tensors:
        name = by_ours.get(t.name)
        if name is None:
            raise CheckpointError(f"{source}: tensor {t.name!r} has no place in a {arch} model")
        shape = [int(d) for d in reversed(t.shape.tolist())]  # GGUF lists dims fastest first
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except NotImplementedError as e:
            raise CheckpointError(f"{source}: tensor {t.name} is {t.tensor_type.name}, which gguf.quants cannot "
                                  f"dequantize ({e})") from e
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = unpermute(w, config.num_attention_heads if "q_proj" in name else config.num_key_value_heads)
        out[name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))  # a writable copy
    if config.tie_word_embeddings and "model.embed_tokens.weight" in out:  # one matrix under both names
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def tokenizer_from_gguf(reader, source: Path):
    """The GGUF's byte-level BPE as a `tokenizers.Tokenizer` (what tokenizer.json of the same model holds)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    kind = _field(reader, "tokenizer.ggml.model", source)
    if kind != "gpt2":
        raise CheckpointError(f"{source}: tokenizer.ggml.model {kind!r}; only byte-level BPE (gpt2) is supported")
    pre_name = _field(reader, "tokenizer.ggml.pre", source, default="default")
    pre = PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise CheckpointError(f"{source}: tokenizer.ggml.pre {pre_name!r}: no known pre-tokenizer of that name "
                              f"(known: {', '.join(PRE_TOKENIZERS)}); add its regex to PRE_TOKENIZERS (from "
                              f"llama.cpp's llama-vocab.cpp and the model's tokenizer.json) rather than guess")
    tokens = list(_field(reader, "tokenizer.ggml.tokens", source))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", source)]
    types = list(_field(reader, "tokenizer.ggml.token_type", source, default=[1] * len(tokens)))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                               ignore_merges=pre.ignore_merges))
    if pre.nfc:
        tok.normalizer = normalizers.NFC()
    steps = [pre_tokenizers.Digits(individual_digits=True)] if pre.digits else []
    if pre.split is not None:
        steps += [pre_tokenizers.Split(Regex(pre.split), behavior="isolated", invert=False),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]
    else:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True))
    tok.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED])
    bos = _field(reader, "tokenizer.ggml.bos_token_id", source, default=None)
    if bos is not None and bool(_field(reader, "tokenizer.ggml.add_bos_token", source, default=False)):
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[int(bos)]} $A", pair=f"{tokens[int(bos)]} $A {tokens[int(bos)]} $B",
            special_tokens=[(tokens[int(bos)], int(bos))])
    return tok


def chat_template_from_gguf(reader, source: Path) -> ChatTemplate | None:
    """`tokenizer.chat_template` with the bos / eos tokens a template may print; None when the file has none."""
    template = _field(reader, "tokenizer.chat_template", source, default=None)
    if template is None:
        return None
    tokens = _field(reader, "tokenizer.ggml.tokens", source)
    specials = {}
    for key, name in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
        token_id = _field(reader, name, source, default=None)
        if token_id is not None:
            specials[key] = tokens[int(token_id)]
    return ChatTemplate(template, specials)


def load_gguf(path: str | os.PathLike) -> tuple[Qwen2ForCausalLM, object, ChatTemplate | None]:
    """(model in float32, eval; tokenizers.Tokenizer; ChatTemplate or None) from one .gguf file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    reader = _reader(path)
    arch, config = config_from_gguf(reader, path)
    tokenizer = tokenizer_from_gguf(reader, path)  # before the weights: an unknown tokenizer fails fast
    model = Qwen2ForCausalLM(config)
    load_state_dict_strict(model, state_dict_from_gguf(reader, arch, config, path), source=str(path))
    return model.eval(), tokenizer, chat_template_from_gguf(reader, path)
