"""CI gate for `python -m export.trt`: every tiny-preset ONNX graph (and the VAD) parses and builds with TensorRT.

The builder here is TensorRT-RTX (pip wheels, requirements-trt.txt), which builds plans ahead of
time on a machine without a GPU; its tests are skipped only when those wheels are not installed.
Plans go to a temporary folder, never into the model repository.

The base preset is not built by default (the LLM graph alone is ~2 GB). To build it:

    python -m export --preset base --repository build/base_repo
    python -m export.trt --preset base --repository build/base_repo --builder tensorrt-rtx --out-dir build/rtx_plans

or set TRT_BASE_BUILD=1 to run `test_base_preset_builds` below (export ~3 min, builds ~1 min, ~8 GB RAM,
~5 GB disk). TRT_BUILD_REQUIRED=1 turns missing TensorRT-RTX wheels into a failure instead of skips.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from export import trt as trt_cli
from export.contract import spec as specs
from export.contract.presets import get_preset
from export.toolchain import trt_build, trt_parity
from export.toolchain import trt_calibration as cal

HAS_RTX = importlib.util.find_spec("tensorrt_rtx_libs") is not None and (
    importlib.util.find_spec("tensorrt_rtx_bindings") is not None or importlib.util.find_spec("tensorrt_rtx") is not None)
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="TensorRT-RTX wheels not installed:"
                               " pip install -r requirements-trt.txt")


def test_rtx_installed_where_required():
    """With TRT_BUILD_REQUIRED=1 (for CI, which installs requirements-trt.txt) missing wheels fail, not skip."""
    if os.environ.get("TRT_BUILD_REQUIRED") == "1":
        assert HAS_RTX, "TRT_BUILD_REQUIRED=1 but the TensorRT-RTX wheels are not installed (requirements-trt.txt)"
TINY = get_preset("tiny")
STAGE_NAMES = [s.name for s in specs.STAGES + specs.INPUT_STAGES]  # the VAD (silero's graph) too


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    """The six tiny graphs and the VAD exported with `python -m export` into a temporary repository."""
    from export.__main__ import main as export_main

    repo = tmp_path_factory.mktemp("repo")
    assert export_main(["--preset", "tiny", "--repository", str(repo), "--no-parity", "--models", *STAGE_NAMES]) == 0
    for name in STAGE_NAMES:
        assert (repo / name / "1" / "model.onnx").exists(), name
    return repo


@pytest.fixture(scope="module")
def rtx():
    return trt_build.load_trt("tensorrt-rtx")[0]


def _build(rtx, repo: Path, out: Path, name: str, **kw) -> trt_build.BuildResult:
    logs: list[str] = []
    result = trt_build.build_engine(repo / name / "1" / "model.onnx", specs.BY_NAME[name], TINY,
                                    out / name / "1" / "model.plan", trt_module=rtx, log=logs.append, **kw)
    return result


def _touch_after(path: Path, reference: Path) -> None:
    t = reference.stat().st_mtime_ns + 2_000_000_000
    os.utime(path, ns=(t, t))


def _age(path: Path, seconds: int = 10) -> None:
    t = path.stat().st_mtime_ns - seconds * 1_000_000_000
    os.utime(path, ns=(t, t))


@needs_rtx
@pytest.mark.parametrize("name", STAGE_NAMES)
def test_tiny_graph_builds_and_skips(tiny_repo, rtx, tmp_path, name):
    spec = specs.BY_NAME[name]
    onnx_path = tiny_repo / name / "1" / "model.onnx"
    plan = tmp_path / name / "1" / "model.plan"

    first = _build(rtx, tiny_repo, tmp_path, name)
    assert not first.skipped and first.reason == "built"
    assert plan.stat().st_size > 0 and first.plan_bytes == plan.stat().st_size

    side = json.loads(trt_build.sidecar_path(plan).read_text())
    key = side["key"]
    assert key["tensorrt_version"] == f"tensorrt-rtx {rtx.__version__}"
    assert key["precision"] == "fp16" and key["gpu"] and key["compute_capability"]
    assert key["onnx_sha256"]["model.onnx"] == trt_build.sha256_file(onnx_path)
    assert side["build_seconds"] >= 0 and side["builder"] == "tensorrt-rtx"
    # The parsed network carries the spec's tensor names; dynamic axes stay dynamic.
    io = side["io"]
    assert [n for n, _, _ in io["inputs"]] == [t.name for t in spec.inputs]
    assert [n for n, _, _ in io["outputs"]] == [t.name for t in spec.outputs]
    for (n, _, shape), t in zip(io["inputs"], spec.inputs):
        want = ([-1] if spec.batched else []) + [-1 if isinstance(d, str) else d for d in spec.shape(t, TINY)]
        assert list(shape) == want, (n, shape, want)

    second = _build(rtx, tiny_repo, tmp_path, name)
    assert second.skipped, second.reason

    _age(plan)  # as if the graph was re-exported after the plan was built:
    onnx_path.touch()
    third = _build(rtx, tiny_repo, tmp_path, name)
    assert not third.skipped and third.reason == "built"
    assert _build(rtx, tiny_repo, tmp_path, name).skipped


@needs_rtx
def test_sidecar_mismatch_rebuilds(tiny_repo, rtx, tmp_path):
    name = "vocoder"
    plan = tmp_path / name / "1" / "model.plan"
    assert not _build(rtx, tiny_repo, tmp_path, name).skipped
    assert _build(rtx, tiny_repo, tmp_path, name).skipped
    assert not _build(rtx, tiny_repo, tmp_path, name, precision="fp32").skipped  # other precision
    assert _build(rtx, tiny_repo, tmp_path, name, precision="fp32").skipped
    assert not _build(rtx, tiny_repo, tmp_path, name, precision="fp32", force=True).skipped

    side_path = trt_build.sidecar_path(plan)
    side = json.loads(side_path.read_text())
    side["key"]["tensorrt_version"] = "tensorrt 10.5.0"  # as if built by another TensorRT
    side_path.write_text(json.dumps(side))
    _touch_after(plan, tiny_repo / name / "1" / "model.onnx")
    result = _build(rtx, tiny_repo, tmp_path, name, precision="fp32")
    assert not result.skipped

    side = json.loads(side_path.read_text())
    side["key"]["gpu"] = "NVIDIA H100 80GB HBM3"  # as if built for another GPU
    side_path.write_text(json.dumps(side))
    fresh, why = trt_build.up_to_date(plan, tiny_repo / name / "1" / "model.onnx",
                                      trt_build.build_key(rtx, tiny_repo / name / "1" / "model.onnx",
                                                          specs.BY_NAME[name], TINY, "fp32"))
    assert not fresh and "gpu" in why

    side_path.unlink()  # no sidecar: rebuild
    assert not _build(rtx, tiny_repo, tmp_path, name, precision="fp32").skipped


@needs_rtx
def test_zero_length_past_profile_builds(tiny_repo, rtx, tmp_path):
    """The KV-cache `past` axis has min 0 in the spec: the builder accepts a profile with a 0 dim."""
    for name in ("asr_decoder", "llm"):
        shapes = specs.profile_shapes(specs.BY_NAME[name], TINY)["past_kv"]
        assert shapes[0][-2] == 0
        assert _build(rtx, tiny_repo, tmp_path, name, precision="fp32").plan_bytes > 0


@needs_rtx
def test_int8_refused_by_rtx(tiny_repo, rtx, tmp_path):
    with pytest.raises(trt_build.BuildError, match="INT8"):
        _build(rtx, tiny_repo, tmp_path, "wav2lip", precision="int8", force=True)


@needs_rtx
def test_cli(tiny_repo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trt_cli, "DEFAULT_RTX_OUT_DIR", tmp_path / "rtx_plans")
    argv = ["--preset", "tiny", "--repository", str(tiny_repo), "--builder", "tensorrt-rtx",
            "--models", "vocoder", "wav2lip", "--timing-cache", str(tmp_path / "timing.cache")]
    assert trt_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "tensorrt-rtx" in out and out.count("built in") == 2
    # RTX plans go to the separate folder, never into the model repository.
    for name in ("vocoder", "wav2lip"):
        assert (tmp_path / "rtx_plans" / name / "1" / "model.plan").stat().st_size > 0
        assert not (tiny_repo / name / "1" / "model.plan").exists()
    import torch

    if not torch.cuda.is_available():
        assert out.count("parity skipped: no CUDA GPU") == 2
    assert trt_cli.main(argv) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 2
    # --out-name and --out-dir
    assert trt_cli.main(argv + ["--out-dir", str(tmp_path / "o"), "--out-name", "x.plan", "--no-parity"]) == 0
    assert (tmp_path / "o" / "wav2lip" / "1" / "x.plan").exists()
    # A missing graph fails that model only, with a hint.
    assert trt_cli.main(["--preset", "tiny", "--repository", str(tmp_path / "none"), "--builder",
                           "tensorrt-rtx", "--models", "llm"]) == 1
    assert "python -m export --preset tiny" in capsys.readouterr().out


@needs_rtx
@pytest.mark.server  # shares the real weight set's export with the quality and demo tests
def test_real_weight_set_builds(tmp_path, capsys):
    """The demo's real graphs (Whisper tiny.en, SmolLM2-135M, the Piper voice, ...) build, with the profiles of the
    dimensions their checkpoints have (the manifest's), not the preset's; a tied embedding stays one matrix."""
    from export.__main__ import main as export_main
    from export.contract.artifacts import manifest_preset, read_manifest
    from export.contract.layout import MODEL_REPOSITORY

    assert export_main(["--weight-set", "real"]) == 0
    info = read_manifest(MODEL_REPOSITORY / specs.TALKING_HEAD.name / "1")
    assert manifest_preset(info).llm != TINY.llm  # the checkpoint's dimensions
    argv = ["--repository", str(MODEL_REPOSITORY), "--builder", "tensorrt-rtx", "--out-dir", str(tmp_path)]
    assert trt_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("built in") == len(info["models"]), out
    llm_onnx = sum(f.stat().st_size for f in trt_build.onnx_files(MODEL_REPOSITORY / "llm" / "1" / "model.onnx"))
    assert (tmp_path / "llm" / "1" / "model.plan").stat().st_size < 1.15 * llm_onnx
    with pytest.raises(SystemExit, match="exported with preset 'tiny'"):
        trt_cli.main(argv + ["--preset", "base"])


def test_no_builder_exits_with_message(monkeypatch, capsys):
    def no_module(kind):
        raise ImportError(f"No module named {kind!r}")

    monkeypatch.setattr(trt_build, "_import", no_module)
    assert trt_cli.main(["--preset", "tiny", "--builder", "auto"]) == 2
    err = capsys.readouterr().err
    assert "no TensorRT builder importable" in err and "requirements-trt.txt" in err


def test_parity_skips_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: check_plan runs for real")
    r = trt_parity.check_plan(tmp_path / "model.plan", tmp_path / "model.onnx", specs.LLM, TINY)
    assert r.skipped and r.ok and "no CUDA GPU" in r.reason and "skipped" in r.line()


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_generated_calibration_batches(name):
    spec = specs.BY_NAME[name]
    shapes, batches = cal.calibration_batches(spec, TINY, n=2, batch=4)
    batches = list(batches)
    assert len(batches) == 2
    for feeds in batches:
        assert list(feeds) == [t.name for t in spec.inputs]
        for t in spec.inputs:
            assert feeds[t.name].shape == shapes[t.name]
            assert feeds[t.name].dtype == np.dtype(t.numpy_dtype)
        # shapes sit inside the build profile
        for k, (lo, _, hi) in specs.profile_shapes(spec, TINY).items():
            assert all(a <= d <= b for a, d, b in zip(lo, feeds[k].shape, hi)), (k, feeds[k].shape)
    assert not all(np.array_equal(batches[0][k], batches[1][k]) for k in batches[0])  # fresh draws


def test_npz_calibration_batches(tmp_path):
    spec = specs.HIFIGAN
    good = np.zeros((2, 80, 10), np.float32)
    np.savez(tmp_path / "a.npz", mel=good)
    np.savez(tmp_path / "b.npz", mel=np.ones((80, 10), np.float64).reshape(1, 80, 10))
    np.savez(tmp_path / "c.npz", mel=np.zeros((1, 80, 12), np.float32))  # other shape: left out
    np.savez(tmp_path / "d.npz", mel=np.ones((80, 10), np.float32)[None].repeat(2, 0))
    logs: list[str] = []
    batches = cal.npz_batches(spec, tmp_path, log=logs.append)
    assert [b["mel"].shape for b in batches] == [(2, 80, 10), (2, 80, 10)]
    assert any("c.npz" in line for line in logs)
    shapes, got = cal.calibration_batches(spec, TINY, n=1, folder=tmp_path, log=logs.append)
    assert shapes == {"mel": (2, 80, 10)} and len(got) == 1
    unbatched = tmp_path / "u"
    unbatched.mkdir()
    np.savez(unbatched / "x.npz", mel=np.zeros((80, 7), np.float32))  # batch axis added
    assert cal.npz_batches(spec, unbatched)[0]["mel"].shape == (1, 80, 7)


@needs_rtx
@pytest.mark.skipif(not os.environ.get("TRT_BASE_BUILD"),
                    reason="base preset builds are opt-in (TRT_BASE_BUILD=1): python -m export --preset base"
                           " --repository build/base_repo && python -m export.trt --preset base --repository"
                           " build/base_repo --builder tensorrt-rtx --out-dir build/rtx_plans")
def test_base_preset_builds(tmp_path):
    from export.__main__ import main as export_main

    repo = Path(os.environ.get("TRT_BASE_REPOSITORY", tmp_path / "repo"))
    assert export_main(["--preset", "base", "--repository", str(repo), "--no-parity"]) == 0
    assert trt_cli.main(["--preset", "base", "--repository", str(repo), "--builder", "tensorrt-rtx",
                           "--out-dir", str(tmp_path / "plans"), "--no-parity"]) == 0
    for name in STAGE_NAMES:
        assert (tmp_path / "plans" / name / "1" / "model.plan").stat().st_size > 0


class _FakeConfig:
    """Records what build_engine's full-TensorRT branches do to an IBuilderConfig."""

    def __init__(self):
        self.flags: set[str] = {"TF32"}
        self.timing_cache = None
        self.int8_calibrator = None
        self.calibration_profile = None

    def get_flag(self, f):
        return f in self.flags

    def set_flag(self, f):
        self.flags.add(f)

    def clear_flag(self, f):
        self.flags.discard(f)

    def create_timing_cache(self, data):
        return ("cache", bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache[1] == b"other-gpu":
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return type("C", (), {"serialize": lambda _: b"saved-cache"})()

    def set_calibration_profile(self, profile):
        self.calibration_profile = profile


class _FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (lo, opt, hi)


def _fake_full_trt():
    import types

    flags = types.SimpleNamespace(**{f: f for f in ("FP16", "BF16", "INT8", "TF32")})
    return types.SimpleNamespace(__name__="tensorrt", __version__="10.5.0", BuilderFlag=flags,
                                 IInt8EntropyCalibrator2=object)


def test_full_tensorrt_precision_and_timing_cache_branches(tmp_path):
    """The branches only full TensorRT takes (flags, int8 set-up, timing cache), against a fake module."""
    trt = _fake_full_trt()
    builder = type("B", (), {"create_optimization_profile": lambda _: _FakeProfile()})()
    logs: list[str] = []
    for precision, flags in (("fp16", {"FP16", "TF32"}), ("bf16", {"BF16", "TF32"}), ("fp32", set())):
        config = _FakeConfig()
        applied = trt_build._set_precision(trt, config, builder, precision, None, logs.append)
        assert config.flags == flags and not any("absent" in a for a in applied), (precision, applied)
    with pytest.raises(trt_build.BuildError, match="calibrator"):
        trt_build._set_precision(trt, _FakeConfig(), builder, "int8", None, logs.append)
    config = _FakeConfig()
    calibrator = type("Cal", (), {"shapes": {"mel": (4, 80, 64)}})()
    applied = trt_build._set_precision(trt, config, builder, "int8", calibrator, logs.append)
    assert {"INT8", "FP16"} <= config.flags and config.int8_calibrator is calibrator
    assert config.calibration_profile.shapes == {"mel": ((4, 80, 64),) * 3}
    assert "INT8 entropy calibration" in applied

    path = tmp_path / "timing.cache"
    config = _FakeConfig()
    note, cache = trt_build._load_timing_cache(trt, config, path)
    assert note.startswith("new timing cache") and config.timing_cache == cache
    trt_build._save_timing_cache(trt, config, path)
    assert path.read_bytes() == b"saved-cache"
    note, _ = trt_build._load_timing_cache(trt, _FakeConfig(), path)
    assert "11 bytes loaded" in note
    path.write_bytes(b"other-gpu")
    note, cache = trt_build._load_timing_cache(trt, _FakeConfig(), path)
    assert "did not match" in note and cache == ("cache", b"")


def test_workspace_shortfall_parsing():
    err = ["[localCheckMacros.cpp::getErrorStr::132] Error Code 2: OutOfMemory (Requested size was 4350671364 bytes.)"]
    assert trt_build._workspace_shortfall(err, 4) == 4350671364
    assert trt_build._workspace_shortfall(err, 8) is None
    assert trt_build._workspace_shortfall(["some other error"], 4) is None
    assert trt_build._gib_above(4350671364) == 6.0
