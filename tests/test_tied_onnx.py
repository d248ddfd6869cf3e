"""A tied embedding is stored once in the exported ONNX graph (export/toolchain/onnx_export.py
share_transposed_weights), for the LLM (lm_head = embed_tokens) and the Whisper decoder (output projection = token
embedding): one initializer of the embedding's shape, a Gemm(transB=1) reading it, the file about one copy of the
weights, and ONNX Runtime parity. Without the pass the exporter's constant folding leaves a transposed second copy:
checked too, so these tests notice when the exporter changes.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

import export.toolchain.onnx_export as ox
from export.contract.presets import PRESETS
from export.toolchain.models import qwen2, whisper


def _graphs():
    tiny = PRESETS["tiny"]
    llm_config = dataclasses.replace(tiny.llm, vocab_size=2048, tie_word_embeddings=True)  # embedding >> the rest
    llm = qwen2.LlmGraph(qwen2.build(llm_config, seed=1))
    asr = whisper.DecoderGraph(whisper.build(dataclasses.replace(tiny.asr, n_vocab=2048), seed=1))
    return {"llm": (llm, llm.model.model.embed_tokens.weight), "asr_decoder": (asr, asr.model.decoder.token_embedding.weight)}


def _copies(path, shape) -> int:
    dims = [tuple(t.dims) for t in onnx.load(str(path), load_external_data=False).graph.initializer]
    return dims.count(tuple(shape)) + dims.count(tuple(reversed(shape)))


@pytest.mark.parametrize("name", ["llm", "asr_decoder"])
def test_tied_matrix_stored_once(tmp_path, name, monkeypatch):
    torch.set_num_threads(2)
    graph, embedding = _graphs()[name]
    params = sum(p.numel() for p in graph.parameters())  # a tied parameter counts once
    shared = tmp_path / "shared" / f"{name}.onnx"
    ox.export_onnx(graph, graph.SPEC, shared)
    ox.check_onnx(shared)
    assert _copies(shared, embedding.shape) == 1
    model = onnx.load(str(shared))
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemm) == 1 and gemm[0].attribute[0].name == "transB" and gemm[0].attribute[0].i == 1
    size = shared.stat().st_size
    assert size < params * 4 * 1.05 + 200_000, (size, params * 4)
    report = ox.parity(graph, graph.SPEC, shared)
    assert report.ok, report.line()

    monkeypatch.setattr(ox, "share_transposed_weights", lambda m: 0)  # the exporter alone
    folded = tmp_path / "folded" / f"{name}.onnx"
    ox.export_onnx(graph, graph.SPEC, folded)
    assert _copies(folded, embedding.shape) == 2
    assert folded.stat().st_size - size == pytest.approx(embedding.numel() * 4, rel=0.02)


def test_share_pass_leaves_untied_matrices_alone():
    """A MatMul whose initializer is the transpose of no other initializer is not touched."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w, e = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(e, "e")])
    model = helper.make_model(graph)
    assert ox.share_transposed_weights(model) == 0 and len(model.graph.initializer) == 2


def test_large_graphs_get_the_gemm_too(tmp_path, monkeypatch):
    """A graph over 2 GB cannot go through onnx.shape_inference.infer_shapes with its weights inside; simulate that
    (refuse any model that carries initializers) and check the tied head still becomes Gemm(transB=1), not
    MatMul(Transpose(E)), which ONNX Runtime would constant-fold back into a second copy in memory."""
    from onnx import shape_inference
    graph, embedding = _graphs()["llm"]
    real = shape_inference.infer_shapes

    def refuse_weights(model, *args, **kwargs):
        if len(model.graph.initializer):
            raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(shape_inference, "infer_shapes", refuse_weights)
    path = tmp_path / "llm.onnx"
    ox.export_onnx(graph, graph.SPEC, path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Gemm") == 1 and _copies(path, embedding.shape) == 1
