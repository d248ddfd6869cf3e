"""Write a small GGUF from one of our Qwen2ForCausalLM models the way llama.cpp's convert_hf_to_gguf.py lays it out
(test fixtures for the GGUF converter): llama.cpp tensor names, Q/K rows permuted for `llama` (LlamaModel.permute,
written out here again), `output.weight` only when untied, a byte-level BPE vocabulary of the 256 byte symbols plus
ChatML control tokens.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def byte_symbols() -> list[str]:
    """GPT-2's bytes_to_unicode, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return [table[b] for b in range(256)]


def vocabulary() -> list[str]:
    """len == 259 + 1 merge result: specials, the 256 byte symbols, 'Ġt' (one merge)."""
    return [*SPECIALS, *byte_symbols(), "\u0120t"]


def llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, arch: str = "llama", pre: str = "smollm", quantized: tuple[str, ...] = (),
               extra: dict | None = None, extra_tensors: dict | None = None) -> None:
    """model: a Qwen2ForCausalLM whose vocab_size == len(vocabulary()). quantized: llama.cpp tensor names to store
    as Q8_0. extra: more metadata (key -> str / int / float). extra_tensors: name -> array added as they are."""
    c = model.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not c.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = llama_permute(q, c.num_attention_heads), llama_permute(k, c.num_key_value_heads)
        tensors.update({b + "attn_q.weight": q, b + "attn_k.weight": k, b + "attn_v.weight": sd[p + "self_attn.v_proj.weight"],
                        b + "attn_output.weight": sd[p + "self_attn.o_proj.weight"],
                        b + "ffn_gate.weight": sd[p + "mlp.gate_proj.weight"], b + "ffn_up.weight": sd[p + "mlp.up_proj.weight"],
                        b + "ffn_down.weight": sd[p + "mlp.down_proj.weight"],
                        b + "attn_norm.weight": sd[p + "input_layernorm.weight"],
                        b + "ffn_norm.weight": sd[p + "post_attention_layernorm.weight"]})
        if c.attention_bias:
            for x in ("q", "k", "v"):
                tensors[b + f"attn_{x}.bias"] = sd[p + f"self_attn.{x}_proj.bias"]
    tensors.update(extra_tensors or {})
    w = GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.head_dim)
    tokens = vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(["\u0120 t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    for key, value in (extra or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_float32(key, value)
    for name, a in tensors.items():
        if name in quantized:
            w.add_tensor(name, quantize(a, GGMLQuantizationType.Q8_0),  # shape from the bytes
                         raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
