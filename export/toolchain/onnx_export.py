"""PyTorch → ONNX for one stage graph, with the checker and an ONNX Runtime parity check.

Names and dynamic axes come from the model's spec (export/contract/spec.py). The parity
check draws fresh inputs of other sizes than the export example, so a shape
that was baked into the graph by mistake fails it.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.contract.spec import ModelSpec, onnx_dynamic_axes

OPSET = 17
PARITY_RTOL = 1e-4  # max |onnx - torch| / max |torch| per output, fp32


@dataclass
class ParityReport:
    model: str
    max_rel_error: dict[str, float]  # per output: max |onnx - torch| / max |torch|

    @property
    def ok(self) -> bool:
        return all(e <= PARITY_RTOL for e in self.max_rel_error.values())

    def line(self) -> str:
        errs = ", ".join(f"{k} {v:.1e}" for k, v in self.max_rel_error.items())
        return f"{self.model}: max relative error {errs} ({'ok' if self.ok else 'FAIL'}, limit {PARITY_RTOL:.0e})"


def export_onnx(graph: torch.nn.Module, spec: ModelSpec, path: Path) -> float:
    """Export `graph` to `path`; returns seconds taken. Large graphs get external data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = graph.example_inputs(batch=2 if spec.batched else 1, seed=0)
    t0 = time.perf_counter()
    # The exporter spills a >2 GB graph's weights as one file per tensor beside it: write into a scratch
    # folder, then save graph + one weights file into place.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        tmp = Path(scratch) / "model.onnx"
        with torch.inference_mode():
            torch.onnx.export(
                graph, example, str(tmp), dynamo=False, opset_version=OPSET,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_axes=onnx_dynamic_axes(spec), do_constant_folding=True)
        _save_onnx(tmp, path)
    return time.perf_counter() - t0


def _save_onnx(src: Path, path: Path) -> None:
    """Save the graph at `path`, its weights in `path.data` when they are too large for one protobuf."""
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    share_transposed_weights(model)
    for f in path.parent.glob(path.name + "*"):
        f.unlink()
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    large = weights > 1_500_000_000
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=path.name + ".data" if large else None)


def share_transposed_weights(model) -> int:
    """Store a tied matrix once: the exporter's constant folding turns `x @ E.T` (a tied output projection over the
    embedding E) into MatMul with a second, transposed copy of E. Each such MatMul on a 2-D input becomes
    Gemm(x, E, transB=1), on any other input MatMul(x, Transpose(E)), and the copy is dropped. Returns how many
    were replaced. The ranks come from `value_ranks`, which works for graphs over 2 GB too, so those get the Gemm
    as well (a Transpose of an initializer is constant-folded at load by ONNX Runtime: a second copy in memory)."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    by_shape: dict[tuple[int, ...], list] = {}
    for t in g.initializer:
        by_shape.setdefault(tuple(t.dims), []).append(t)
    ranks = value_ranks(model)
    replaced, dropped = 0, set()
    for i, node in enumerate(list(g.node)):
        if node.op_type != "MatMul" or node.input[1] not in inits or len(inits[node.input[1]].dims) != 2:
            continue
        copy = inits[node.input[1]]
        candidates = [t for t in by_shape.get(tuple(reversed(copy.dims)), []) if t.name != copy.name]
        if not candidates:
            continue
        values = numpy_helper.to_array(copy)
        original = next((t for t in candidates if np.array_equal(numpy_helper.to_array(t).T, values)), None)
        if original is None:
            continue
        g.node.remove(node)
        if ranks.get(node.input[0]) == 2:
            g.node.insert(i, helper.make_node("Gemm", [node.input[0], original.name], list(node.output),
                                              name=node.name + "_tied", transB=1))
        else:
            transposed = node.name + "_tied_T"
            g.node.insert(i, helper.make_node("Transpose", [original.name], [transposed], name=transposed))
            g.node.insert(i + 1, helper.make_node("MatMul", [node.input[0], transposed], list(node.output),
                                                  name=node.name + "_tied"))
        dropped.add(copy.name)
        replaced += 1
    still_used = {x for n in g.node for x in n.input}
    for name in dropped - still_used:
        g.initializer.remove(inits[name])
    return replaced


def value_ranks(model) -> dict[str, int]:
    """The rank of every value in the graph, by shape inference on a weight-free copy: the initializers become graph
    inputs of their shapes, so a graph of any size is inferred in memory (a >2 GB ModelProto cannot be)."""
    from onnx import helper, shape_inference

    g = model.graph
    inputs = {v.name: v for v in g.input}
    for t in g.initializer:
        inputs.setdefault(t.name, helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    light = helper.make_model(helper.make_graph(list(g.node), g.name or "ranks", list(inputs.values()), list(g.output)),
                              opset_imports=list(model.opset_import), ir_version=model.ir_version)
    inferred = shape_inference.infer_shapes(light).graph
    return {v.name: len(v.type.tensor_type.shape.dim)
            for v in [*inferred.value_info, *inferred.input, *inferred.output] if v.type.tensor_type.HasField("shape")}


def check_onnx(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=False)


def parity(graph: torch.nn.Module, spec: ModelSpec, path: Path, seed: int = 1, **sizes: int) -> ParityReport:
    """Fresh random inputs (batch 3, other sizes) through PyTorch and ONNX Runtime."""
    import onnxruntime as ort

    batch = 3 if spec.batched else 1
    inputs = graph.example_inputs(batch=batch, seed=seed, **sizes)
    with torch.inference_mode():
        ref = graph(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: not a warning per initializer the exporter left unused
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)}
    got = session.run([t.name for t in spec.outputs], feeds)
    errors = {}
    for t, r, g in zip(spec.outputs, ref, got):
        r = r.numpy()
        if r.shape != g.shape:
            raise AssertionError(f"{spec.name}.{t.name}: ONNX shape {g.shape} != PyTorch {r.shape}")
        scale = float(np.max(np.abs(r))) or 1.0
        errors[t.name] = float(np.max(np.abs(g.astype(np.float64) - r))) / scale if r.size else 0.0
    return ParityReport(spec.name, errors)
