"""Qwen2 / LLaMA checkpoint loading (export/toolchain/checkpoints/qwen2.py): HF safetensors (single, sharded),
tied and untied heads, config mapping and refusals, strict-loading errors, tokenizer and chat
template, and logit parity (full sequence and KV-cache decoding) with transformers.

Checkpoints are written into tmp_path in the official layout (key names and shapes spelled out
below, random values, tiny dims); nothing is downloaded.
"""
from __future__ import annotations

import json

import pytest
import torch

from export.contract import vocab
from export.contract.chat import ChatTemplate, ChatTemplateError
from export.contract.chat import render_chat as chat_prompt
from export.contract.presets import Qwen2Config
from export.toolchain.checkpoints import CheckpointError, config_from_hf, load_llm, save_safetensors
from export.toolchain.checkpoints.qwen2 import load_chat_template

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 96, 2, 4, 2, 128
HEAD_DIM = HIDDEN // HEADS
ATOL = 1e-4

# Qwen2-Instruct's ChatML template (default system prompt when none is given)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# a LLaMA-3-style template: prints bos_token itself, trims content, strips with filters
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n\\n' + message['content'] | trim + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n\\n' }}{% endif %}")


def hf_config(model_type: str = "qwen2", **over) -> dict:
    """config.json as released (Qwen2.5-0.5B-Instruct / Llama-3.2-1B style keys), shrunk."""
    cfg = {"architectures": ["Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"],
           "model_type": model_type, "hidden_act": "silu", "hidden_size": HIDDEN, "intermediate_size": INTER,
           "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
           "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "vocab_size": VOCAB,
           "max_position_embeddings": 4096, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
    if model_type == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=4096, max_window_layers=21)
    else:
        cfg.update(attention_bias=False, mlp_bias=False, head_dim=HEAD_DIM, rope_theta=500000.0, rms_norm_eps=1e-5)
    cfg.update(over)
    return cfg


def hf_tensors(bias: bool = True, lm_head: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Qwen2ForCausalLM / LlamaForCausalLM state dict, names and shapes written out by hand."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def add(name: str, *shape: int) -> None:
        sd[name] = torch.randn(shape, generator=gen) * 0.1

    add("model.embed_tokens.weight", VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        add(p + "self_attn.q_proj.weight", HEADS * HEAD_DIM, HIDDEN)
        add(p + "self_attn.k_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        add(p + "self_attn.v_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        if bias:  # Qwen2: q/k/v carry a bias; LLaMA: none
            add(p + "self_attn.q_proj.bias", HEADS * HEAD_DIM)
            add(p + "self_attn.k_proj.bias", KV_HEADS * HEAD_DIM)
            add(p + "self_attn.v_proj.bias", KV_HEADS * HEAD_DIM)
        add(p + "self_attn.o_proj.weight", HIDDEN, HEADS * HEAD_DIM)
        add(p + "mlp.gate_proj.weight", INTER, HIDDEN)
        add(p + "mlp.up_proj.weight", INTER, HIDDEN)
        add(p + "mlp.down_proj.weight", HIDDEN, INTER)
        add(p + "input_layernorm.weight", HIDDEN)
        add(p + "post_attention_layernorm.weight", HIDDEN)
    add("model.norm.weight", HIDDEN)
    if lm_head:
        add("lm_head.weight", VOCAB, HIDDEN)
    return sd


def write_hf(folder, tensors, config, shards: int = 1, tokenizer: bool = True, tokenizer_config: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_safetensors(tensors, folder / "model.safetensors", {"format": "pt"})
    else:
        keys, weight_map = sorted(tensors), {}
        for s in range(shards):
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in keys[s::shards]}
            save_safetensors(part, folder / name, {"format": "pt"})
            weight_map.update(dict.fromkeys(part, name))
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}))
    if tokenizer:
        vocab.save(folder / "tokenizer.json")
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def assert_weights(model, sd):
    got = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


# ----------------------------------------------------------------------------- layouts and configs

def test_qwen2_tied_single_file(tmp_path):
    sd = hf_tensors(bias=True)
    model, tok, template = load_llm(write_hf(tmp_path / "q", sd, hf_config()))
    assert model.config == Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                                       num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                       num_key_value_heads=KV_HEADS, rope_theta=1e6, rms_norm_eps=1e-6,
                                       max_position_embeddings=4096, tie_word_embeddings=True, attention_bias=True)
    assert not model.training and template is None
    assert_weights(model, sd)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, not copied
    assert tok.token_to_id(vocab.IM_START) == 1


def test_qwen2_untied_head(tmp_path):
    sd = hf_tensors(bias=True, lm_head=True)
    model, _, _ = load_llm(write_hf(tmp_path / "q", sd, hf_config(tie_word_embeddings=False)))
    assert_weights(model, sd)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    # untied config without lm_head in the file: a missing key
    del sd["lm_head.weight"]
    with pytest.raises(CheckpointError, match=r"missing[^\n]*\n\s+lm_head.weight"):
        load_llm(write_hf(tmp_path / "q2", sd, hf_config(tie_word_embeddings=False)))


def test_tied_config_with_head_in_file(tmp_path):
    sd = hf_tensors(bias=True)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    model, _, _ = load_llm(write_hf(tmp_path / "same", sd, hf_config()))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    sd["lm_head.weight"] = torch.randn(VOCAB, HIDDEN)
    with pytest.warns(UserWarning, match="differs"):
        model, _, _ = load_llm(write_hf(tmp_path / "diff", sd, hf_config()))
    assert torch.equal(model.lm_head.weight, sd["model.embed_tokens.weight"])


def test_llama_sharded_no_bias(tmp_path):
    sd = hf_tensors(bias=False, lm_head=True)
    folder = write_hf(tmp_path / "llama", sd, hf_config("llama", tie_word_embeddings=False), shards=3)
    model, _, _ = load_llm(folder)
    c = model.config
    assert (c.attention_bias, c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings) == (False, 5e5, 1e-5, False)
    assert model.model.layers[0].self_attn.q_proj.bias is None
    assert_weights(model, sd)


def test_bf16_checkpoint_loads_as_fp32_or_requested_dtype(tmp_path):
    sd = {k: v.bfloat16() for k, v in hf_tensors().items()}
    folder = write_hf(tmp_path / "bf16", sd, hf_config())
    model, _, _ = load_llm(folder)
    assert model.lm_head.weight.dtype == torch.float32
    assert_weights(model, {k: v.float() for k, v in sd.items()})
    model, _, _ = load_llm(folder, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16


def test_rotary_inv_freq_of_old_conversions_is_ignored(tmp_path):
    sd = hf_tensors(bias=False)
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(HEAD_DIM // 2)
    load_llm(write_hf(tmp_path / "old", sd, hf_config("llama")))


@pytest.mark.parametrize("rope", [
    {"rope_scaling": None},
    {"rope_scaling": {"rope_type": "default"}},
    {"rope_theta": None, "rope_parameters": {"rope_type": "default", "rope_theta": 250000.0}},  # transformers 5
])
def test_plain_rope_forms(rope):
    cfg = config_from_hf(hf_config("llama", **rope))
    assert cfg.rope_theta == (250000.0 if "rope_parameters" in rope else 5e5)


def test_defaults_when_keys_absent():
    cfg = hf_config("llama")
    for k in ("rope_theta", "num_key_value_heads", "tie_word_embeddings", "attention_bias", "head_dim"):
        del cfg[k]
    c = config_from_hf(cfg)
    assert (c.rope_theta, c.num_key_value_heads, c.tie_word_embeddings, c.attention_bias) == (1e4, HEADS, False, False)


@pytest.mark.parametrize("model_type, over, words", [
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 32.0}}, "'llama3' RoPE scaling"),
    ("llama", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "'linear' RoPE scaling"),
    ("qwen2", {"rope_scaling": {"type": "yarn", "factor": 4.0}}, "'yarn' RoPE scaling"),
    ("llama", {"attention_bias": True}, "o_proj"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    ("llama", {"head_dim": 32}, "head_dim 32"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act"),
    ("qwen2", {"use_sliding_window": True}, "sliding-window"),
    ("mistral", {}, "model_type 'mistral'"),
])
def test_unsupported_configs_are_refused(tmp_path, model_type, over, words):
    with pytest.raises(CheckpointError, match=words):
        load_llm(write_hf(tmp_path / "c", hf_tensors(bias=False), hf_config(model_type, **over)))


# ----------------------------------------------------------------------------- errors

def test_missing_key_is_named(tmp_path):
    sd = hf_tensors()
    del sd["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(CheckpointError) as err:
        load_llm(write_hf(tmp_path / "m", sd, hf_config()))
    msg = str(err.value)
    assert "1 missing, 0 unexpected, 0 shape mismatches" in msg and "model.layers.1.mlp.down_proj.weight" in msg


def test_unexpected_key_is_named(tmp_path):
    sd = dict(hf_tensors(), **{"model.layers.2.mlp.up_proj.weight": torch.zeros(INTER, HIDDEN)})
    with pytest.raises(CheckpointError) as err:
        load_llm(write_hf(tmp_path / "u", sd, hf_config()))
    msg = str(err.value)
    assert "0 missing, 1 unexpected" in msg and "model.layers.2.mlp.up_proj.weight" in msg


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    # e.g. a Qwen2.5-0.5B checkpoint against a config that says hidden_size 64
    sd = hf_tensors()
    sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(INTER, 896)
    with pytest.raises(CheckpointError) as err:
        load_llm(write_hf(tmp_path / "s", sd, hf_config()))
    msg = str(err.value)
    assert "model.layers.0.mlp.up_proj.weight: checkpoint has [96, 896], model expects [96, 64]" in msg
    assert "0 missing, 0 unexpected, 1 shape mismatch" in msg


def test_llama_weights_with_qwen2_config_lists_every_bias(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_llm(write_hf(tmp_path / "x", hf_tensors(bias=False), hf_config("qwen2")))
    msg = str(err.value)
    assert f"{3 * LAYERS} missing" in msg
    for i in range(LAYERS):
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert f"model.layers.{i}.self_attn.{proj}.bias" in msg


def test_missing_shard_and_missing_weights(tmp_path):
    folder = write_hf(tmp_path / "sh", hf_tensors(), hf_config(), shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_llm(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(hf_config()))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_llm(empty)


def test_tokenizer_required(tmp_path):
    folder = write_hf(tmp_path / "t", hf_tensors(), hf_config(), tokenizer=False)
    (folder / "tokenizer.model").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="no tokenizer.json.*sentencepiece"):
        load_llm(folder)
    _, tok, _ = load_llm(folder, require_tokenizer=False)
    assert tok is None


def test_hub_id_without_download(tmp_path):
    with pytest.raises(CheckpointError, match="local path"):
        load_llm("Qwen/Qwen2.5-0.5B-Instruct", allow_download=False)


# ----------------------------------------------------------------------------- chat templates

def test_chat_template_from_tokenizer_config(tmp_path):
    folder = write_hf(tmp_path / "chat", hf_tensors(), hf_config(),
                      tokenizer_config={"chat_template": QWEN2_TEMPLATE, "eos_token": "<|im_end|>"})
    _, tok, template = load_llm(folder)
    assert isinstance(template, ChatTemplate) and template == QWEN2_TEMPLATE
    prompt = chat_prompt(template, [{"role": "user", "content": "hello there"}])
    assert prompt == vocab.chatml_prompt("hello there")  # the tiny preset's hand-written ChatML
    ids = tok.encode(prompt, add_special_tokens=False).ids
    assert ids[0] == tok.token_to_id(vocab.IM_START) and ids.count(tok.token_to_id(vocab.IM_END)) == 2
    assert ids[-2:] == [tok.token_to_id(vocab.IM_START), tok.token_to_id("assistant")]
    assert chat_prompt(template, [{"role": "user", "content": "hi"}], add_generation_prompt=False).endswith(
        "<|im_end|>\n")


def test_chat_template_sources(tmp_path):
    folder = tmp_path / "tpl"
    folder.mkdir()
    assert load_chat_template(folder) is None
    named = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": LLAMA_TEMPLATE}]
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": named, "bos_token": {"content": "<|endoftext|>", "__type": "AddedToken"}}))
    template = load_chat_template(folder)
    assert template == LLAMA_TEMPLATE and template.tokens == {"bos_token": "<|endoftext|>"}
    assert chat_prompt(template, [{"role": "user", "content": " hi "}]) == \
        "<|endoftext|><|im_start|>user\n\nhi<|im_end|><|im_start|>assistant\n\n"
    (folder / "chat_template.jinja").write_text(QWEN2_TEMPLATE)  # the newer file wins, as in transformers
    assert load_chat_template(folder) == QWEN2_TEMPLATE


def test_chat_template_errors():
    with pytest.raises(ChatTemplateError, match="no chat template"):
        chat_prompt(None, [{"role": "user", "content": "hi"}])
    with pytest.raises(ChatTemplateError, match="Jinja2"):
        chat_prompt("{% for m in messages %}", [])
    import jinja2
    with pytest.raises(jinja2.TemplateError, match="only user"):
        chat_prompt("{{ raise_exception('only user') }}", [])


def test_chat_prompt_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what time is it?"},
                {"role": "assistant", "content": "noon"}, {"role": "user", "content": "thanks"}]
    for i, tpl in enumerate((QWEN2_TEMPLATE, LLAMA_TEMPLATE)):
        folder = tmp_path / f"tok{i}"
        folder.mkdir()
        vocab.save(folder / "tokenizer.json")
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": tpl,
            "bos_token": {"content": "<|endoftext|>", "__type": "AddedToken"}, "eos_token": "<|im_end|>"}))
        ref = transformers.AutoTokenizer.from_pretrained(folder)
        ours = load_chat_template(folder)
        for gen in (True, False):
            for msgs in (messages, messages[1:2]):
                assert chat_prompt(ours, msgs, add_generation_prompt=gen) == \
                    ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


# ----------------------------------------------------------------------------- parity with transformers

def _randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(1.0 + noise if name.endswith("norm.weight") else noise)


CASES = {
    "qwen2-tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2-untied": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False, rope_theta=1e4)),
    "llama-untied": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False, rope_theta=5e5,
                                                             rms_norm_eps=1e-5)),
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True, rope_theta=1e4)),
}


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_parity_with_transformers(tmp_path, case):
    transformers = pytest.importorskip("transformers")
    cfg_cls, model_cls, extra = CASES[case]
    cfg = getattr(transformers, cfg_cls)(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
        attn_implementation="eager", **extra)
    torch.manual_seed(0)
    ref = getattr(transformers, model_cls)(cfg).eval()
    _randomize(ref, seed=1)
    assert ref.config._attn_implementation == "eager"
    ref.save_pretrained(tmp_path, **({"max_shard_size": "60KB"} if "untied" in case else {}))
    assert (tmp_path / "model.safetensors.index.json").is_file() == ("untied" in case)
    model, tok, template = load_llm(tmp_path, require_tokenizer=False)
    assert tok is None and template is None
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == extra["tie_word_embeddings"]

    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(2))
    want = ref(input_ids=ids).logits  # [B, T, V]
    got, _ = model(ids, model.empty_cache(2), all_logits=True)
    full_diff = (got - want).abs().max().item()
    # incremental decoding: prefill 5 tokens, then one at a time through our KV cache
    logits, kv = model(ids[:, :5], model.empty_cache(2))
    inc_diff = (logits - want[:, 4]).abs().max().item()
    for i in range(5, ids.shape[1]):
        logits, kv = model(ids[:, i:i + 1], kv)
        inc_diff = max(inc_diff, (logits - want[:, i]).abs().max().item())
    print(f"\n[llm parity {case}] full-sequence max|diff| {full_diff:.2e}, incremental {inc_diff:.2e} "
          f"(logit scale {want.abs().max().item():.2f})")
    assert full_diff < ATOL and inc_diff < ATOL


# ----------------------------------------------------------------------------- common helpers

def test_builtin_safetensors_reader_and_writer_match_the_library(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    from export.toolchain.checkpoints import common
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).half(), "c": torch.randn(2, 2).bfloat16(),
               "d": torch.arange(7), "e": torch.zeros(0, 3), "f": torch.tensor(True)}
    common._write_safetensors_builtin(tensors, tmp_path / "ours.safetensors", {"format": "pt"})
    st.save_file(tensors, str(tmp_path / "lib.safetensors"))
    for got in (st.load_file(str(tmp_path / "ours.safetensors")),
                common._read_safetensors_builtin(tmp_path / "ours.safetensors"),
                common._read_safetensors_builtin(tmp_path / "lib.safetensors")):
        assert set(got) == set(tensors)
        for k, v in tensors.items():
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_load_state_dict_strict_rename_ignore_duplicates():
    from export.toolchain.checkpoints import load_state_dict_strict
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    sd = {"lin.weight": torch.ones(2, 3), "lin.bias": torch.zeros(2), "junk.step": torch.tensor(1)}
    load_state_dict_strict(net, sd, source="t", rename=lambda k: k.replace("lin.", "0."), ignore=("junk.*",))
    assert torch.equal(net[0].weight, torch.ones(2, 3))
    with pytest.raises(CheckpointError, match="both map to 0.bias"):
        load_state_dict_strict(net, dict(sd, **{"other.bias": torch.zeros(2)}), source="t",
                               rename={"lin.weight": "0.weight", "lin.bias": "0.bias", "other.bias": "0.bias"},
                               ignore=("junk.*",))
