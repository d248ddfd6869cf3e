"""A built plan against ONNX Runtime on fresh inputs (needs a CUDA GPU and the TensorRT that built it),
and the result recorded in the plan's sidecar."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.contract.presets import Preset
from export.contract.spec import ModelSpec

# check_plan: max |plan - onnxruntime| / max |onnxruntime| per float output.
PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 1e-2, "int8": 1e-1}

from export.toolchain.trt_build import (
    BuilderUnavailable,
    Log,
    _logger,
    _write_atomic,
    load_trt,
    sidecar_path,
    trt_kind,
    trt_version,
)


@dataclass
class ParityResult:
    model: str
    ok: bool
    skipped: bool
    reason: str = ""
    errors: dict[str, float] = field(default_factory=dict)  # case/output -> max relative error
    tolerance: float = 0.0

    def line(self) -> str:
        if self.skipped:
            return f"parity skipped: {self.reason}"
        errs = ", ".join(f"{k} {v:.1e}" for k, v in self.errors.items())
        verdict = "ok" if self.ok else f"FAIL {self.reason}".rstrip()
        return f"parity vs onnxruntime: {errs} ({verdict}, limit {self.tolerance:.0e})"


def _parity_cases(spec: ModelSpec) -> list[tuple[str, int, dict[str, int]]]:
    """(label, batch, sizes): sizes other than the export example's, and the profile's minimum."""
    mid = {a.name: max(a.min, min(a.max, a.opt // 2 + 3)) for a in spec.axes}
    cases = [("fresh", 3 if spec.batched else 1, mid)]
    if spec.axes or spec.batched:
        cases.append(("min", 1, {a.name: a.min for a in spec.axes}))
    return cases


def check_plan(plan_path: Path, onnx_path: Path, spec: ModelSpec, preset: Preset, *,
               precision: str | None = None, trt_module=None, log: Log = print) -> ParityResult:
    """Run the plan and ONNX Runtime on the same fresh inputs and compare every output.

    Needs a CUDA GPU (torch.cuda) and the runtime of the TensorRT that built the plan;
    without them the result says it skipped and why. Tolerances: max |plan - ort| / max |ort|
    of each float output <= PARITY_TOLERANCE[precision]; integer outputs must be equal.
    """
    plan_path, onnx_path = Path(plan_path), Path(onnx_path)
    try:
        side = json.loads(sidecar_path(plan_path).read_text())
    except (OSError, json.JSONDecodeError):
        side = {}
    precision = precision or side.get("key", {}).get("precision", "fp32")
    applied = " ".join(side.get("applied", []))
    if "flag absent" in applied:  # TensorRT-RTX: the plan follows the graph's fp32 types
        precision = "fp32"
    tol = PARITY_TOLERANCE[precision]
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        return ParityResult(spec.name, True, True, "no CUDA GPU here (torch.cuda unavailable): a plan runs only on a GPU")
    built_by = side.get("builder")
    try:
        trt = trt_module if trt_module is not None else load_trt(built_by or "auto")[0]
    except BuilderUnavailable as e:
        return ParityResult(spec.name, True, True, f"the {built_by or 'TensorRT'} runtime is not importable: {e}")
    if built_by and trt_kind(trt) != built_by:
        return ParityResult(spec.name, True, True, f"plan built by {built_by}; {trt_version(trt)} cannot run it")

    import onnxruntime as ort

    from export.toolchain.trt_calibration import example_feeds

    logger = _logger(trt, log)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        return ParityResult(spec.name, False, False, f"the plan did not deserialize: {logger.errors}", tolerance=tol)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    errors: dict[str, float] = {}
    failures: list[str] = []
    for label, batch, sizes in _parity_cases(spec):
        feeds = example_feeds(spec, preset, batch=batch, seed=1, **sizes)
        ref = dict(zip([t.name for t in spec.outputs], session.run([t.name for t in spec.outputs], feeds)))
        got = _run_engine(trt, engine, feeds, [t.name for t in spec.outputs])
        for t in spec.outputs:
            r, g = ref[t.name], got[t.name]
            tag = f"{label}/{t.name}"
            if r.shape != g.shape:
                failures.append(f"{tag}: plan shape {g.shape} != onnxruntime {r.shape}")
                errors[tag] = float("inf")
            elif np.issubdtype(r.dtype, np.integer) or r.dtype == np.bool_:
                bad = int(np.count_nonzero(r != g.astype(r.dtype)))
                errors[tag] = float(bad)
                if bad:
                    failures.append(f"{tag}: {bad} of {r.size} integer values differ")
            else:
                scale = float(np.max(np.abs(r))) if r.size else 0.0
                err = float(np.max(np.abs(g.astype(np.float64) - r))) / (scale or 1.0) if r.size else 0.0
                errors[tag] = err
                if not err <= tol:
                    failures.append(f"{tag}: {err:.1e} > {tol:.0e}")
    return ParityResult(spec.name, not failures, False, "; ".join(failures), errors, tol)


def _torch_dtype(trt, dt):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool, trt.uint8: torch.uint8}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dt]


def _output_allocator(trt):
    """An IOutputAllocator for outputs whose shape is known only after execution (tts: mel frames)."""
    import torch

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, torch.Tensor] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            buf = self.buffers.get(tensor_name)
            if buf is None or buf.numel() < size:
                buf = self.buffers[tensor_name] = torch.empty(max(int(size), 1), dtype=torch.uint8, device="cuda")
            return buf.data_ptr()

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

    return OutputAllocator()


def _run_engine(trt, engine, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    import torch

    context = engine.create_execution_context()
    keep = []
    for name, a in feeds.items():
        x = torch.from_numpy(np.ascontiguousarray(a)).to("cuda", _torch_dtype(trt, engine.get_tensor_dtype(name)))
        keep.append(x)
        context.set_input_shape(name, tuple(x.shape))
        context.set_tensor_address(name, x.data_ptr())
    allocator = None
    fixed: dict[str, torch.Tensor] = {}
    for name in outputs:
        shape = tuple(context.get_tensor_shape(name))
        if any(d < 0 for d in shape):  # data-dependent: the allocator learns the shape during execution
            allocator = allocator or _output_allocator(trt)
            context.set_output_allocator(name, allocator)
        else:
            fixed[name] = torch.empty(shape, dtype=_torch_dtype(trt, engine.get_tensor_dtype(name)), device="cuda")
            context.set_tensor_address(name, fixed[name].data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("execute_async_v3 failed")
    stream.synchronize()
    out = {name: t.cpu().numpy() for name, t in fixed.items()}
    for name in outputs:
        if name not in out:
            dt = _torch_dtype(trt, engine.get_tensor_dtype(name))
            shape = allocator.shapes[name]
            n = int(np.prod(shape))
            out[name] = allocator.buffers[name].view(dt)[:n].reshape(shape).cpu().numpy()
    return out


def _recorded_parity(plan_path: Path) -> dict | None:
    """The parity result the sidecar holds, unless there is none or it was skipped."""
    try:
        parity = json.loads(sidecar_path(plan_path).read_text()).get("parity")
    except (OSError, json.JSONDecodeError):
        return None
    return parity if parity and not parity.get("skipped") else None


def _record_parity(plan_path: Path, report: ParityResult) -> None:
    path = sidecar_path(plan_path)
    try:
        side = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    side["parity"] = {"ok": report.ok, "skipped": report.skipped, "line": report.line(), "errors": report.errors}
    mtime = plan_path.stat().st_mtime_ns
    _write_atomic(path, json.dumps(side, indent=2).encode())
    os.utime(plan_path, ns=(mtime, mtime))  # the plan's own time is unchanged
