"""ONNX export (legacy TorchScript exporter, opset 17) of the Whisper and Qwen2 graphs, and
ONNX Runtime parity on fresh inputs whose batch / token / past sizes differ from the export example."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.contract import spec
from export.contract.presets import get_preset
from export.toolchain.models import qwen2, whisper

TINY = get_preset("tiny")
MAX_REL_ERR = 1e-4


def _graph(name: str) -> torch.nn.Module:
    if name == "llm":
        return qwen2.LlmGraph(qwen2.build(TINY.llm, seed=0)).eval()
    model = whisper.build(TINY.asr, seed=0)
    return (whisper.EncoderGraph(model) if name == "asr_encoder" else whisper.DecoderGraph(model)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache: dict[str, tuple[torch.nn.Module, ort.InferenceSession]] = {}

    def get(name: str):
        if name not in cache:
            graph, s = _graph(name), spec.BY_NAME[name]
            path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is the legacy exporter
                torch.onnx.export(graph, graph.example_inputs(batch=1, seed=0), str(path), dynamo=False,
                                  opset_version=17, input_names=[t.name for t in s.inputs],
                                  output_names=[t.name for t in s.outputs],
                                  dynamic_axes=spec.onnx_dynamic_axes(s))
            onnx.checker.check_model(str(path), full_check=True)
            _check_signature(onnx.load(str(path)), s)
            cache[name] = graph, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return cache[name]

    return get


def _check_signature(m: onnx.ModelProto, s: spec.ModelSpec) -> None:
    """Graph inputs/outputs are the spec's, in order, with its dynamic axes left symbolic."""
    dyn = spec.onnx_dynamic_axes(s)
    for values, tensors in ((m.graph.input, s.inputs), (m.graph.output, s.outputs)):
        assert [v.name for v in values] == [t.name for t in tensors]
        for v in values:
            dims = v.type.tensor_type.shape.dim
            symbolic = {i: d.dim_param for i, d in enumerate(dims) if d.dim_param}
            assert symbolic == dyn[v.name], (v.name, symbolic)


# the export example is batch 1 at the spec's opt sizes (tokens 1, past 32 / 256)
CASES = [
    ("asr_encoder", dict(batch=2)),
    ("asr_decoder", dict(batch=3, tokens=4, past=0)),
    ("asr_decoder", dict(batch=2, tokens=1, past=9)),
    ("asr_decoder", dict(batch=1, tokens=8, past=100)),
    ("llm", dict(batch=2, tokens=7, past=0)),
    ("llm", dict(batch=3, tokens=1, past=17)),
    ("llm", dict(batch=1, tokens=30, past=300)),
]


@pytest.mark.parametrize("name,sizes", CASES, ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in s.items())}"
                                                   for n, s in CASES])
def test_onnx_runtime_matches_pytorch(exported, name, sizes):
    graph, sess = exported(name)
    s = spec.BY_NAME[name]
    inputs = graph.example_inputs(seed=11, **sizes)
    with torch.no_grad():
        ref = graph(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = sess.run([t.name for t in s.outputs], {t.name: x.numpy() for t, x in zip(s.inputs, inputs)})
    for tensor, r, g in zip(s.outputs, ref, got):
        r = r.numpy()
        assert g.shape == r.shape, (tensor.name, g.shape, r.shape)
        rel = float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-12))
        print(f"{name} {sizes} {tensor.name} {tuple(g.shape)}: max rel err {rel:.2e}")
        assert rel <= MAX_REL_ERR, (tensor.name, rel)
