"""Whisper checkpoint loading (export/toolchain/checkpoints/whisper.py): HF safetensors (single, sharded),
OpenAI .pt, the tokenizer, strict-loading errors, and logit parity with transformers.

Checkpoints are written into tmp_path in each official layout (key names and shapes spelled out
below, random values, tiny dims); nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from export.contract import vocab
from export.contract.presets import WhisperDims
from export.toolchain.checkpoints import CheckpointError, load_whisper, resolve, save_safetensors
from export.toolchain.checkpoints.whisper import OPENAI_TOKENIZER_NOTE, state_dict_to_hf
from export.toolchain.models import whisper

D, LAYERS, HEADS, VOCAB, MELS, A_CTX, T_CTX = 64, 2, 2, 100, 80, 20, 32
DIMS = WhisperDims(n_mels=MELS, n_audio_ctx=A_CTX, n_audio_state=D, n_audio_head=HEADS, n_audio_layer=LAYERS,
                   n_vocab=VOCAB, n_text_ctx=T_CTX, n_text_state=D, n_text_head=HEADS, n_text_layer=LAYERS)
ATOL = 1e-4


def hf_config(**over) -> dict:
    """The keys of a Hugging Face WhisperConfig config.json (openai/whisper-tiny's, shrunk)."""
    cfg = {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
           "activation_function": "gelu", "d_model": D, "encoder_layers": LAYERS, "encoder_attention_heads": HEADS,
           "decoder_layers": LAYERS, "decoder_attention_heads": HEADS, "encoder_ffn_dim": 4 * D,
           "decoder_ffn_dim": 4 * D, "num_mel_bins": MELS, "vocab_size": VOCAB, "max_source_positions": A_CTX,
           "max_target_positions": T_CTX, "scale_embedding": False, "tie_word_embeddings": True,
           "torch_dtype": "float32"}
    cfg.update(over)
    return cfg


def hf_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """WhisperForConditionalGeneration's state dict, every name and shape written out by hand."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def add(name: str, *shape: int) -> None:
        sd[name] = torch.randn(shape, generator=gen) * 0.1

    add("model.encoder.conv1.weight", D, MELS, 3)
    add("model.encoder.conv1.bias", D)
    add("model.encoder.conv2.weight", D, D, 3)
    add("model.encoder.conv2.bias", D)
    add("model.encoder.embed_positions.weight", A_CTX, D)
    add("model.decoder.embed_tokens.weight", VOCAB, D)
    add("model.decoder.embed_positions.weight", T_CTX, D)
    for side in ("encoder", "decoder"):
        for i in range(LAYERS):
            p = f"model.{side}.layers.{i}."
            for attn in ("self_attn", "encoder_attn") if side == "decoder" else ("self_attn",):
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    add(f"{p}{attn}.{proj}.weight", D, D)
                    if proj != "k_proj":  # whisper's key projection has no bias
                        add(f"{p}{attn}.{proj}.bias", D)
                add(f"{p}{attn}_layer_norm.weight", D)
                add(f"{p}{attn}_layer_norm.bias", D)
            add(p + "fc1.weight", 4 * D, D)
            add(p + "fc1.bias", 4 * D)
            add(p + "fc2.weight", D, 4 * D)
            add(p + "fc2.bias", D)
            add(p + "final_layer_norm.weight", D)
            add(p + "final_layer_norm.bias", D)
        add(f"model.{side}.layer_norm.weight", D)
        add(f"model.{side}.layer_norm.bias", D)
    return sd


def write_hf(folder, tensors, config=None, shards: int = 1, tokenizer: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or hf_config()))
    if shards == 1:
        save_safetensors(tensors, folder / "model.safetensors", {"format": "pt"})
    else:
        keys = sorted(tensors)
        weight_map = {}
        for s in range(shards):
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in keys[s::shards]}
            save_safetensors(part, folder / name, {"format": "pt"})
            weight_map.update(dict.fromkeys(part, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    if tokenizer:
        vocab.save(folder / "tokenizer.json")
    return folder


def assert_loaded_from(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Every model tensor equals exactly one checkpoint tensor, and every checkpoint tensor is used once."""
    used = set()
    for name, value in model.state_dict().items():
        hits = [k for k, t in tensors.items() if t.shape == value.shape and torch.equal(t.to(value.dtype), value)]
        assert len(hits) == 1, (name, hits)
        used.add(hits[0])
    assert used == set(tensors)


# ----------------------------------------------------------------------------- layouts

def test_hf_safetensors_single(tmp_path):
    sd = hf_tensors()
    model, tok = load_whisper(write_hf(tmp_path / "hf", sd))
    assert model.dims == DIMS and not model.training
    assert tok is None
    assert_loaded_from(model, sd)
    # spot checks of the name mapping
    assert torch.equal(model.encoder.blocks[1].attn.query.weight, sd["model.encoder.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(model.decoder.blocks[0].cross_attn.key.weight,
                       sd["model.decoder.layers.0.encoder_attn.k_proj.weight"])
    assert torch.equal(model.decoder.blocks[1].mlp[2].bias, sd["model.decoder.layers.1.fc2.bias"])
    assert torch.equal(model.decoder.blocks[1].cross_attn_ln.weight,
                       sd["model.decoder.layers.1.encoder_attn_layer_norm.weight"])
    assert torch.equal(model.encoder.positional_embedding, sd["model.encoder.embed_positions.weight"])
    assert torch.equal(model.decoder.positional_embedding, sd["model.decoder.embed_positions.weight"])
    assert torch.equal(model.encoder.ln_post.bias, sd["model.encoder.layer_norm.bias"])
    assert torch.equal(model.decoder.ln.weight, sd["model.decoder.layer_norm.weight"])
    assert torch.equal(model.decoder.token_embedding.weight, sd["model.decoder.embed_tokens.weight"])


def test_hf_safetensors_sharded_with_index(tmp_path):
    sd = hf_tensors(seed=1)
    folder = write_hf(tmp_path / "sharded", sd, shards=3)
    assert not (folder / "model.safetensors").exists()
    model, _ = load_whisper(folder)
    assert_loaded_from(model, sd)
    single, _ = load_whisper(folder / "model.safetensors.index.json")  # the index file itself also works
    assert_loaded_from(single, sd)


def test_hf_tied_proj_out_is_accepted_and_untied_is_refused(tmp_path):
    sd = hf_tensors()
    tied = dict(sd, **{"proj_out.weight": sd["model.decoder.embed_tokens.weight"].clone()})
    model, _ = load_whisper(write_hf(tmp_path / "tied", tied))
    assert_loaded_from(model, sd)
    untied = dict(sd, **{"proj_out.weight": torch.randn(VOCAB, D)})
    with pytest.raises(CheckpointError, match="proj_out.weight differs"):
        load_whisper(write_hf(tmp_path / "untied", untied))


def test_hf_pytorch_bin_and_fp16(tmp_path):
    sd = {k: v.half() for k, v in hf_tensors().items()}
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config()))
    torch.save(sd, folder / "pytorch_model.bin")
    model, _ = load_whisper(folder)
    assert model.encoder.conv1.weight.dtype == torch.float32
    assert_loaded_from(model, sd)


def test_openai_pt(tmp_path):
    ref = whisper.build(DIMS, seed=3)
    ckpt = {"dims": dataclasses.asdict(DIMS), "model_state_dict": {k: v.half() for k, v in ref.state_dict().items()}}
    torch.save(ckpt, tmp_path / "tiny.pt")
    model, tok = load_whisper(tmp_path / "tiny.pt")
    assert model.dims == DIMS and tok is None
    assert_loaded_from(model, ckpt["model_state_dict"])
    # a folder holding one .pt works too
    model2, _ = load_whisper(tmp_path)
    assert_loaded_from(model2, ckpt["model_state_dict"])


def test_openai_pt_tokenizer_rules(tmp_path):
    ref = whisper.build(DIMS, seed=3)
    torch.save({"dims": dataclasses.asdict(DIMS), "model_state_dict": ref.state_dict()}, tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match="tiktoken") as err:
        load_whisper(tmp_path / "tiny.pt", require_tokenizer=True)
    assert OPENAI_TOKENIZER_NOTE in str(err.value)
    side = tmp_path / "hf-tokenizer"
    side.mkdir()
    vocab.save(side / "tokenizer.json")
    _, tok = load_whisper(tmp_path / "tiny.pt", tokenizer=side / "tokenizer.json", require_tokenizer=True)
    assert tok.token_to_id(vocab.STARTOFTRANSCRIPT) == 3
    vocab.save(tmp_path / "tokenizer.json")  # beside the .pt
    _, tok = load_whisper(tmp_path / "tiny.pt")
    assert tok.decode(tok.encode("hello there").ids) == "hello there"


def test_openai_pt_wrong_structure(tmp_path):
    torch.save({"model": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="dims"):
        load_whisper(tmp_path / "bad.pt")


def test_hf_tokenizer_json(tmp_path):
    _, tok = load_whisper(write_hf(tmp_path / "hf", hf_tensors(), tokenizer=True), require_tokenizer=True)
    assert tok.token_to_id(vocab.NOTIMESTAMPS) == 6


def test_roundtrip_our_weights_through_hf_names(tmp_path):
    ref = whisper.build(DIMS, seed=5)
    model, _ = load_whisper(write_hf(tmp_path / "rt", state_dict_to_hf(ref)))
    mel = torch.randn(1, MELS, 2 * A_CTX)
    tokens = torch.tensor([[3, 4, 5, 6, 20, 30]])
    torch.testing.assert_close(model(mel, tokens), ref(mel, tokens), atol=0, rtol=0)


# ----------------------------------------------------------------------------- errors

def test_missing_key_is_named(tmp_path):
    sd = hf_tensors()
    del sd["model.encoder.layers.1.fc2.bias"]
    with pytest.raises(CheckpointError) as err:
        load_whisper(write_hf(tmp_path / "m", sd))
    msg = str(err.value)
    assert "1 missing, 0 unexpected, 0 shape mismatches" in msg
    assert "encoder.blocks.1.mlp.2.bias (checkpoint key model.encoder.layers.1.fc2.bias)" in msg


def test_unexpected_key_is_named(tmp_path):
    sd = dict(hf_tensors(), **{"model.encoder.layers.2.fc1.weight": torch.zeros(4 * D, D)})
    with pytest.raises(CheckpointError) as err:
        load_whisper(write_hf(tmp_path / "u", sd))
    msg = str(err.value)
    assert "0 missing, 1 unexpected" in msg and "model.encoder.layers.2.fc1.weight" in msg


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    sd = hf_tensors()
    sd["model.decoder.layers.0.fc1.weight"] = torch.zeros(128, D)
    with pytest.raises(CheckpointError) as err:
        load_whisper(write_hf(tmp_path / "s", sd))
    msg = str(err.value)
    assert ("model.decoder.layers.0.fc1.weight (-> decoder.blocks.0.mlp.0.weight): "
            "checkpoint has [128, 64], model expects [256, 64]") in msg
    assert "0 missing" in msg  # a wrong-shaped key is not also reported as missing


def test_all_problems_in_one_error(tmp_path):
    ref = whisper.build(DIMS)
    sd = ref.state_dict()
    del sd["decoder.ln.bias"]
    sd["decoder.extra.weight"] = torch.zeros(1)
    sd["decoder.token_embedding.weight"] = torch.zeros(VOCAB + 1, D)
    torch.save({"dims": dataclasses.asdict(DIMS), "model_state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_whisper(tmp_path / "bad.pt")
    msg = str(err.value)
    assert "1 missing, 1 unexpected, 1 shape mismatch" in msg
    assert "decoder.ln.bias" in msg and "decoder.extra.weight" in msg
    assert "decoder.token_embedding.weight: checkpoint has [101, 64], model expects [100, 64]" in msg


@pytest.mark.parametrize("over, words", [
    ({"encoder_ffn_dim": 3 * D}, "encoder_ffn_dim"),
    ({"activation_function": "relu"}, "activation_function"),
    ({"scale_embedding": True}, "scale_embedding"),
    ({"model_type": "bart"}, "model_type"),
])
def test_unsupported_config(tmp_path, over, words):
    with pytest.raises(CheckpointError, match=words):
        load_whisper(write_hf(tmp_path / "c", hf_tensors(), config=hf_config(**over)))


def test_resolve_without_network(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        resolve(tmp_path / "nope" / "here")
    with pytest.raises(CheckpointError, match="local path"):
        load_whisper("openai/whisper-tiny", allow_download=False)
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # only the (empty) cache is consulted: no network
    with pytest.raises(CheckpointError, match="local path"):
        resolve("openai/whisper-tiny", True, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- parity with transformers

@pytest.fixture(scope="module")
def hf_whisper(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.WhisperConfig(
        vocab_size=VOCAB, d_model=D, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS, encoder_ffn_dim=4 * D, decoder_ffn_dim=4 * D, num_mel_bins=MELS,
        max_source_positions=A_CTX, max_target_positions=T_CTX, pad_token_id=VOCAB - 1, bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 2, decoder_start_token_id=VOCAB - 3, attn_implementation="eager")
    torch.manual_seed(0)
    ref = transformers.WhisperForConditionalGeneration(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial values everywhere (biases, norms, positions)
        for name, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(1.0 + noise if "layer_norm.weight" in name else noise)
    assert ref.config._attn_implementation == "eager"
    folder = tmp_path_factory.mktemp("hf_whisper")
    ref.save_pretrained(folder)
    sharded = tmp_path_factory.mktemp("hf_whisper_sharded")
    ref.save_pretrained(sharded, max_shard_size="100KB")
    return ref, folder, sharded


@torch.no_grad()
def test_parity_with_transformers(hf_whisper):
    ref, folder, sharded = hf_whisper
    assert (sharded / "model.safetensors.index.json").is_file()
    mel = torch.randn(2, MELS, 2 * A_CTX, generator=torch.Generator().manual_seed(2))
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    enc_ref = ref.model.encoder(mel).last_hidden_state
    logits_ref = ref(input_features=mel, decoder_input_ids=tokens).logits  # [B, T, V]
    for path in (folder, sharded):
        model, _ = load_whisper(path)
        enc = model.encoder(mel)
        enc_diff = (enc - enc_ref).abs().max().item()
        logits = model(mel, tokens)
        logit_diff = (logits - logits_ref).abs().max().item()
        # incremental decoding with our KV cache against transformers' full teacher-forced pass
        step_logits, kv = model.decoder(tokens[:, :4], enc, model.decoder.empty_cache(2))  # prefill 4
        inc_diff = (step_logits - logits_ref[:, 3]).abs().max().item()
        for i in range(4, tokens.shape[1]):
            step_logits, kv = model.decoder(tokens[:, i:i + 1], enc, kv)
            inc_diff = max(inc_diff, (step_logits - logits_ref[:, i]).abs().max().item())
        print(f"\n[whisper parity {path.name}] encoder max|diff| {enc_diff:.2e}, decoder logits {logit_diff:.2e}, "
              f"incremental {inc_diff:.2e} (logit scale {logits_ref.abs().max().item():.2f})")
        assert enc_diff < ATOL and logit_diff < ATOL and inc_diff < ATOL


def test_hf_whisper_model_without_prefix(tmp_path):
    """A WhisperModel (not ...ForConditionalGeneration) save: no "model." prefix, no proj_out."""
    sd = hf_tensors()
    bare = {k.removeprefix("model."): v for k, v in sd.items()}
    model, _ = load_whisper(write_hf(tmp_path / "bare", bare, config=hf_config(architectures=["WhisperModel"])))
    assert_loaded_from(model, sd)
