"""The gpu variant's asr_decoder with per-utterance caches on the device (export/runtime/asr_sessions.py), on the CPU:
the same logits as the stateless decoder graph, batched steps of utterances at different positions, and the
orchestrator's choice of protocol (ensemble/decoding.start_decoder)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from ensemble.decoding import KVDecoder, SessionDecoder, start_decoder
from export.contract import media, spec
from export.contract.presets import get_preset
from export.runtime.asr_sessions import session_asr
from export.runtime.batching import BatchRunner
from export.runtime.torch_runtime import TorchStage
from export.toolchain import configs
from export.toolchain.models import whisper

TINY = get_preset("tiny")
ATOL = 1e-4


@pytest.fixture(scope="module")
def graph():
    return whisper.DecoderGraph(whisper.build(TINY.asr, seed=0))


def _features(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, media.ASR_AUDIO_CTX, TINY.asr.n_audio_state, generator=g)


def _ids(n, seed):
    return torch.randint(0, TINY.asr.n_vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def _reference(graph, xa, ids):
    logits, _ = graph(torch.tensor([ids]), xa, graph.model.decoder.empty_cache(1))
    return logits[0].numpy()


def _req(sid, ids, xa=None, end=False, start=None):
    feeds = {"tokens": np.asarray([ids], dtype=np.int64), "session_id": np.asarray([[sid]], dtype=np.int64)}
    if xa is not None:
        feeds["audio_features"] = xa.numpy()
    if start or (start is None and xa is not None):  # a session opens with its audio
        feeds["session_start"] = np.ones((1, 1), dtype=bool)
    if end:
        feeds["session_end"] = np.ones((1, 1), dtype=bool)
    return feeds


def _runner(graph, slots=4):
    stateless = BatchRunner(spec.ASR_DECODER, TorchStage(spec.ASR_DECODER, graph, "cpu", "fp32"))
    return session_asr(spec.ASR_DECODER, graph, "cpu", stateless, slots=slots)


def test_utterances_decode_together_with_their_own_audio(graph):
    r = _runner(graph)
    utts = {1: (_features(1), _ids(4, 2)), 2: (_features(3), _ids(4, 4))}
    for sid, (xa, prompt) in utts.items():
        (out,) = r.run([_req(sid, prompt, xa)])
        np.testing.assert_allclose(out["logits"][0], _reference(graph, xa, prompt), atol=ATOL)
    extra = {1: _ids(3, 5), 2: _ids(3, 6)}
    for k in range(3):
        outs = r.run([_req(sid, [extra[sid][k]]) for sid in utts])  # one batch: sessions at their own positions
        for (sid, (xa, prompt)), out in zip(utts.items(), outs):
            np.testing.assert_allclose(out["logits"][0], _reference(graph, xa, prompt + extra[sid][:k + 1]),
                                       atol=ATOL)
    r.run([_req(1, [0], end=True)])
    assert set(r.table.sessions) == {2}
    (missing,) = r.run([_req(3, _ids(4, 7), start=True)])  # a first request without its audio
    assert "audio_features" in str(missing)


def test_transcription_protocol_is_chosen_like_the_llm(graph):
    sessions, xa, prompt = _runner(graph), _features(9), _ids(4, 10)
    stateless = BatchRunner(spec.ASR_DECODER, TorchStage(spec.ASR_DECODER, graph, "cpu", "fp32"))

    async def decode(runner, server_cache):
        async def infer(model, inputs, timeout_s=None):
            (res,) = runner.run([inputs])
            if isinstance(res, Exception):
                raise res
            return res
        decoder, logits = await start_decoder(infer, spec.ASR_DECODER, TINY, prompt,
                                              extra={"audio_features": xa.numpy()}, release=infer,
                                              server_cache=server_cache)
        out = [logits, await decoder.feed([5])]
        await decoder.close()
        return decoder, out

    d1, a = asyncio.run(decode(sessions, True))
    assert isinstance(d1, SessionDecoder) and not sessions.table.sessions
    d2, b = asyncio.run(decode(stateless, False))
    assert isinstance(d2, KVDecoder)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=ATOL)


def test_gpu_config_takes_the_audio_once():
    gpu = configs.render_config(spec.ASR_DECODER, "gpu")
    assert "session_id" in gpu and "count: 1\n" in gpu
    for variant in ("cpu", "tensorrt", "gpu_naive", "gpu_x2"):
        assert "session_id" not in configs.render_config(spec.ASR_DECODER, variant), variant


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
def test_graph_replays_on_the_gpu_match_the_stateless_decoder(graph):
    cuda = whisper.DecoderGraph(whisper.build(TINY.asr, seed=0)).to("cuda")
    stateless = BatchRunner(spec.ASR_DECODER, TorchStage(spec.ASR_DECODER, cuda, "cuda", "fp32"))
    r = session_asr(spec.ASR_DECODER, cuda, "cuda", stateless, slots=4)
    assert r.engine.graphs is not None
    utts = {1: (_features(11), _ids(4, 12)), 2: (_features(13), _ids(4, 14)), 3: (_features(15), _ids(4, 16))}
    for sid, (xa, prompt) in utts.items():
        (out,) = r.run([_req(sid, prompt, xa)])
        np.testing.assert_allclose(out["logits"][0], _reference(graph, xa, prompt), atol=ATOL)
    for k in range(3):
        toks = {sid: _ids(1, 50 + 10 * k + sid) for sid in utts}
        outs = r.run([_req(sid, toks[sid]) for sid in utts])
        for (sid, (xa, prompt)), out in zip(utts.items(), outs):
            prompt += toks[sid]
            np.testing.assert_allclose(out["logits"][0], _reference(graph, xa, prompt), atol=ATOL)
