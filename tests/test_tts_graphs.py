"""The tts stage in bucketed halves (export/runtime/tts_graphs.py): phonemes and frames padded up to buckets give
each row what the stage graph gives it; on CUDA the halves replay graphs (the GPU test)."""
from __future__ import annotations

import numpy as np
import pytest

from export.contract import spec
from export.contract.presets import get_preset
from export.runtime.torch_runtime import TorchStage, graphed_stage, load_graph
from export.runtime.tts_graphs import GraphedTts, bucket


def _feeds(graph, batch: int, seed: int, phonemes: int, noise: bool = True) -> dict[str, np.ndarray]:
    xs = graph.example_inputs(batch=batch, seed=seed, noise=noise, phonemes=phonemes)
    return {t.name: x.numpy() for t, x in zip(spec.TTS.inputs, xs)}


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
    np.testing.assert_array_equal(got["latent_lengths"], want["latent_lengths"])
    np.testing.assert_array_equal(got["durations"], want["durations"])
    scale = float(np.abs(want["latents"]).max())
    np.testing.assert_allclose(got["latents"], want["latents"], rtol=1e-4, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def tts_graph():
    return load_graph(spec.TTS, get_preset("tiny"), 0, "cpu", "fp32")


def test_bucket_is_the_smallest_size_that_holds_n():
    assert [bucket(n, (32, 64)) for n in (1, 32, 33, 64, 65)] == [32, 32, 64, 64, None]


@pytest.mark.parametrize("batch,phonemes,noise", [(1, 9, True), (3, 40, True), (2, 64, False), (5, 100, True)])
def test_padded_to_buckets_each_row_gets_what_the_stage_gives(tts_graph, batch, phonemes, noise):
    stage = TorchStage(spec.TTS, tts_graph, "cpu", "fp32")
    bucketed = GraphedTts(stage, (1, 2, 4, 8), spec.TTS.gpu_graphs)
    feeds = _feeds(tts_graph, batch, seed=batch, phonemes=phonemes, noise=noise)
    want = stage(feeds)
    assert want["latents"].shape[2] < bucket(want["latents"].shape[2], bucketed.frames)  # the frames were padded
    _assert_same(bucketed(feeds), want)


def test_past_the_largest_buckets_it_runs_the_stage_itself(tts_graph):
    stage = TorchStage(spec.TTS, tts_graph, "cpu", "fp32")
    feeds = _feeds(tts_graph, 2, seed=7, phonemes=48)
    want = stage(feeds)
    # more frames than the largest frame bucket: the flow runs eagerly on the exact length
    _assert_same(GraphedTts(stage, (1, 2), (64,), frame_buckets=(4,))(feeds), want)
    # more phonemes than the largest phoneme bucket: the whole stage runs as it is
    _assert_same(GraphedTts(stage, (1, 2), (32,))(feeds), want)


def test_every_phoneme_count_the_stage_accepts_has_a_bucket():
    assert max(spec.TTS.gpu_graphs) == spec.TTS.axis("phonemes").max


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
def test_graph_replays_match_the_eager_stage_on_fresh_inputs(no_tf32):
    graph = load_graph(spec.TTS, get_preset("tiny"), 0, "cuda", "fp32")
    eager = TorchStage(spec.TTS, graph, "cuda", "fp32")
    graphed = graphed_stage(TorchStage(spec.TTS, graph, "cuda", "fp32"), {})
    assert isinstance(graphed, GraphedTts) and graphed.text.graphs and graphed.flow.graphs
    # batch buckets padded, phoneme buckets changing, replays over earlier (longer) inputs
    for seed, batch, phonemes in ((1, 3, 100), (2, 1, 9), (3, 5, 40), (4, 8, 300), (5, 2, 33)):
        feeds = _feeds(graph, batch, seed=seed, phonemes=phonemes)
        _assert_same(graphed(feeds), eager(feeds))

