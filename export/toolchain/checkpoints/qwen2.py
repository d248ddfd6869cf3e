"""Released Qwen2 / Qwen2.5 and LLaMA-family checkpoints -> `export.toolchain.models.qwen2.Qwen2ForCausalLM`.

A Hugging Face folder (or hub id such as `Qwen/Qwen2.5-0.5B-Instruct`):

* `config.json`: model_type `qwen2` or `llama`; hidden_size, intermediate_size, num_hidden_layers,
  num_attention_heads, num_key_value_heads, rope_theta (or transformers 5's
  `rope_parameters.rope_theta`), rms_norm_eps, vocab_size, tie_word_embeddings,
  max_position_embeddings; LLaMA's attention_bias (default false). Missing optional keys take
  transformers' defaults. What our module cannot compute the same way (rope_scaling other than
  plain RoPE, sliding-window layers, LLaMA's o_proj/MLP biases, a head_dim other than
  hidden_size / num_attention_heads, an activation other than SiLU) is a CheckpointError.
* weights: `model.safetensors`, sharded `model.safetensors.index.json`, or `pytorch_model.bin`;
  names are transformers' Qwen2ForCausalLM / LlamaForCausalLM names, which are ours. With
  tie_word_embeddings and no `lm_head.weight` in the files (the usual case) the head is tied.
* `tokenizer.json` read with `tokenizers.Tokenizer.from_file`.
* the chat template: `chat_template.jinja` (transformers >= 4.43 writes it) or
  `tokenizer_config.json`'s `chat_template` (a Jinja2 string, or a list of named templates);
  rendered by `export.contract.chat.render_chat` the way transformers' `apply_chat_template` does (sandboxed Jinja2,
  trim_blocks, lstrip_blocks, `raise_exception`, `tojson`, `strftime_now`), with the template's
  special tokens (bos_token, eos_token, ...) from tokenizer_config.json. Encode the prompt with
  `tokenizer.encode(prompt, add_special_tokens=False)`: templates that want a BOS write it themselves.

    model, tok, template = load_llm("Qwen/Qwen2.5-0.5B-Instruct")
    prompt = render_chat(template, [{"role": "user", "content": "Hi!"}])
    ids = tok.encode(prompt, add_special_tokens=False).ids
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from export.contract.chat import ChatTemplate
from export.contract.presets import Qwen2Config
from export.toolchain.checkpoints.common import (
    CheckpointError,
    load_state_dict_strict,
    load_tokenizer,
    read_json,
    read_state_dict,
    resolve,
)
from export.toolchain.models.qwen2 import Qwen2ForCausalLM

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
# transformers' defaults for keys a config.json may leave out
_DEFAULTS = {
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6},
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6},
}
DEFAULT_ROPE_THETA = 10000.0
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _rope_theta(config: dict, source: str) -> float:
    """Plain RoPE's base from rope_theta / rope_parameters; CheckpointError for any scaled variant."""
    theta = config.get("rope_theta")
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict) or not ({"rope_type", "type", "rope_theta"} & set(rope)):
            raise CheckpointError(f"{source}: {key}={json.dumps(rope)} is not a form this loader knows")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise CheckpointError(
                f"{source}: {key} {json.dumps(rope)} asks for {kind!r} RoPE scaling, which "
                f"export/toolchain/models/qwen2.py does not implement (it computes plain RoPE only); "
                f"use a checkpoint without rope scaling or add that variant to the model first")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise CheckpointError(f"{source}: partial_rotary_factor {rope['partial_rotary_factor']} is not supported")
        theta = rope.get("rope_theta", theta)
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{source}: partial_rotary_factor {config['partial_rotary_factor']} is not supported")
    return float(DEFAULT_ROPE_THETA if theta is None else theta)


def config_from_hf(config: dict, source: str = "config.json") -> Qwen2Config:
    """Our Qwen2Config from a transformers Qwen2Config / LlamaConfig dict."""
    kind = config.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {kind!r} is not one of {list(SUPPORTED_MODEL_TYPES)}")
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    absent = [k for k in need if config.get(k) is None]
    if absent:
        raise CheckpointError(f"{source}: a {kind} config.json needs {', '.join(absent)}")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    problems = []
    if hidden % heads:
        problems.append(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    elif config.get("head_dim") not in (None, hidden // heads):
        problems.append(f"head_dim {config['head_dim']} != hidden_size / num_attention_heads = {hidden // heads} "
                        f"(export/toolchain/models/qwen2.py derives the head size from those two)")
    if heads % kv_heads:
        problems.append(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config['hidden_act']!r} (the MLP is SwiGLU with SiLU)")
    if config.get("mlp_bias", False):
        problems.append("mlp_bias=true (our MLP projections have no bias)")
    if kind == "qwen2":
        attention_bias = True  # transformers' Qwen2Attention: q/k/v with bias, o_proj without
    else:
        attention_bias = bool(config.get("attention_bias", False))
        if attention_bias:
            problems.append("attention_bias=true: LLaMA then also puts a bias on o_proj, which our attention "
                            "does not have")
    sliding = config.get("use_sliding_window", False) or "sliding_attention" in (config.get("layer_types") or ())
    if sliding:
        problems.append("sliding-window attention layers (our attention is full causal)")
    if problems:
        raise CheckpointError(f"{source}: unsupported {kind} variant: " + "; ".join(problems))
    defaults = _DEFAULTS[kind]
    return Qwen2Config(
        vocab_size=config["vocab_size"], hidden_size=hidden, intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=heads, num_key_value_heads=kv_heads,
        rope_theta=_rope_theta(config, source),
        rms_norm_eps=float(config.get("rms_norm_eps") or defaults["rms_norm_eps"]),
        max_position_embeddings=config.get("max_position_embeddings") or defaults["max_position_embeddings"],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=attention_bias)


# ----------------------------------------------------------------------------- chat template

def _token_text(value) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_chat_template(folder: str | os.PathLike) -> ChatTemplate | None:
    """The folder's chat template (chat_template.jinja, else tokenizer_config.json / chat_template.json), or None."""
    folder = Path(folder)
    tok_config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    tokens = {k: t for k in SPECIAL_TOKEN_KEYS if (t := _token_text(tok_config.get(k))) is not None}
    template = None
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    else:
        template = tok_config.get("chat_template")
        if template is None and (folder / "chat_template.json").is_file():
            template = read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None:
        return None
    if not isinstance(template, str):
        raise CheckpointError(f"{folder}: chat_template is a {type(template).__name__}, not a Jinja2 string")
    return ChatTemplate(template, tokens)


# ----------------------------------------------------------------------------- loading

def load_llm(path: str | os.PathLike, *, allow_download: bool = True, dtype: torch.dtype = torch.float32,
             require_tokenizer: bool = True):
    """(Qwen2ForCausalLM in eval mode, tokenizers.Tokenizer, ChatTemplate or None) from a HF folder or hub id.

    path: a folder with config.json and the weights, one weights file (or shard index) inside such
    a folder, or a hub id (downloaded when allowed; see `resolve`). require_tokenizer=False returns
    None for the tokenizer when the folder has no tokenizer.json instead of raising.
    """
    p = resolve(path, allow_download)
    folder = p if p.is_dir() else p.parent
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{p}: no config.json" + ("" if p.is_dir() else " beside it"))
    config = config_from_hf(read_json(folder / "config.json"), str(folder / "config.json"))
    sd = read_state_dict(p)
    model = Qwen2ForCausalLM(config)
    if config.tie_word_embeddings:
        emb = sd.get("model.embed_tokens.weight")
        head = sd.pop("lm_head.weight", None)
        if head is not None and emb is not None and (head.shape != emb.shape or not torch.equal(head, emb)):
            warnings.warn(f"{p}: tie_word_embeddings is true but lm_head.weight differs from "
                          f"model.embed_tokens.weight; using the embedding for both, as transformers does")
        if emb is not None:
            sd["lm_head.weight"] = emb
        elif head is not None:
            sd["lm_head.weight"] = head  # reported as the missing embedding below
    load_state_dict_strict(model, sd, source=str(p), ignore=("*.rotary_emb.inv_freq",))
    tokenizer = load_tokenizer(folder)
    if tokenizer is None and require_tokenizer:
        extra = (" (it has a sentencepiece tokenizer.model, which this loader does not read: "
                 "`transformers.AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)` writes tokenizer.json)"
                 if (folder / "tokenizer.model").is_file() else "")
        raise CheckpointError(f"{folder}: no tokenizer.json{extra}")
    return model.to(dtype).eval(), tokenizer, load_chat_template(folder)
