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

One optimization profile per model, from `export.contract.spec.profile_shapes(spec, preset)`. A build is
skipped when the plan is newer than its ONNX graph and the sidecar `model.plan.json` records the
same TensorRT version, GPU (name and compute capability, or "cpu-aot"), precision, profile and
ONNX sha256. After each build the plan is compared with ONNX Runtime on fresh inputs where a GPU
and the TensorRT runtime that built it are present (`check_plan`); elsewhere that says it skipped.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from export.contract import spec as specs
from export.contract.artifacts import manifest_preset, read_manifest
from export.contract.layout import MODEL_REPOSITORY
from export.contract.presets import PRESETS, Preset, get_preset
from export.contract.spec import ModelSpec
from export.toolchain.trt_build import (
    BUILDERS,
    DEFAULT_CALIBRATION_DIR,
    DEFAULT_RTX_OUT_DIR,
    DEFAULT_TIMING_CACHE,
    PRECISIONS,
    STAGE_NAMES,
    BuilderUnavailable,
    build_engine,
    gpu_identity,
    load_trt,
    onnx_files,
    sha256_file,
    trt_version,
)
from export.toolchain.trt_parity import ParityResult, _record_parity, _recorded_parity, check_plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.trt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS),
                    help="model sizes (default: what the repository's export manifest says, real checkpoints' "
                         "dimensions included; tiny when there is no manifest)")
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY,
                    help="model repository holding <model>/1/model.onnx (default: model_repository)")
    ap.add_argument("--models", nargs="+", choices=STAGE_NAMES, default=None,
                    help="build only these stages (default: those the export wrote, its manifest's `models`)")
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
    preset = repository_preset(args.repository, args.preset)
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
    for name in args.models or exported_models(args.repository):
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


def repository_preset(repository: Path, name: str | None) -> Preset:
    """The dimensions the graphs in `repository` were exported with: its manifest's preset with every real
    checkpoint's own dimensions (export/contract/artifacts.py manifest_preset). A --preset that names another preset
    than the manifest is an error: the profiles would not fit the graphs."""
    try:
        info = read_manifest(repository / specs.TALKING_HEAD.name / "1")
    except FileNotFoundError:
        return get_preset(name or "tiny")
    if name is not None and name != info["preset"]:
        raise SystemExit(f"export.trt: {repository} was exported with preset {info['preset']!r}, not {name!r}")
    return manifest_preset(info)


def exported_models(repository: Path) -> list[str]:
    """The stage graphs `python -m export` wrote into `repository` (all stages when it wrote no manifest)."""
    try:
        info = read_manifest(repository / specs.TALKING_HEAD.name / "1")
    except FileNotFoundError:
        return STAGE_NAMES
    return [m for m in info.get("models", STAGE_NAMES) if m in STAGE_NAMES]


def onnx_size(onnx_path: Path) -> str:
    return f"{sum(p.stat().st_size for p in onnx_files(onnx_path)) / 1e6:.1f} MB ONNX"


def _make_calibrator(trt, spec: ModelSpec, preset: Preset, args):
    from export.toolchain import trt_calibration as cal

    folder = args.calibration_data / spec.name if args.calibration_data else None
    shapes, batches = cal.calibration_batches(spec, preset, args.int8_calibration, folder)
    graph = hashlib.sha256("".join(sha256_file(p) for p in onnx_files(args.repository / spec.name / "1" / "model.onnx"))
                           .encode()).hexdigest()[:12]
    source = "npz" if folder else "generated"
    cache = DEFAULT_CALIBRATION_DIR / f"{preset.name}_{spec.name}_{graph}_{source}.cache"
    return cal.entropy_calibrator(trt, shapes, batches, cache_path=cache)


def _release_graphs() -> None:
    """Drop the PyTorch graphs built for example inputs (the base LLM holds ~2 GB)."""
    from export.toolchain import trt_calibration

    trt_calibration._graph.cache_clear()


if __name__ == "__main__":
    sys.exit(main())
