"""The session-keyed LLM cache of the gpu variant (export/runtime/llm_sessions.py), on the CPU: same logits as the
stateless graph, batched decode steps of sessions at different positions, release and eviction, and the
orchestrator's choice between shipping the cache and keeping it server-side (ensemble/decoding.py)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from ensemble.decoding import KVDecoder, SessionDecoder, start_decoder
from export.contract import spec
from export.contract.presets import get_preset
from export.contract.sampling import Candidates, greedy, top
from export.runtime.batching import BatchRunner
from export.runtime.kv_sessions import SessionError, SessionTable
from export.runtime.llm_sessions import SessionLLM, StaticKVCache, decode_step, prefill_step, prompt_groups
from export.runtime.torch_runtime import TorchStage
from export.toolchain import configs
from export.toolchain.models import qwen2

TINY = get_preset("tiny")
ATOL = 1e-4


@pytest.fixture(scope="module")
def graph():
    return qwen2.LlmGraph(qwen2.build(TINY.llm, seed=0))


def _runner(graph, slots=4) -> SessionLLM:
    stateless = BatchRunner(spec.LLM, TorchStage(spec.LLM, graph, "cpu", "fp32"))
    return SessionLLM(spec.LLM, graph, "cpu", stateless, slots=slots)


def _ids(n, seed):
    return torch.randint(0, TINY.llm.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _req(sid, ids, end=False, start=False):
    feeds = {"input_ids": np.asarray([ids], dtype=np.int64), "session_id": np.asarray([[sid]], dtype=np.int64)}
    if start:
        feeds["session_start"] = np.ones((1, 1), dtype=bool)
    if end:
        feeds["session_end"] = np.ones((1, 1), dtype=bool)
    return feeds


def _assert_top(out, ref: torch.Tensor) -> None:
    """A session's answer holds the reference logits' best LLM_CANDIDATES values, best first, and ids pointing at
    them (ids of tied values may come in either order)."""
    ref = ref.numpy()
    k = min(spec.LLM_CANDIDATES, ref.size)
    values, ids = out["top_logits"][0], out["top_ids"][0]
    assert values.shape == ids.shape == (k,) and "logits" not in out
    np.testing.assert_allclose(values, np.sort(ref)[::-1][:k], atol=ATOL)
    np.testing.assert_allclose(ref[ids], values, atol=ATOL)


@torch.no_grad()
def _reference(model, ids):
    """Next-token logits after each prefix of ids, through the stateless forward with an explicit past."""
    logits, kv = model(torch.tensor([ids[:1]]), model.empty_cache(1))
    out = [logits[0]]
    for t in ids[1:]:
        logits, kv = model(torch.tensor([[t]]), kv)
        out.append(logits[0])
    return out


@torch.no_grad()
def test_decode_step_matches_the_stateless_forward_for_sessions_at_different_positions(graph):
    model = graph.model
    cache = StaticKVCache(model, slots=3, max_length=32)
    seqs = [_ids(9, 1), _ids(4, 2), _ids(6, 3)]
    slot_of = [2, 0, 1]
    for slot, seq in zip(slot_of, seqs):  # prefill all but the last token of each
        _, present = model(torch.tensor([seq[:-1]]), model.empty_cache(1))
        cache.write(slot, 0, present)
    ids = torch.tensor([s[-1] for s in seqs])
    pos = torch.tensor([len(s) - 1 for s in seqs])
    got = decode_step(model, cache, ids, torch.tensor(slot_of), pos, span=16)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(got[row], _reference(model, seq)[-1], atol=ATOL, rtol=0)
    # the new keys/values landed where the stateless forward puts them
    _, full = model(torch.tensor([seqs[0]]), model.empty_cache(1))
    torch.testing.assert_close(cache.past(slot_of[0], len(seqs[0])), full, atol=ATOL, rtol=0)


@torch.no_grad()
def test_padded_prompt_prefill_then_decode_matches_the_stateless_forward(graph):
    """The prompt graph runs a length bucket: padding after the prompt never reaches the logits."""
    model = graph.model
    cache = StaticKVCache(model, slots=2, max_length=32)
    prompt, nxt = _ids(5, 11), _ids(2, 12)
    padded = torch.tensor([prompt + [0] * 3])  # a bucket of 8
    logits = prefill_step(model, cache, padded, torch.tensor([1]), torch.tensor([len(prompt)]))
    torch.testing.assert_close(logits[0], _reference(model, prompt)[-1], atol=ATOL, rtol=0)
    for k, t in enumerate(nxt):
        got = decode_step(model, cache, torch.tensor([t]), torch.tensor([1]), torch.tensor([len(prompt) + k]), span=16)
        torch.testing.assert_close(got[0], _reference(model, prompt + nxt[:k + 1])[-1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_prompts_of_several_sessions_prefill_as_one_padded_batch(graph):
    """Sessions that start together: one prefill of rows of different lengths (padding after each prompt, a
    padding row on the scratch slot) gives each row its own logits and cache, as its prompt alone would."""
    model = graph.model
    cache = StaticKVCache(model, slots=3, max_length=32)
    prompts = {1: _ids(5, 13), 0: _ids(8, 14), 2: _ids(2, 15)}  # slot -> prompt
    padded = torch.tensor([p + [0] * (8 - len(p)) for p in prompts.values()] + [[0] * 8])
    slots = torch.tensor([*prompts, cache.scratch])
    logits = prefill_step(model, cache, padded, slots, torch.tensor([len(p) for p in prompts.values()] + [1]))
    for row, (slot, p) in enumerate(prompts.items()):
        torch.testing.assert_close(logits[row], _reference(model, p)[-1], atol=ATOL, rtol=0)
        _, alone = model(torch.tensor([p]), model.empty_cache(1))
        torch.testing.assert_close(cache.past(slot, len(p)), alone, atol=ATOL, rtol=0)


def test_prompt_groups_fill_the_fewest_replays_of_each_length_bucket():
    batches = {16: [1, 2, 4], 32: [1, 2], 64: [1]}  # bucket -> its batch buckets (b * t within a budget)
    lengths = [3, 17, 40, 12, 60, 5, 9, 16, 20, 30]
    groups = prompt_groups(lengths, batches)
    assert groups == [(16, 4, [0, 3, 5, 6]), (16, 1, [7]), (32, 2, [1, 8]), (32, 1, [9]), (64, 1, [2]),
                      (64, 1, [4])]
    assert sorted(k for _, _, ks in groups for k in ks) == list(range(len(lengths)))
    assert prompt_groups([], batches) == []


def test_session_runner_batches_decode_steps_and_matches_shipping_the_cache(graph):
    r = _runner(graph)
    prompts = {11: _ids(7, 4), 22: _ids(3, 5)}
    for sid, p in prompts.items():  # prompts one by one, then steps of both sessions in one batch
        (out,) = r.run([_req(sid, p, start=True)])
        _assert_top(out, _reference(graph.model, p)[-1])
    steps = {11: _ids(3, 6), 22: _ids(3, 7)}
    for k in range(3):
        outs = r.run([_req(sid, [steps[sid][k]]) for sid in prompts])
        for (sid, p), out in zip(prompts.items(), outs):
            _assert_top(out, _reference(graph.model, p + steps[sid][:k + 1])[-1])
            assert out["present_kv"].size <= 2  # the cache stays on the server
    assert r.table.sessions[11].length == 10 and r.table.sessions[22].length == 6
    # the same session twice in one batch: the second step waits for the first
    a, b = r.run([_req(22, [5]), _req(22, [6])])
    _assert_top(b, _reference(graph.model, prompts[22] + steps[22] + [5, 6])[-1])
    # release frees the slot; stateless requests are still served
    r.run([_req(11, [0], end=True), _req(22, [0], end=True)])
    assert len(r.table) == 0
    kv = graph.model.empty_cache(1).numpy()
    (plain,) = r.run([{"input_ids": np.asarray([prompts[11]]), "past_kv": kv}])
    np.testing.assert_allclose(plain["logits"][0], _reference(graph.model, prompts[11])[-1].numpy(), atol=ATOL)
    assert plain["present_kv"].shape[4] == len(prompts[11])


def test_session_runner_refuses_bad_requests_alone(graph):
    r = _runner(graph, slots=1)
    kv = graph.model.empty_cache(1).numpy()
    bad, zero, ok, full, lost = r.run([{**_req(5, [1, 2], start=True), "past_kv": kv}, _req(0, [1], start=True),
                                       _req(7, [1, 2], start=True), _req(8, [3], start=True), _req(9, [4])])
    assert "leave out 'past_kv'" in str(bad) and "reserved" in str(zero)
    assert ok["top_ids"].shape == (1, min(spec.LLM_CANDIDATES, TINY.llm.vocab_size))
    assert isinstance(full, SessionError) and "slots are in use" in str(full)
    # a step for a session the model does not hold (evicted, or the model restarted) is refused, not restarted
    assert isinstance(lost, SessionError) and "not open" in str(lost)


def test_table_reuses_slots_evicts_idle_sessions_and_bounds_length():
    now = [0.0]
    t = SessionTable(slots=2, max_length=8, idle_timeout_s=10, clock=lambda: now[0])
    assert t.get(1, 4).slot == 0 and t.get(2, 1).slot == 1
    t.advance(1, 4)
    with pytest.raises(SessionError, match="exceed"):
        t.get(1, 5)
    with pytest.raises(SessionError, match="in use"):
        t.get(3, 1)
    now[0] = 5.0
    t.get(2, 1)  # session 2 is used again; session 1 idles on
    now[0] = 12.0
    assert t.get(3, 1).slot == 0  # session 1 (idle 12 s) was evicted to make room
    assert t.evicted == 1 and 1 not in t.sessions and t.release(2) and not t.release(2)


def _infer_of(runner):
    async def infer(model, inputs, timeout_s=None):
        (result,) = runner.run([inputs])
        if isinstance(result, Exception):
            raise result
        return result
    return infer


def test_orchestrator_uses_the_server_cache_where_served_and_ships_it_elsewhere(graph):
    sessions = _runner(graph)
    stateless = BatchRunner(spec.LLM, TorchStage(spec.LLM, graph, "cpu", "fp32"))
    prompt, steps = _ids(6, 8), _ids(4, 9)

    async def decode(runner, server_cache):
        infer = _infer_of(runner)
        release = lambda m, i, t: infer(m, i)  # noqa: E731
        decoder, logits = await start_decoder(infer, spec.LLM, TINY, prompt, release=release, server_cache=server_cache)
        out = [logits]
        for t in steps:
            out.append(await decoder.feed([t]))
        await decoder.close()
        return decoder, out

    d1, server = asyncio.run(decode(sessions, True))
    assert isinstance(d1, SessionDecoder) and len(sessions.table) == 0  # released
    d2, shipped = asyncio.run(decode(stateless, False))  # the cache shipped with every step
    assert isinstance(d2, KVDecoder)
    with pytest.raises(Exception, match="missing input 'past_kv'"):  # a model without a session cache refuses
        asyncio.run(decode(stateless, True))
    for a, b in zip(server, shipped):  # the server's top candidates, the shipped cache's whole vocabulary
        assert isinstance(a, Candidates) and isinstance(b, np.ndarray) and b.shape == (TINY.llm.vocab_size,)
        np.testing.assert_allclose(top(a, 40)[1], top(b, 40)[1], atol=ATOL)
        assert greedy(a) == greedy(b)


def test_gpu_config_alone_keeps_the_cache_server_side():
    for variant in ("tensorrt", "cpu", "gpu_naive", "gpu_x2"):
        text = configs.render_config(spec.LLM, variant)
        assert "session_id" not in text and "top_ids" not in text, variant
    gpu = configs.render_config(spec.LLM, "gpu")
    assert "session_id" in gpu and "session_end" in gpu and "count: 1\n" in gpu
    assert 'name: "top_logits"' in gpu and 'name: "top_ids"' in gpu and 'name: "logits"' in gpu
    assert f"max_batch_size: {spec.LLM.session.max_batch_size}" in gpu


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
def test_graph_replays_on_the_gpu_match_the_stateless_forward(graph):
    """StepGraphs: prompt buckets and (batch, span) buckets replayed over fresh inputs, fp32 on CUDA."""
    cuda = qwen2.LlmGraph(qwen2.build(TINY.llm, seed=0)).to("cuda")
    stateless = BatchRunner(spec.LLM, TorchStage(spec.LLM, cuda, "cuda", "fp32"))
    r = SessionLLM(spec.LLM, cuda, "cuda", stateless, slots=8)
    assert r.engine.graphs is not None
    seqs = {sid: _ids(n, 20 + sid) for sid, n in ((1, 3), (2, 17), (3, 40))}
    for sid, seq in seqs.items():
        (out,) = r.run([_req(sid, seq, start=True)])
        _assert_top(out, _reference(graph.model, seq)[-1])
    # sessions that start together: their prompts as batched replays (buckets 16 x 4 and 32 x 1 here)
    herd = {sid: _ids(n, 40 + sid) for sid, n in ((4, 9), (5, 12), (6, 3), (7, 30))}
    for (sid, seq), out in zip(herd.items(), r.run([_req(sid, seq, start=True) for sid, seq in herd.items()])):
        _assert_top(out, _reference(graph.model, seq)[-1])
    r.run([_req(sid, [0], end=True) for sid in herd])
    for k in range(3):
        toks = {sid: _ids(1, 100 * k + sid) for sid in seqs}
        outs = r.run([_req(sid, toks[sid]) for sid in seqs])
        for (sid, seq), out in zip(seqs.items(), outs):
            seq += toks[sid]
            _assert_top(out, _reference(graph.model, seq)[-1])


# ---------------------------------------------------------------- sampled chunks (talking_head llm_chunk_tokens)

def _chunked_and_token_by_token(graph, prompt, sampling, chunk, *, stops=(), banned=(), limit=24):
    """The same reply twice from one session-keyed llm: the model sampling `chunk` tokens a request, and the
    orchestrator sampling one token a request; and how many requests each made."""
    from ensemble.decoding import sampled_reply

    runner = _runner(graph)
    calls = []

    def counting(inner):
        async def infer(model, inputs, timeout_s=None):
            calls.append(model)
            return await inner(model, inputs, timeout_s)
        return infer

    async def chunked():
        d = SessionDecoder(counting(_infer_of(runner)), spec.LLM, release=lambda m, i, t: _infer_of(runner)(m, i))
        out = [t async for t in d.chunks(prompt, chunk, sampling, stops=stops, banned=banned, limit=limit)]
        await d.close()
        return out

    async def one_by_one():
        infer = counting(_infer_of(runner))
        d, scores = await start_decoder(infer, spec.LLM, TINY, prompt, server_cache=True,
                                        release=lambda m, i, t: _infer_of(runner)(m, i))
        out = [t async for t in sampled_reply(d, scores, sampling, stops=stops, banned=banned, limit=limit)]
        await d.close()
        return out

    a = asyncio.run(chunked())
    n_chunked = len(calls)
    b = asyncio.run(one_by_one())
    assert len(runner.table) == 0  # both released their session
    return a, b, n_chunked, len(calls) - n_chunked


@pytest.mark.parametrize("temperature, chunk", [(0.7, 4), (0.7, 5), (0.0, 8), (1.3, 1)])
def test_a_chunk_sampled_by_the_model_is_what_the_orchestrator_samples_token_by_token(graph, temperature, chunk):
    from ensemble.decoding import Sampling

    sampling = Sampling(temperature, 40, seed=7, vocab=TINY.llm.vocab_size - 3)  # the padding never picked
    chunked, single, n_chunked, n_single = _chunked_and_token_by_token(graph, _ids(6, 11), sampling, chunk,
                                                                       banned=(1, 2))
    assert chunked == single and len(single) == 24, (chunked, single)
    assert not {1, 2} & set(single) and max(single) < sampling.vocab
    assert n_chunked == -(-24 // chunk)  # a request a chunk (the release not counted)
    assert n_single == 24  # a request a token: the prompt's, then one for each token but the last


def test_a_chunk_stops_at_a_stop_id_as_the_token_loop_does(graph):
    from ensemble.decoding import Sampling

    sampling = Sampling(0.7, 40, seed=3, vocab=TINY.llm.vocab_size)
    free, _, _, _ = _chunked_and_token_by_token(graph, _ids(5, 12), sampling, 4)
    stop = free[9]  # the 10th token: a stop id now (the sampler draws the same numbers before it)
    chunked, single, n_chunked, _ = _chunked_and_token_by_token(graph, _ids(5, 12), sampling, 4, stops=(stop,))
    assert chunked == single == free[:free.index(stop)]
    assert n_chunked == -(-(free.index(stop) + 1) // 4)  # the chunk that met it was the last request


def test_chunk_requests_batch_sessions_and_refuse_bad_ones_alone(graph):
    r = _runner(graph)

    def chunk(sid, ids, n, start=False, **over):
        feeds = {**_req(sid, ids, start=start), "chunk_tokens": np.asarray([[n]], dtype=np.int64),
                 "temperature": np.asarray([[0.7]], dtype=np.float32),
                 "sampling": np.asarray([[40, sid, TINY.llm.vocab_size]], dtype=np.int64),
                 "stop_ids": np.zeros((1, 0), dtype=np.int64), "banned_ids": np.zeros((1, 0), dtype=np.int64)}
        return {**feeds, **over}

    a, b = r.run([chunk(11, _ids(4, 1), 6, start=True), chunk(22, _ids(9, 2), 3, start=True)])
    assert a["chunk_ids"].shape == (1, 6) and b["chunk_ids"].shape == (1, 3)
    assert r.table.sessions[11].length == 4 + 5 and r.table.sessions[22].length == 9 + 2  # the last one not fed
    # the same sessions again in one batch, each alone: the same tokens
    alone = _runner(graph)
    (a1,) = alone.run([chunk(11, _ids(4, 1), 6, start=True)])
    np.testing.assert_array_equal(a1["chunk_ids"], a["chunk_ids"])
    more, twice, lost, bare, hot, long = r.run([
        chunk(11, [int(a["chunk_ids"][0, -1])], 4), chunk(11, [5], 4), chunk(33, [5], 4),
        {k: v for k, v in chunk(22, [1], 4).items() if k != "sampling"},
        chunk(22, [int(b["chunk_ids"][0, -1])], 4, temperature=np.asarray([[9.0]], dtype=np.float32)),
        chunk(44, _ids(3, 3), spec.MAX_CHUNK_TOKENS + 1, start=True)])  # no request holds the llm for long
    assert more["chunk_ids"].shape == (1, 4) and r.table.sessions[11].length == 9 + 4
    assert "two chunks at once" in str(twice)
    assert isinstance(lost, SessionError) and "not open" in str(lost)
    assert "also carries ['sampling']" in str(bare) and "temperature 9" in str(hot)
    assert f"chunk_tokens {spec.MAX_CHUNK_TOKENS + 1}, allowed 1..{spec.MAX_CHUNK_TOKENS}" in str(long)
    r.run([_req(11, [0], end=True), _req(22, [0], end=True)])
    assert len(r.table) == 0


def test_gpu_config_serves_sampled_chunks():
    gpu = configs.render_config(spec.LLM, "gpu")
    for name in ("chunk_tokens", "temperature", "sampling", "stop_ids", "banned_ids", "chunk_ids"):
        assert f'name: "{name}"' in gpu, name
    assert "chunk_tokens" not in configs.render_config(spec.LLM, "cpu")
