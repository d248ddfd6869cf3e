"""The gpu variant's asr_decoder with per-utterance caches on the device (export/runtime/asr_sessions.py), on the CPU:
the same logits as the stateless decoder graph, batched steps of utterances at different positions, and the
orchestrator's choice of protocol (ensemble/decoding.start_decoder)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from ensemble.decoding import KVDecoder, SessionDecoder, decode_greedy, start_decoder
from export.contract import media, spec
from export.contract.presets import get_preset
from export.contract.sampling import greedy
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
    # first requests of one batch prefill together; one without its audio fails alone
    xa, prompt = _features(8), _ids(4, 9)
    missing, ok = r.run([_req(3, _ids(4, 7), start=True), _req(4, prompt, xa)])
    assert "audio_features" in str(missing)
    np.testing.assert_allclose(ok["logits"][0], _reference(graph, xa, prompt), atol=ATOL)
    assert r.table.sessions[4].length == len(prompt)


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


def _serve(runner):
    """An `infer` over the runner: one request a call, an error raised."""
    async def infer(model, inputs, timeout_s=None):
        (res,) = runner.run([inputs])
        if isinstance(res, Exception):
            raise res
        return res
    return infer


async def _loop(infer, xa, prompt, limit, end, banned):
    """The orchestrator's token-by-token transcription (the cpu and tensorrt variants)."""
    decoder, scores = await start_decoder(infer, spec.ASR_DECODER, TINY, prompt, server_cache=False,
                                          extra={"audio_features": xa.numpy()})
    out = []
    while len(out) < limit and (token := greedy(scores, banned=banned)) != end:
        out.append(token)
        scores = await decoder.feed([token])
    return out


def test_a_greedy_request_transcribes_what_the_token_loop_does(graph):
    stateless = _serve(BatchRunner(spec.ASR_DECODER, TorchStage(spec.ASR_DECODER, graph, "cpu", "fp32")))
    r = _runner(graph)
    xa, prompt = _features(21), _ids(4, 22)
    picked = {}
    for banned in ([], list(range(100, TINY.asr.n_vocab, 3))):  # then a third of the vocabulary never picked
        free = asyncio.run(_loop(stateless, xa, prompt, 12, -1, banned))
        picked[len(banned)] = free
        never = next(i for i in range(TINY.asr.n_vocab) if i not in free)
        for limit, end in ((12, never), (5, never), (12, free[0])):
            want = asyncio.run(_loop(stateless, xa, prompt, limit, end, banned))
            got = asyncio.run(decode_greedy(_serve(r), spec.ASR_DECODER, prompt, limit, end, banned,
                                            {"audio_features": xa.numpy()}))
            assert got == want and len(got) == (0 if end == free[0] else limit), (limit, end, got)
            assert not set(got) & set(banned)
            assert not r.table.sessions  # the request freed its session
    assert picked[0] != picked[138]  # the suppressed ids reach the model: the random decoder's favourite is one


def test_greedy_requests_of_one_batch_step_together_and_fail_alone(graph):
    r = _runner(graph)
    calls = []
    decode = r.engine.decode
    r.engine.decode = lambda ids, slots, pos: calls.append(len(ids)) or decode(ids, slots, pos)

    def req(sid, seed, limit=6, **override):
        feeds = {**_req(sid, _ids(4, seed), _features(seed)), "max_new_tokens": np.asarray([[limit]]),
                 "end_id": np.asarray([[TINY.asr.n_vocab - 1]]), "suppress_ids": np.asarray([[0, 1]])}
        return {**feeds, **override}

    outs = r.run([req(1, 31), req(2, 32, limit=3), req(3, 33, limit=0), req(4, 34, end_id=np.asarray([[10**6]])),
                  {k: v for k, v in req(5, 35).items() if k != "suppress_ids"}])
    assert [o["new_ids"].shape for o in outs[:2]] == [(1, 6), (1, 3)]
    # the prompts (a step a token each), then two decodes in lockstep, the longer alone, no step for a last id
    assert calls == [1] * 8 + [2, 2, 1, 1, 1]
    assert "max_new_tokens 0, allowed 1..444 after a 4-token prompt" in str(outs[2])
    assert "out of the vocabulary" in str(outs[3]) and "1000000" in str(outs[3])
    assert "also carries ['suppress_ids']" in str(outs[4])
    assert not r.table.sessions
    alone = r.run([req(1, 31)])[0]["new_ids"]
    np.testing.assert_array_equal(alone, outs[0]["new_ids"])  # a batch neighbour changes nothing


def test_two_greedy_requests_of_one_session_in_a_batch_refuse_the_second(graph):
    r = _runner(graph)
    feeds = {**_req(1, _ids(4, 41), _features(41)), "max_new_tokens": np.asarray([[3]]),
             "end_id": np.asarray([[TINY.asr.n_vocab - 1]]), "suppress_ids": np.asarray([[0]])}
    first, second = r.run([feeds, feeds])
    assert first["new_ids"].shape == (1, 3)
    assert isinstance(second, ValueError) and "session 1 asked for two decodes at once" in str(second)
    assert not r.table.sessions


def test_gpu_config_serves_greedy_requests_and_the_others_do_not():
    gpu = configs.render_config(spec.ASR_DECODER, "gpu")
    for name in ("max_new_tokens", "end_id", "suppress_ids", "new_ids"):
        assert f'name: "{name}"' in gpu
        for variant in ("cpu", "tensorrt", "gpu_naive", "gpu_x2"):
            assert name not in configs.render_config(spec.ASR_DECODER, variant), variant
    assert [t.name for t in spec.ASR_DECODER.answer(["tokens", "session_id", "max_new_tokens"])] == ["new_ids"]
    assert [t.name for t in spec.ASR_DECODER.answer(["tokens", "session_id"])] == ["logits", "present_kv"]


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
def test_a_greedy_request_replays_the_graphs_to_the_token_loops_transcript(graph):
    cuda = whisper.DecoderGraph(whisper.build(TINY.asr, seed=0)).to("cuda")
    stateless = _serve(BatchRunner(spec.ASR_DECODER, TorchStage(spec.ASR_DECODER, cuda, "cuda", "fp32")))
    r = session_asr(spec.ASR_DECODER, cuda, "cuda", BatchRunner(spec.ASR_DECODER, TorchStage(
        spec.ASR_DECODER, cuda, "cuda", "fp32")), slots=4)
    xa, prompt, banned = _features(17), _ids(4, 18), list(range(100, TINY.asr.n_vocab, 3))
    want = asyncio.run(_loop(stateless, xa, prompt, 40, TINY.asr.n_vocab - 2, banned))
    got = asyncio.run(decode_greedy(_serve(r), spec.ASR_DECODER, prompt, 40, TINY.asr.n_vocab - 2, banned,
                                    {"audio_features": xa.numpy()}))
    assert got == want and len(got) == 40 and not r.table.sessions
