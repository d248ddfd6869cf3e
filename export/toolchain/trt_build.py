"""TensorRT engine build from an ONNX graph with the spec's optimization profile (full TensorRT or TensorRT-RTX).

Used by `python -m export.trt` (export/trt.py); the plan vs ONNX Runtime comparison is trt_parity.py.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from export.contract import spec as specs
from export.contract.layout import BUILD
from export.contract.presets import Preset
from export.contract.spec import ModelSpec, profile_shapes

DEFAULT_RTX_OUT_DIR = BUILD / "rtx_plans"
DEFAULT_TIMING_CACHE = BUILD / "trt_timing.cache"
DEFAULT_CALIBRATION_DIR = BUILD / "trt_calibration"
STAGE_NAMES = [s.name for s in specs.STAGES + specs.INPUT_STAGES]
BUILDERS = ("auto", "tensorrt", "tensorrt-rtx")
PRECISIONS = ("fp16", "bf16", "fp32", "int8")
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
    int8 needs a calibrator (`export.toolchain.trt_calibration.entropy_calibrator`) and full TensorRT.
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
            raise BuildError("precision int8 needs a calibrator (export.toolchain.trt_calibration.entropy_calibrator)")
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
