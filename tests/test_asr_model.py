"""Whisper port (export/toolchain/models/whisper.py): KV-cache decoding, batching, spec shapes, checkpoint names, sizes."""
from __future__ import annotations

import pytest
import torch

from export.contract import spec
from export.contract.presets import WhisperDims, get_preset
from export.toolchain.models import whisper

TINY = get_preset("tiny")
ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> whisper.Whisper:
    return whisper.build(TINY.asr, seed=0)


@pytest.fixture(scope="module")
def audio(model):
    mel = torch.randn(2, TINY.asr.n_mels, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return mel, model.encoder(mel)


def _tokens(batch: int, n: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, TINY.asr.n_vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_incremental_decoding_matches_full_forward(model, audio):
    xa = audio[1][:1]
    tokens = _tokens(1, 10)
    dec = model.decoder
    full, full_kv = dec(tokens, xa, dec.empty_cache(1), all_logits=True)  # [1, 10, V]
    last, _ = dec(tokens, xa, dec.empty_cache(1))
    torch.testing.assert_close(last, full[:, -1], atol=ATOL, rtol=0)
    n_prefill = 4
    logits, kv = dec(tokens[:, :n_prefill], xa, dec.empty_cache(1))
    torch.testing.assert_close(logits, full[:, n_prefill - 1], atol=ATOL, rtol=0)
    for i in range(n_prefill, tokens.shape[1]):
        logits, kv = dec(tokens[:, i:i + 1], xa, kv)
        assert kv.shape[4] == i + 1
        torch.testing.assert_close(logits, full[:, i], atol=ATOL, rtol=0)
    torch.testing.assert_close(kv, full_kv, atol=ATOL, rtol=0)


@torch.no_grad()
def test_batch_of_two_equals_single_runs(model, audio):
    mel, xa = audio
    for b in range(2):
        torch.testing.assert_close(model.encoder(mel[b:b + 1]), xa[b:b + 1], atol=ATOL, rtol=0)
    graph = whisper.DecoderGraph(model)
    tokens, _, past = graph.example_inputs(batch=2, seed=3, tokens=3, past=5)
    logits, present = graph(tokens, xa, past)
    for b in range(2):
        lb, pb = graph(tokens[b:b + 1], xa[b:b + 1], past[b:b + 1])
        torch.testing.assert_close(lb, logits[b:b + 1], atol=ATOL, rtol=0)
        torch.testing.assert_close(pb, present[b:b + 1], atol=ATOL, rtol=0)


def _expected(s: spec.ModelSpec, batch: int, **sizes: int) -> dict[str, tuple[int, ...]]:
    return {t.name: (batch, *(sizes.get(d, d) for d in s.shape(t, TINY))) for t in s.inputs + s.outputs}


@torch.no_grad()
def test_shapes_match_spec(model):
    enc = whisper.EncoderGraph(model)
    (mel,) = enc.example_inputs(batch=2)
    feats = enc(mel)
    exp = _expected(spec.ASR_ENCODER, 2)
    assert tuple(mel.shape) == exp["mel"] and tuple(feats.shape) == exp["audio_features"]

    dec = whisper.DecoderGraph(model)
    for t, p in [(1, 0), (3, 7)]:
        inputs = dec.example_inputs(batch=2, tokens=t, past=p)
        exp = _expected(spec.ASR_DECODER, 2, tokens=t, past=p, total=p + t)
        for tensor, x in zip(spec.ASR_DECODER.inputs, inputs):
            assert tuple(x.shape) == exp[tensor.name], tensor.name
        assert int(inputs[0].max()) < TINY.asr.n_vocab
        for tensor, y in zip(spec.ASR_DECODER.outputs, dec(*inputs)):
            assert tuple(y.shape) == exp[tensor.name], tensor.name
            assert y.dtype == torch.float32


@torch.no_grad()
def test_greedy_decode_matches_uncached_argmax(model, audio):
    mel = audio[0]
    prompt, eot, n = [3, 4, 5, 6], 0, 6
    got = whisper.greedy_decode(model, mel, prompt, eot=eot, max_tokens=n)
    for b in range(mel.shape[0]):
        seq = list(prompt)
        xa = model.encoder(mel[b:b + 1])
        ref = []
        for _ in range(n):
            nxt = int(model.decoder(torch.tensor([seq]), xa, model.decoder.empty_cache(1))[0].argmax())
            if nxt == eot:
                break
            ref.append(nxt)
            seq.append(nxt)
        assert got[b] == ref


# openai/whisper model_state_dict keys of a 1-encoder-layer, 1-decoder-layer model
_BLOCK = ["attn.query.weight", "attn.query.bias", "attn.key.weight", "attn.value.weight", "attn.value.bias",
          "attn.out.weight", "attn.out.bias", "attn_ln.weight", "attn_ln.bias",
          "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp_ln.weight", "mlp_ln.bias"]
_CROSS = ["cross_attn.query.weight", "cross_attn.query.bias", "cross_attn.key.weight", "cross_attn.value.weight",
          "cross_attn.value.bias", "cross_attn.out.weight", "cross_attn.out.bias",
          "cross_attn_ln.weight", "cross_attn_ln.bias"]
OPENAI_KEYS = (
    ["encoder.positional_embedding", "encoder.conv1.weight", "encoder.conv1.bias",
     "encoder.conv2.weight", "encoder.conv2.bias"]
    + [f"encoder.blocks.0.{k}" for k in _BLOCK]
    + ["encoder.ln_post.weight", "encoder.ln_post.bias",
       "decoder.positional_embedding", "decoder.token_embedding.weight"]
    + [f"decoder.blocks.0.{k}" for k in _BLOCK + _CROSS]
    + ["decoder.ln.weight", "decoder.ln.bias"]
)


def test_state_dict_keys_are_openai_names():
    dims = WhisperDims(n_audio_state=64, n_audio_head=2, n_audio_layer=1, n_vocab=100,
                       n_text_state=64, n_text_head=2, n_text_layer=1)
    with torch.device("meta"):
        sd = whisper.Whisper(dims).state_dict()
    assert set(sd) == set(OPENAI_KEYS)
    assert sd["encoder.conv1.weight"].shape == (64, dims.n_mels, 3)
    assert sd["encoder.conv2.weight"].shape == (64, 64, 3)
    assert sd["encoder.positional_embedding"].shape == (dims.n_audio_ctx, 64)
    assert sd["decoder.positional_embedding"].shape == (dims.n_text_ctx, 64)
    assert sd["decoder.blocks.0.mlp.0.weight"].shape == (256, 64)


def test_base_parameter_count():
    with torch.device("meta"):
        m = whisper.Whisper(get_preset("base").asr)
    n_params = sum(p.numel() for p in m.parameters())
    n_state = sum(t.numel() for t in m.state_dict().values())  # + the sinusoid buffer, as the checkpoint stores
    print(f"whisper base: {n_params / 1e6:.2f}M parameters, {n_state / 1e6:.2f}M in the state dict")
    assert abs(n_state - 72.6e6) <= 0.03 * 72.6e6
    assert abs(n_params - 72.6e6) <= 0.03 * 72.6e6
