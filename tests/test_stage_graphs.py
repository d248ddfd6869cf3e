"""CUDA graphs of the gpu variant's fixed-shape stages (export/torch_runtime.GraphedStage, ModelSpec.gpu_graphs)."""
from __future__ import annotations

import numpy as np
import pytest

from ensemble.pipeline import VOCODER_CHUNK_FRAMES
from export.contract import spec
from export.contract.presets import get_preset
from export.runtime.torch_runtime import GraphedStage, TorchStage, graph_batches, load_graph
from export.toolchain import configs


@pytest.mark.parametrize("family", sorted(spec.SPEECH_FAMILIES))
def test_vocoder_graphs_are_the_streamed_chunk_sizes(family):
    stages = spec.SPEECH_FAMILIES[family]
    first = VOCODER_CHUNK_FRAMES + stages.context_frames
    middle = VOCODER_CHUNK_FRAMES + 2 * stages.context_frames
    assert set(stages.vocoder.gpu_graphs) == {first, middle}


def test_only_the_optimized_gpu_variant_asks_for_graphs():
    for s in (spec.VOCODER, spec.HIFIGAN, spec.WAV2LIP, spec.ASR_ENCODER, spec.TTS):
        assert 'key: "cuda_graphs"' in configs.render_config(s, "gpu")
        for variant in ("cpu", "gpu_naive", "tensorrt"):
            assert "cuda_graphs" not in configs.render_config(s, variant), (s.name, variant)
    assert "cuda_graphs" not in configs.render_config(spec.FASTSPEECH2, "gpu")  # its length depends on the input


def test_graph_batches_follow_the_served_config():
    assert graph_batches(spec.TTS) == [1, 2, 4, 8] == graph_batches(spec.TTS, spec.TTS.max_batch_size)
    assert graph_batches(spec.TTS, 16) == [1, 2, 4, 8, 16]  # e.g. loadtests/device_bench.sh BATCH="tts=16"
    assert graph_batches(spec.TTS, 12) == [1, 2, 4, 8, 12]  # the config's own size is a bucket
    assert graph_batches(spec.VOCODER, 4) == [1, 2, 4]


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
@pytest.mark.parametrize("stage_spec", [spec.VOCODER, spec.HIFIGAN, spec.WAV2LIP, spec.LIPSYNC])
def test_graph_replays_match_eager_runs_on_fresh_inputs(stage_spec, no_tf32):
    preset = get_preset("tiny")
    graph = load_graph(stage_spec, preset, 0, "cuda", "fp32")
    eager = TorchStage(stage_spec, graph, "cuda", "fp32")
    graphed = GraphedStage(TorchStage(stage_spec, graph, "cuda", "fp32"), stage_spec.preset_dims(preset))
    sizes = {"frames": max(stage_spec.gpu_graphs)} if stage_spec.axes else {}
    for seed, batch in ((1, 3), (2, 1), (3, 5)):  # padded batch buckets, replays over earlier inputs
        feeds = {t.name: x.numpy() for t, x in
                 zip(stage_spec.inputs, graph.example_inputs(batch=batch, seed=seed, **sizes))}
        want, got = eager(feeds), graphed(feeds)
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4 * float(np.abs(want[name]).max()))
