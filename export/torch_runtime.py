"""Stage models on CUDA with PyTorch: the runtime for GPU hosts without TensorRT (`configs/gpu.pbtxt`).

The same module definitions the ONNX graphs are exported from, cast to the
spec's GPU precision, run under `torch.inference_mode`;
requests are batched by `ensemble.batching` exactly as on the CPU variant.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ensemble.batching import BatchRunner, Feeds
from export.graphs import build_graphs
from export.presets import Preset
from export.spec import ModelSpec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_graph(spec: ModelSpec, preset: Preset, seed: int, device: str, precision: str) -> torch.nn.Module:
    if precision not in DTYPES:
        raise ValueError(f"{spec.name}: unknown precision {precision!r}; choose one of {sorted(DTYPES)}")
    graph = build_graphs(preset, seed, [spec.name])[spec.name]
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


def _to_numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    return x.to(dtype=getattr(torch, dtype)).cpu().numpy()


def torch_runner(spec: ModelSpec, preset: Preset, seed: int, device: str, precision: str,
                 sessions: bool = False):
    """A BatchRunner for the stage; sessions=True (a config with the spec's session inputs): the session-keyed
    GPU cache of export/llm_sessions.py, which serves stateless requests through the BatchRunner."""
    graph = load_graph(spec, preset, seed, device, precision)
    runner = BatchRunner(spec, TorchStage(spec, graph, device, precision))
    if not sessions:
        return runner
    from export.llm_sessions import SessionLLM

    return SessionLLM(spec, graph, device, runner)
