"""Stage models on CUDA with PyTorch: the runtime for GPU hosts without TensorRT (`configs/gpu.pbtxt`).

The same module definitions the ONNX graphs are exported from, cast to the
spec's GPU precision, run under `torch.inference_mode`;
requests are batched by `export.runtime.batching` exactly as on the CPU variant. Fixed shapes
that recur (the spec's `gpu_graphs`) replay CUDA graphs; the LLM keeps its sessions'
caches on the GPU (export/runtime/llm_sessions.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from export.contract.presets import Preset
from export.contract.spec import ModelSpec
from export.runtime.batching import BatchRunner, Feeds
from export.runtime.tts_graphs import GraphedTts
from export.toolchain.graphs import build_graphs

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def prefer_blocking_sync(device_index: int) -> bool:
    """Make this process's CUDA context block on a synchronize instead of spinning a core.

    By default the CUDA runtime spins while it waits for the GPU when a host has more cores than CUDA
    contexts: with a dozen stage processes each waiting on the GPU, that burns the cores the
    orchestrators need (BENCHMARKS.md, host load). Must run before the process first touches the device;
    False where the driver refused.
    """
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    dev = ctypes.c_int()
    set_flags = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
    blocking_sync = 0x04  # CU_CTX_SCHED_BLOCKING_SYNC
    return (cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(dev), device_index) == 0
            and set_flags(dev, blocking_sync) == 0)


def load_graph(spec: ModelSpec, preset: Preset, seed: int, device: str, precision: str,
               weights: Path | None = None) -> torch.nn.Module:
    """The stage's module: the preset's seeded random weights, or the real ones the export saved in `weights`."""
    if precision not in DTYPES:
        raise ValueError(f"{spec.name}: unknown precision {precision!r}; choose one of {sorted(DTYPES)}")
    graph = build_graphs(preset, seed, [spec.name])[spec.name]
    if weights is not None:
        from safetensors.torch import load_model

        load_model(graph, str(weights), strict=True)  # a key missing or left over is an error
    return graph.to(device=device, dtype=DTYPES[precision]).eval()


class TorchStage:
    """Batched feeds (numpy) -> graph on the GPU -> outputs (numpy, the spec's dtypes)."""

    def __init__(self, spec: ModelSpec, graph: torch.nn.Module, device: str, precision: str):
        self.spec = spec
        self.graph = graph
        self.device = torch.device(device)
        self.dtype = DTYPES[precision]
        # No cuDNN autotuning: chunk lengths and batch sizes vary call to call, and every new shape
        # would be benchmarked again (seconds of stalls under load).
        torch.backends.cudnn.benchmark = False

    def __call__(self, feeds: Feeds) -> Feeds:
        with torch.inference_mode():
            args = []
            for t in self.spec.inputs:
                x = torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(self.device, non_blocking=True)
                args.append(x.to(self.dtype) if x.is_floating_point() else x)
            out = self.graph(*args)
            out = out if isinstance(out, Sequence) else (out,)
            return {t.name: _to_numpy(o, t.numpy_dtype) for t, o in zip(self.spec.outputs, out)}


GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64)


def graph_batches(spec: ModelSpec, max_batch_size: int | None = None) -> list[int]:
    """The batch buckets a stage's CUDA graphs are captured for: GRAPH_BATCHES up to max_batch_size (the served
    config's), and one bucket for that size itself where it falls between; the spec's size by default."""
    top = max_batch_size or spec.max_batch_size
    return sorted({b for b in GRAPH_BATCHES if b < top} | {top})


class GraphedStage:
    """TorchStage with CUDA graphs for the spec's fixed shapes (`ModelSpec.gpu_graphs`): one graph per batch
    bucket and size of the dynamic axis. A batch of that size is copied into the graph's static inputs (rows
    past the batch keep earlier inputs: every row is computed independently, and only the batch's rows are
    read back); any other shape runs eagerly. dims: the preset's values of the spec's named dims
    (`ModelSpec.preset_dims`)."""

    def __init__(self, stage: TorchStage, dims: dict[str, int] | None = None, max_batch_size: int | None = None):
        self.stage = stage
        self.preset_dims = dict(dims or {})
        spec = stage.spec
        self.axis = next((a.name for a in spec.axes), None)
        self.batches = graph_batches(spec, max_batch_size)
        self.graphs: dict[tuple[int, int | None], tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}
        self.inputs: dict[int | None, list[torch.Tensor]] = {}
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(stage.device)
        stream.wait_stream(torch.cuda.current_stream(stage.device))
        # the captured shapes are fixed: cuDNN may time its convolution algorithms once, in the warm-up run
        benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
        with torch.inference_mode(), torch.cuda.stream(stream):
            for size in spec.gpu_graphs:
                shapes = [self._dims(t, size) for t in spec.inputs]
                self.inputs[size] = [torch.zeros((self.batches[-1], *d), device=stage.device,
                                                 dtype=stage.dtype if t.dtype.startswith("FP") else torch.int64)
                                     for t, d in zip(spec.inputs, shapes)]
                for b in self.batches:
                    args = [x[:b] for x in self.inputs[size]]
                    self._run(args)  # warm-up outside the graph
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=pool, stream=stream):
                        out = self._run(args)
                    self.graphs[(b, size)] = (g, out)
        torch.backends.cudnn.benchmark = benchmark
        torch.cuda.current_stream(stage.device).wait_stream(stream)
        torch.cuda.synchronize(stage.device)

    def _dims(self, t, size: int | None) -> list[int]:
        spec = self.stage.spec
        dims = []
        for d in t.dims:
            if isinstance(d, str) and d == self.axis:
                dims.append(size)
            elif isinstance(d, int):
                dims.append(d)
            elif d in self.preset_dims:
                dims.append(self.preset_dims[d])
            else:
                raise ValueError(f"{spec.name}: input {t.name!r} dim {d!r} is neither fixed, a preset dim nor the graphed axis")
        return dims

    def _run(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = self.stage.graph(*args)
        return tuple(out) if isinstance(out, Sequence) else (out,)

    def replay(self, args: Sequence[torch.Tensor], size: int | None = None) -> tuple[torch.Tensor, ...] | None:
        """The graph of this batch (and dynamic axis size) replayed on `args` (the spec's inputs, batch first, on
        any device): views of the graph's static outputs, valid until its next replay; None when no graph fits."""
        n = args[0].shape[0]
        b = next((x for x in self.batches if x >= n), None)
        if b is None or (b, size) not in self.graphs:
            return None
        for x, a in zip(self.inputs[size], args):
            x[:n].copy_(a)
        g, out = self.graphs[(b, size)]
        g.replay()
        return tuple(o[:n] for o in out)

    def __call__(self, feeds: Feeds) -> Feeds:
        spec = self.stage.spec
        first = feeds[spec.inputs[0].name]
        size = None
        if self.axis is not None:
            t0 = spec.inputs[0]
            size = first.shape[1 + list(t0.dims).index(self.axis)] if self.axis in t0.dims else None
        with torch.inference_mode():
            out = self.replay([torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in spec.inputs], size)
            if out is None:
                return self.stage(feeds)
            return {t.name: _to_numpy(o, t.numpy_dtype) for t, o in zip(spec.outputs, out)}


def graphed_stage(stage: TorchStage, dims: dict[str, int], max_batch_size: int | None = None):
    """The stage replaying its CUDA graphs: one whose length comes from its values (tts) in bucketed halves
    around that length (export/runtime/tts_graphs.py), every other stage at its spec's fixed shapes (GraphedStage);
    batches up to max_batch_size (the served config's; the spec's by default)."""
    if stage.spec.length_from_values:
        return GraphedTts(stage, graph_batches(stage.spec, max_batch_size), stage.spec.gpu_graphs)
    return GraphedStage(stage, dims, max_batch_size)


def graphed_module(spec: ModelSpec, graph: torch.nn.Module, device: str, precision: str, dims: dict[str, int]):
    """`graph` as a function of device tensors that replays the spec's CUDA graphs where a batch fits (eager
    otherwise): for code in the GPU process that calls a stage's module itself (ensemble/frames_torch.py)."""
    graphed = GraphedStage(TorchStage(spec, graph, device, precision), dims)

    def call(*args: torch.Tensor):
        out = graphed.replay(args)
        return graph(*args) if out is None else out[0] if len(out) == 1 else out

    return call


def _to_numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    return x.to(dtype=getattr(torch, dtype)).cpu().numpy()


def torch_runner(spec: ModelSpec, preset: Preset, seed: int, device: str, precision: str,
                 sessions: bool = False, cuda_graphs: bool = False, weights: Path | None = None,
                 max_batch_size: int | None = None):
    """A BatchRunner for the stage; sessions=True (a config with the spec's session inputs): the session-keyed
    GPU caches of export/runtime/llm_sessions.py (llm) or export/runtime/asr_sessions.py (asr_decoder), which serve stateless
    requests through the BatchRunner;
    cuda_graphs=True: the spec's fixed shapes replay CUDA graphs (GraphedStage); weights: see load_graph;
    max_batch_size: the served config's (graph calls and CUDA graphs up to it; the spec's by default). A session
    config's counts its sessions' rows: its stateless graph keeps the spec's."""
    graph = load_graph(spec, preset, seed, device, precision, weights)
    stage = TorchStage(spec, graph, device, precision)
    dims = spec.preset_dims(preset)
    rows = None if sessions else max_batch_size
    runner = BatchRunner(spec, graphed_stage(stage, dims, rows) if cuda_graphs and spec.gpu_graphs else stage, dims,
                         max_batch_size=rows)
    if not sessions:
        return runner
    if spec.name == "asr_decoder":
        from export.runtime.asr_sessions import session_asr

        return session_asr(spec, graph, device, runner)
    from export.runtime.llm_sessions import SessionLLM

    return SessionLLM(spec, graph, device, runner)
