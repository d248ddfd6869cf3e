"""Dynamic batching for stage models on ONNX Runtime: pad, run once, split back.

Triton's dynamic batcher hands a Python-based backend several requests at
once. `BatchRunner` concatenates them along the batch axis (padding ragged
inputs to the longest request with the spec's pad value), runs the graph once,
and cuts each request's rows back out of every output, trimming outputs whose
length depends on the request (`Tensor.length_from`) along their last axis.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from export.contract.spec import ModelSpec, Tensor

Feeds = dict[str, np.ndarray]


def _pad_to(a: np.ndarray, shape: Sequence[int], value: float) -> np.ndarray:
    if tuple(a.shape) == tuple(shape):
        return a
    widths = [(0, target - have) for have, target in zip(a.shape, shape)]
    return np.pad(a, widths, mode="constant", constant_values=value)


def _ragged_length(t: Tensor, a: np.ndarray) -> int:
    """Length of a ragged input along its (last) dynamic axis."""
    return int(a.shape[-1])


def detached(e: Exception) -> Exception:
    """e without its traceback, to keep as a request's answer: a traceback holds the frames that raised it, and
    through them the request's inputs (views of the Python backend's shared memory), in a reference cycle with the
    results list, so the memory would wait for the cycle collector (issue 15: a stub's pool grew ~100 MiB under a
    stream of refused 4 MB requests)."""
    return e.with_traceback(None)


def check_values(spec: ModelSpec, name: str, a: np.ndarray, bound: list) -> None:
    """Every value of input `name` within its bound: [lo, hi], or one [lo, hi] per column of the last axis."""
    if a.size == 0:
        return
    per_column = isinstance(bound[0], list)
    if per_column and a.shape[-1] != len(bound):
        raise ValueError(f"{spec.name}: input {name!r} has {a.shape[-1]} columns, expected {len(bound)}")
    columns = [(a.reshape(-1, len(bound))[:, k], f" column {k}", b) for k, b in enumerate(bound)] if per_column \
        else [(a, "", bound)]
    for values, where, (lo, hi) in columns:
        if values.min() < lo or values.max() > hi:
            raise ValueError(f"{spec.name}: input {name!r}{where} holds values {values.min()}..{values.max()}, "
                             f"allowed {lo}..{hi}")


def check_request(spec: ModelSpec, feeds: Feeds, dims: dict[str, int] | None = None,
                  bounds: dict[str, list] | None = None) -> None:
    """Reject a request whose inputs do not fit the spec (names, dtypes, ranks, axis ranges, the sizes the
    served graph fixes: `dims` resolves the spec's preset dims, e.g. latent_channels -> 192) or hold values out of
    `bounds` (the export's ModelSpec.input_bounds: ids in the vocabulary, bounded controls); a float input holds no
    NaN or infinity, bounded or not (one request's NaN would make its batch's numbers, e.g. the vocoder's audio)."""
    dims = dims or {}
    bounds = bounds or {}
    for t in spec.inputs:
        if t.name not in feeds:
            if t.optional:
                continue
            raise ValueError(f"{spec.name}: missing input {t.name!r}")
        a = feeds[t.name]
        if a.dtype != np.dtype(t.numpy_dtype):
            raise ValueError(f"{spec.name}: input {t.name!r} is {a.dtype}, expected {t.numpy_dtype}")
        rank = len(t.dims) + int(spec.batched)
        if a.ndim != rank:
            raise ValueError(f"{spec.name}: input {t.name!r} has rank {a.ndim}, expected {rank}")
        for i, d in enumerate(t.dims):
            size = a.shape[i + int(spec.batched)]
            if isinstance(d, str) and any(ax.name == d for ax in spec.axes):
                ax = spec.axis(d)
                if not ax.min <= size <= ax.max:
                    raise ValueError(f"{spec.name}: input {t.name!r} axis {d!r} is {size}, allowed {ax.min}..{ax.max}")
                continue
            fixed = dims.get(d) if isinstance(d, str) else d
            if fixed is not None and fixed >= 0 and size != fixed:
                raise ValueError(f"{spec.name}: input {t.name!r} dim {i} is {size}, expected {fixed}")
        if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():  # bounded or not, never NaN or infinity
            raise ValueError(f"{spec.name}: input {t.name!r} holds NaN or infinite values")
        if t.name in bounds:
            check_values(spec, t.name, a, bounds[t.name])


def stack_requests(spec: ModelSpec, requests: Sequence[Feeds]) -> tuple[Feeds, list[int], dict[str, list[int]]]:
    """One batch from several requests: rows per request, and each row's ragged lengths."""
    rows = [len(next(iter(r.values()))) for r in requests]
    batch: Feeds = {}
    lengths: dict[str, list[int]] = {}
    for t in spec.inputs:
        arrays = [r[t.name] for r in requests]
        if t.ragged:
            lengths[t.name] = [_ragged_length(t, a) for a in arrays for _ in range(len(a))]
            target = np.max([a.shape for a in arrays], axis=0)
            arrays = [_pad_to(a, (len(a), *target[1:]), t.pad_value) for a in arrays]
        batch[t.name] = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    return batch, rows, lengths


def split_outputs(spec: ModelSpec, outputs: Feeds, rows: Sequence[int], lengths: dict[str, list[int]]) -> list[Feeds]:
    """Each request's rows of every output, trimmed to the request's own length."""
    results: list[Feeds] = []
    start = 0
    for n in rows:
        mine: Feeds = {}
        for t in spec.outputs:
            a = outputs[t.name][start:start + n]
            if t.length_from is not None:
                kind, name = t.length_from.split(":", 1)
                if kind == "input":
                    row_len = lengths[name][start:start + n]
                else:
                    row_len = [int(v) for v in outputs[name][start:start + n].reshape(n, -1)[:, 0]]
                a = a[..., : max(row_len) * t.length_scale]
            mine[t.name] = np.ascontiguousarray(a)
        results.append(mine)
        start += n
    return results


class BatchRunner:
    """Runs a stage's graph over a batch of requests; `run_graph` maps batched feeds to outputs."""

    def __init__(self, spec: ModelSpec, run_graph: Callable[[Feeds], Feeds], dims: dict[str, int] | None = None,
                 bounds: dict[str, list] | None = None, max_batch_size: int | None = None):
        if not spec.batched:
            raise ValueError(f"{spec.name} takes no batch axis")
        self.spec = spec
        # rows a graph call takes at most: the served config's (Triton never hands over more), the spec's by default
        self.max_batch_size = max_batch_size or spec.max_batch_size
        self.run_graph = run_graph
        self.dims = dict(dims or {})  # the spec's preset dims as the served graph has them
        self.bounds = dict(bounds or {})  # input values allowed (the export's manifest: input_bounds)

    def run(self, requests: Sequence[Feeds]) -> list[Feeds | Exception]:
        """Outputs per request; a request that does not fit the spec gets its own error."""
        results: list[Feeds | Exception] = [None] * len(requests)  # type: ignore[list-item]
        good = []
        for i, feeds in enumerate(requests):
            try:
                check_request(self.spec, feeds, self.dims, self.bounds)
                good.append(i)
            except ValueError as e:
                results[i] = detached(e)
        if not good:
            return results
        for start in range(0, len(good), self.max_batch_size):
            chunk = good[start:start + self.max_batch_size]
            batch, rows, lengths = stack_requests(self.spec, [requests[i] for i in chunk])
            try:
                outputs = self.run_graph(batch)
                for i, out in zip(chunk, split_outputs(self.spec, outputs, rows, lengths)):
                    results[i] = out
            except Exception as e:
                if len(chunk) == 1:
                    results[chunk[0]] = RuntimeError(f"{self.spec.name}: {e}")
                    continue
                # one request's fault must not fail the others: each runs again on its own and hears its own fate
                for i in chunk:
                    results[i] = self.run([requests[i]])[0]
        return results


def onnx_session(path: Path, threads: int):
    """An ONNX Runtime CPU session that does not spin idle threads (several models share few cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: not a warning per initializer the exporter left unused
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def graph_dims(spec: ModelSpec, session) -> dict[str, int]:
    """The spec's preset dims (names that are not dynamic axes) as the ONNX graph's inputs fix them."""
    axes = {a.name for a in spec.axes}
    shapes = {i.name: i.shape for i in session.get_inputs()}
    dims = {}
    for t in spec.inputs:
        shape = shapes.get(t.name, [])[int(spec.batched):]
        for d, size in zip(t.dims, shape):
            if isinstance(d, str) and d not in axes and isinstance(size, int):
                dims[d] = size
    return dims


def onnx_runner(spec: ModelSpec, path: Path, threads: int = 1) -> BatchRunner:
    session = onnx_session(path, threads)
    names = [t.name for t in spec.outputs]

    def run_graph(feeds: Feeds) -> Feeds:
        return dict(zip(names, session.run(names, feeds)))

    return BatchRunner(spec, run_graph, graph_dims(spec, session))
