"""Build a TensorRT plan per stage model from its ONNX graph (`python -m export.trt`).

    python -m export.trt --preset base                  # GPU host with TensorRT (NGC 24.10: TensorRT 10.5)
    python -m export.trt --preset tiny --builder tensorrt-rtx                     # CPU-only AOT gate
    python -m export.trt --preset base --builder tensorrt-rtx --out-dir build/rtx_plans

The ONNX graphs come from `python -m export --preset ...` (`<repository>/<model>/1/model.onnx`).
With full TensorRT the plan lands next to them as `<repository>/<model>/1/model.plan`, where
Triton's TensorRT backend loads it. TensorRT-RTX (pip wheels, builds ahead of time on a machine
without a GPU) writes to `build/rtx_plans/<model>/1/` unless `--out-dir` says otherwise: its plans
are for the TensorRT-RTX runtime, not for Triton's TensorRT backend, so they never go into the
repository by default.

One optimization profile per model, from `export.spec.profile_shapes(spec, preset)`. A build is
skipped when the plan is newer than its ONNX graph and the sidecar `model.plan.json` records the
same TensorRT version, GPU (name and compute capability, or "cpu-aot"), precision, profile and
ONNX sha256. After each build the plan is compared with ONNX Runtime on fresh inputs where a GPU
and the TensorRT runtime that built it are present (`check_plan`); elsewhere that says it skipped.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export import spec as specs
from export.presets import PRESETS, Preset, get_preset
from export.spec import ModelSpec, profile_shapes

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = REPO / "model_repository"
DEFAULT_RTX_OUT_DIR = REPO / "build" / "rtx_plans"
DEFAULT_TIMING_CACHE = REPO / "build" / "trt_timing.cache"
DEFAULT_CALIBRATION_DIR = REPO / "build" / "trt_calibration"
STAGES = [s.name for s in specs.STAGES + specs.INPUT_STAGES]
BUILDERS = ("auto", "tensorrt", "tensorrt-rtx")
PRECISIONS = ("fp16", "bf16", "fp32", "int8")
# check_plan: max |plan - onnxruntime| / max |onnxruntime| per float output.
PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 1e-2, "int8": 1e-1}
SIDECAR_SUFFIX = ".json"  # model.plan -> model.plan.json

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """The ONNX graph did not parse or the builder refused it; the message holds every error."""


class BuilderUnavailable(RuntimeError):
    """No TensorRT module of the kind asked for can be imported here."""


# ---------------------------------------------------------------- the TensorRT module

def load_trt(builder: str = "auto"):
    """(module, kind) for `builder`: auto = full TensorRT when importable, else TensorRT-RTX."""
    if builder not in BUILDERS:
        raise ValueError(f"unknown builder {builder!r}; choose one of {BUILDERS}")
    errors = []
    for kind in (("tensorrt", "tensorrt-rtx") if builder == "auto" else (builder,)):
        try:
            return _import(kind), kind
        except Exception as e:  # ImportError, or the PyPI stub's own failure
            errors.append(f"{kind}: {type(e).__name__}: {e}")
    raise BuilderUnavailable(
        "no TensorRT builder importable (" + "; ".join(errors) + ").\n"
        "  full TensorRT: run on a GPU host in nvcr.io/nvidia/pytorch:24.10-py3 (TensorRT 10.5, `import tensorrt`);\n"
        "  TensorRT-RTX (CPU-only ahead-of-time builds): pip install -r requirements-trt.txt")


def _import(kind: str):
    if kind == "tensorrt":
        return importlib.import_module("tensorrt")
    importlib.import_module("tensorrt_rtx_libs")  # loads the shared libraries the bindings need
    for name in ("tensorrt_rtx_bindings", "tensorrt_rtx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("tensorrt_rtx_libs imported but neither tensorrt_rtx_bindings nor tensorrt_rtx")


def trt_kind(trt) -> str:
    return "tensorrt-rtx" if "rtx" in trt.__name__ else "tensorrt"


def trt_version(trt) -> str:
    return f"{trt_kind(trt)} {trt.__version__}"


def _logger(trt, log: Log, verbose: bool = False):
    """A TensorRT logger that prints warnings (each once) and keeps every error for the exception."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._seen: set[str] = set()

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log(f"    [TRT] error: {msg}")
            elif severity == trt.ILogger.Severity.WARNING or verbose:
                if msg not in self._seen:
                    self._seen.add(msg)
                    log(f"    [TRT] {'warning: ' if severity == trt.ILogger.Severity.WARNING else ''}{msg}")

    return Logger()


# ---------------------------------------------------------------- identity of a build

def gpu_identity() -> dict[str, str]:
    """The GPU a build targets (torch.cuda device 0), or "cpu-aot" where there is none."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:
        pass
    return {"gpu": "cpu-aot", "compute_capability": "cpu-aot"}


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """sha256 of a file (remembered per path, size and mtime: the base LLM's weights are ~2 GB)."""
    st = Path(path).stat()
    memo = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if memo in _SHA_MEMO:
        return _SHA_MEMO[memo]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _SHA_MEMO[memo] = h.hexdigest()
    return _SHA_MEMO[memo]


def onnx_files(onnx_path: Path) -> list[Path]:
    """The graph and its external-data file(s) (`model.onnx.data` as onnx_export writes it)."""
    return [onnx_path] + sorted(p for p in onnx_path.parent.glob(onnx_path.name + ".*") if p.is_file())


def sidecar_path(plan_path: Path) -> Path:
    return plan_path.with_name(plan_path.name + SIDECAR_SUFFIX)


def build_key(trt, onnx_path: Path, spec: ModelSpec, preset: Preset, precision: str,
              compute_capabilities: list[str] | None = None) -> dict:
    """What a plan depends on: a plan whose sidecar records another key is rebuilt."""
    key = {
        "model": spec.name,
        "preset": preset.name,
        "tensorrt_version": trt_version(trt),
        **gpu_identity(),
        "precision": precision,
        "onnx_sha256": {p.name: sha256_file(p) for p in onnx_files(onnx_path)},
        "profile": {k: [list(s) for s in v] for k, v in profile_shapes(spec, preset).items()},
    }
    if compute_capabilities:
        key["target_compute_capabilities"] = list(compute_capabilities)
    return key


def up_to_date(plan_path: Path, onnx_path: Path, key: dict) -> tuple[bool, str]:
    """(skip?, why): the plan is newer than every ONNX file and the sidecar records `key`."""
    if not plan_path.exists() or plan_path.stat().st_size == 0:
        return False, "no plan yet"
    plan_time = plan_path.stat().st_mtime_ns
    newer = [p.name for p in onnx_files(onnx_path) if p.stat().st_mtime_ns > plan_time]
    if newer:
        return False, f"{', '.join(newer)} newer than the plan"
    try:
        recorded = json.loads(sidecar_path(plan_path).read_text()).get("key")
    except (OSError, json.JSONDecodeError):
        return False, f"no readable {sidecar_path(plan_path).name}"
    if recorded != key:
        changed = sorted(k for k in set(key) | set(recorded or {}) if (recorded or {}).get(k) != key.get(k))
        return False, f"changed since the last build: {', '.join(changed)}"
    return True, "plan newer than the ONNX graph and built with the same TensorRT, GPU, precision and graph"


def _write_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- build

@dataclass
class BuildResult:
    model: str
    plan_path: Path
    skipped: bool
    reason: str
    seconds: float = 0.0
    plan_bytes: int = 0
    applied: list[str] = field(default_factory=list)


def parse_onnx(trt, onnx_path: Path, logger):
    """(builder, network, parser) with `onnx_path` parsed; BuildError lists every parser error."""
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch: flags 0 (STRONGLY_TYPED is not used).
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data (model.onnx.data) relative to the graph's folder.
    if not parser.parse_from_file(str(onnx_path)):
        raise BuildError(f"{onnx_path}: the ONNX parser failed with {parser.num_errors} error(s):\n"
                         + "\n".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors)))
    return builder, network, parser


def _parser_error(e) -> str:
    def get(name):
        try:
            return getattr(e, name)()
        except Exception:
            return None

    where = f"node {get('node')}"
    if get("node_name"):
        where += f" {get('node_name')!r}"
    if get("node_operator"):
        where += f" ({get('node_operator')})"
    return f"  - {where}: {get('desc')} [code {get('code')}; {get('file')}:{get('line')} {get('func')}]"


def network_io(network) -> dict[str, list[tuple[str, str, tuple[int, ...]]]]:
    """The parsed network's inputs and outputs: (name, dtype, shape with -1 for dynamic dims)."""
    def io(tensors):
        return [(t.name, str(t.dtype).split(".")[-1], tuple(t.shape)) for t in tensors]

    return {"inputs": io(network.get_input(i) for i in range(network.num_inputs)),
            "outputs": io(network.get_output(i) for i in range(network.num_outputs))}


def _check_io(network, spec: ModelSpec) -> None:
    io = network_io(network)
    names = ([n for n, _, _ in io["inputs"]], [n for n, _, _ in io["outputs"]])
    want = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
    if names != want:
        raise BuildError(f"{spec.name}: graph inputs/outputs {names} differ from the spec's {want}")


def build_engine(onnx_path: Path, spec: ModelSpec, preset: Preset, plan_path: Path, *,
                 precision: str = "fp16", workspace_gb: float = 4, timing_cache: Path | None = None,
                 calibrator=None, trt_module=None, log: Log = print, force: bool = False,
                 compute_capabilities: list[str] | None = None, verbose: bool = False,
                 max_workspace_retries: int = 2) -> BuildResult:
    """Build `plan_path` from `onnx_path` (skipped when up to date, see `up_to_date`).

    precision: fp16 / bf16 set the builder flag where the module has it (full TensorRT);
    TensorRT-RTX has none: its precision follows the ONNX graph's types, and the result says so.
    int8 needs a calibrator (`export.trt_calibration.entropy_calibrator`) and full TensorRT.
    compute_capabilities: TensorRT-RTX targets such as ["SM86", "SM89"] (default: the builder's own).
    When the builder fails for want of workspace it is retried with a larger one (recorded in `applied`).
    """
    trt = trt_module if trt_module is not None else load_trt("auto")[0]
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if not onnx_path.exists():
        raise FileNotFoundError(f"{onnx_path} not found: run `python -m export --preset {preset.name}` first")
    key = build_key(trt, onnx_path, spec, preset, precision, compute_capabilities)
    if not force:
        fresh, why = up_to_date(plan_path, onnx_path, key)
        if fresh:
            return BuildResult(spec.name, plan_path, True, why, plan_bytes=plan_path.stat().st_size)

    t0 = time.perf_counter()
    logger = _logger(trt, log, verbose)
    builder, network, parser = parse_onnx(trt, onnx_path, logger)
    _check_io(network, spec)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    applied = [f"workspace {workspace_gb:g} GiB"]

    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(spec, preset).items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise BuildError(f"{spec.name}: the optimization profile was refused: {logger.errors}")

    applied += _set_precision(trt, config, builder, precision, calibrator, log)
    if compute_capabilities:
        applied.append(_set_compute_capabilities(trt, config, compute_capabilities))

    cache_note, cache = _load_timing_cache(trt, config, timing_cache)
    applied.append(cache_note)

    serialized = builder.build_serialized_network(network, config)
    for _ in range(max_workspace_retries):
        need = _workspace_shortfall(logger.errors, workspace_gb)
        if serialized is not None or need is None:
            break
        # TensorRT-RTX counts the activations at the profile's max shapes against the workspace
        # (HiFi-GAN base at 16 x 1024 frames: ~4.5 GiB); grow it rather than fail, and say so.
        log(f"    {spec.name}: the builder asked for {need / (1 << 30):.2f} GiB, over the {workspace_gb:g} GiB"
            f" workspace; retrying with {_gib_above(need):g} GiB")
        applied.append(f"workspace grown {workspace_gb:g} -> {_gib_above(need):g} GiB"
                       f" (the builder asked for {need / (1 << 30):.2f} GiB)")
        workspace_gb = _gib_above(need)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        logger.errors.clear()
        serialized = builder.build_serialized_network(network, config)
    if serialized is None or serialized.nbytes == 0:
        raise BuildError(f"{spec.name}: build_serialized_network failed:\n"
                         + ("\n".join(f"  - {e}" for e in logger.errors) or "  (the builder logged no error)"))
    sidecar_path(plan_path).unlink(missing_ok=True)  # a plan never stands beside another build's record
    _write_atomic(plan_path, memoryview(serialized))
    seconds = time.perf_counter() - t0
    if cache is not None:
        _save_timing_cache(trt, config, timing_cache)
    sidecar = {"key": key, "builder": trt_kind(trt), "applied": applied, "build_seconds": round(seconds, 2),
               "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "plan_bytes": serialized.nbytes,
               "workspace_gb": workspace_gb, "io": network_io(network)}
    _write_atomic(sidecar_path(plan_path), json.dumps(sidecar, indent=2).encode())
    return BuildResult(spec.name, plan_path, False, "built", seconds, serialized.nbytes, applied)


def _workspace_shortfall(errors: list[str], workspace_gb: float) -> int | None:
    """Bytes the builder asked for beyond the workspace limit, from its OutOfMemory error, if any."""
    for e in errors:
        m = re.search(r"OutOfMemory \(Requested size was (\d+) bytes", e)
        if m and int(m.group(1)) > workspace_gb * (1 << 30):
            return int(m.group(1))
    return None


def _gib_above(nbytes: int) -> float:
    """A workspace limit with room above `nbytes`: the next whole GiB plus 1."""
    return float(-(-nbytes // (1 << 30)) + 1)


def _set_precision(trt, config, builder, precision: str, calibrator, log: Log) -> list[str]:
    flags = trt.BuilderFlag
    applied = []
    if precision == "fp32":
        if hasattr(flags, "TF32") and config.get_flag(flags.TF32):
            config.clear_flag(flags.TF32)  # plain fp32 math, so the parity limit of 1e-3 holds
            applied.append("TF32 off")
        return applied + ["fp32"]
    wanted = {"fp16": ["FP16"], "bf16": ["BF16"], "int8": ["INT8", "FP16"]}[precision]
    missing = [f for f in wanted if not hasattr(flags, f)]
    if precision == "int8":
        if "INT8" in missing or not hasattr(trt, "IInt8EntropyCalibrator2"):
            raise BuildError(f"{trt_version(trt)} has no INT8 calibration (BuilderFlag.INT8 /"
                             " IInt8EntropyCalibrator2): build int8 with full TensorRT on a GPU host")
        if calibrator is None:
            raise BuildError("precision int8 needs a calibrator (export.trt_calibration.entropy_calibrator)")
        config.int8_calibrator = calibrator
        shapes = getattr(calibrator, "shapes", None)
        if shapes and hasattr(config, "set_calibration_profile"):
            cal = builder.create_optimization_profile()
            for name, shape in shapes.items():
                cal.set_shape(name, shape, shape, shape)
            config.set_calibration_profile(cal)
        applied.append("INT8 entropy calibration")
    for f in wanted:
        if hasattr(flags, f):
            config.set_flag(getattr(flags, f))
            applied.append(f"{f} flag")
    if missing:  # TensorRT-RTX: no reduced-precision flags; the plan computes in the graph's own types
        applied.append(f"{'/'.join(missing)} flag absent in {trt_version(trt)}: not {precision},"
                       f" precision follows the ONNX graph's types (fp32)")
    return applied


def _set_compute_capabilities(trt, config, names: list[str]) -> str:
    if not hasattr(config, "set_compute_capability"):
        raise BuildError(f"{trt_version(trt)} cannot target compute capabilities {names} (TensorRT-RTX can)")
    config.num_compute_capabilities = len(names)
    for i, n in enumerate(names):
        cc = getattr(trt.ComputeCapability, n.upper(), None)
        if cc is None or not config.set_compute_capability(cc, i):
            raise BuildError(f"unknown or refused compute capability {n!r};"
                             f" {trt.__name__} knows {list(trt.ComputeCapability.__members__)}")
    return f"targets {', '.join(n.upper() for n in names)}"


def _load_timing_cache(trt, config, path: Path | None):
    """(note, cache): the persisted timing cache set on `config` (a new one if absent or mismatched)."""
    if path is None:
        return "no timing cache", None
    if trt_kind(trt) == "tensorrt-rtx":
        return "no timing cache (a no-op in TensorRT-RTX, which picks kernels on the target GPU)", None
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = config.create_timing_cache(data)
        if config.set_timing_cache(cache, False):
            return (f"timing cache {path} ({len(data)} bytes loaded)" if data else f"new timing cache {path}"), cache
        cache = config.create_timing_cache(b"")  # recorded on another GPU or TensorRT version
        config.set_timing_cache(cache, False)
    return f"timing cache {path} did not match this GPU/TensorRT: started a new one", cache


def _save_timing_cache(trt, config, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        data = config.get_timing_cache().serialize()
    _write_atomic(Path(path), memoryview(data))


# ---------------------------------------------------------------- parity

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
    from export.trt_calibration import example_feeds

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


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.trt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model sizes (default: tiny)")
    ap.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                    help="model repository holding <model>/1/model.onnx (default: model_repository)")
    ap.add_argument("--models", nargs="+", choices=STAGES, default=STAGES, help="build only these stages")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp16", help="default: fp16")
    ap.add_argument("--int8-calibration", type=int, default=32, metavar="N",
                    help="with --precision int8: calibration batches per model (default: 32)")
    ap.add_argument("--calibration-data", type=Path, default=None, metavar="DIR",
                    help="with --precision int8: real inputs, DIR/<model>/*.npz (one batch per file);"
                         " default: generated from each graph's example inputs")
    ap.add_argument("--workspace-gb", type=float, default=4, help="builder workspace limit (default: 4)")
    ap.add_argument("--timing-cache", type=Path, default=DEFAULT_TIMING_CACHE,
                    help="timing cache loaded before and saved after each build (default: build/trt_timing.cache)")
    ap.add_argument("--builder", choices=BUILDERS, default="auto",
                    help="auto: tensorrt when importable, else tensorrt-rtx (default: auto)")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where <model>/1/<out-name> goes (default: the repository with tensorrt,"
                         " build/rtx_plans with tensorrt-rtx)")
    ap.add_argument("--out-name", default="model.plan", help="plan file name (default: model.plan)")
    ap.add_argument("--compute-capability", nargs="+", default=None, metavar="SMxx",
                    help="tensorrt-rtx only: target GPUs, e.g. SM86 SM89 (default: the builder's own)")
    ap.add_argument("--force", action="store_true", help="build even when the plan is up to date")
    ap.add_argument("--no-parity", action="store_true", help="skip the plan vs ONNX Runtime comparison")
    ap.add_argument("--verbose", action="store_true", help="print TensorRT's info messages too")
    args = ap.parse_args(argv)

    try:
        trt, kind = load_trt(args.builder)
    except BuilderUnavailable as e:
        print(f"export.trt: {e}", file=sys.stderr)
        return 2
    preset = get_preset(args.preset)
    out_dir = args.out_dir or (args.repository if kind == "tensorrt" else DEFAULT_RTX_OUT_DIR)
    if kind == "tensorrt-rtx" and out_dir.resolve() == args.repository.resolve():
        print("export.trt: warning: TensorRT-RTX plans in the model repository: Triton's TensorRT backend"
              " cannot load them", file=sys.stderr)
    gpu = gpu_identity()
    print(f"export.trt: {trt_version(trt)}, preset {preset.name}, precision {args.precision}, target"
          f" {gpu['gpu']}{'' if gpu['gpu'] == 'cpu-aot' else ' (sm ' + gpu['compute_capability'] + ')'}"
          f" -> {out_dir}/<model>/1/{args.out_name}", flush=True)
    t_all = time.perf_counter()
    failed: list[str] = []
    for name in args.models:
        spec = specs.BY_NAME[name]
        onnx_path = args.repository / name / "1" / "model.onnx"
        plan_path = out_dir / name / "1" / args.out_name
        if not onnx_path.exists():
            print(f"  {name:<12} FAILED: {onnx_path} not found (run `python -m export --preset {preset.name}"
                  f" --repository {args.repository}` first)", flush=True)
            failed.append(name)
            continue
        print(f"  {name:<12} {onnx_size(onnx_path)} -> {plan_path} ...", flush=True)
        try:
            calibrator = None
            if args.precision == "int8":
                calibrator = _make_calibrator(trt, spec, preset, args)
            result = build_engine(onnx_path, spec, preset, plan_path, precision=args.precision,
                                  workspace_gb=args.workspace_gb, timing_cache=args.timing_cache,
                                  calibrator=calibrator, trt_module=trt, force=args.force,
                                  compute_capabilities=args.compute_capability, verbose=args.verbose)
        except Exception as e:  # one model's failure does not stop the others
            print(f"  {name:<12} FAILED: {type(e).__name__}: {e}", flush=True)
            failed.append(name)
            continue
        if result.skipped:
            line = f"  {name:<12} up to date, skipped ({result.plan_bytes / 1e6:.1f} MB plan)"
        else:
            line = (f"  {name:<12} built in {result.seconds:6.1f} s, {result.plan_bytes / 1e6:.1f} MB plan"
                    f" [{'; '.join(result.applied)}]")
        print(line, flush=True)
        if not args.no_parity:
            recorded = _recorded_parity(plan_path) if result.skipped else None
            if recorded is not None:  # this plan was compared when it was built
                print(f"  {name:<12} {recorded['line']} (recorded at build)", flush=True)
                ok = recorded["ok"]
            else:
                try:
                    report = check_plan(plan_path, onnx_path, spec, preset, trt_module=trt)
                except Exception as e:
                    report = ParityResult(name, False, False, f"{type(e).__name__}: {e}")
                print(f"  {name:<12} {report.line()}", flush=True)
                _record_parity(plan_path, report)
                ok = report.ok
            if not ok:
                failed.append(name)
        _release_graphs()
    print(f"export.trt: done in {time.perf_counter() - t_all:.1f} s", flush=True)
    if failed:
        print(f"export.trt: FAILED for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


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


def onnx_size(onnx_path: Path) -> str:
    return f"{sum(p.stat().st_size for p in onnx_files(onnx_path)) / 1e6:.1f} MB ONNX"


def _make_calibrator(trt, spec: ModelSpec, preset: Preset, args):
    from export import trt_calibration as cal

    folder = args.calibration_data / spec.name if args.calibration_data else None
    shapes, batches = cal.calibration_batches(spec, preset, args.int8_calibration, folder)
    graph = hashlib.sha256("".join(sha256_file(p) for p in onnx_files(args.repository / spec.name / "1" / "model.onnx"))
                           .encode()).hexdigest()[:12]
    source = "npz" if folder else "generated"
    cache = DEFAULT_CALIBRATION_DIR / f"{preset.name}_{spec.name}_{graph}_{source}.cache"
    return cal.entropy_calibrator(trt, shapes, batches, cache_path=cache)


def _release_graphs() -> None:
    """Drop the PyTorch graphs built for example inputs (the base LLM holds ~2 GB)."""
    from export import trt_calibration

    trt_calibration._graph.cache_clear()


if __name__ == "__main__":
    sys.exit(main())
