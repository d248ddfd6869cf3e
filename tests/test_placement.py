"""Scale-out across GPUs: the placement rule (export/toolchain/placement.py), the rendered gpu_xN / tensorrt_xN configs,
and bench_gpu's --gpus handling. Pure: no GPU, no server."""
import json
import os
from pathlib import Path

import pytest

from export.contract import spec
from export.contract.layout import MODEL_REPOSITORY
from export.contract.presets import get_preset
from export.toolchain import configs
from export.toolchain import placement as pl

SPREAD = ("llm", "vocoder", "lipsync")  # the stages that must be on every GPU
PIPELINE = spec.pipeline_stages(get_preset("base"))  # what a turn uses: placement is about these


def _config(rel: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse((MODEL_REPOSITORY / rel).read_text(), mc.ModelConfig())


# ---------------------------------------------------------------- the rule

def test_one_gpu_reproduces_todays_counts_from_the_specs():
    p = pl.place(1)
    for s in PIPELINE:
        m = p[s.name]
        assert m.kind == pl.KIND_GPU
        assert m.groups == (pl.InstanceGroup((0,), s.gpu_instances),), s.name
        assert m.total == s.gpu_instances
    assert p["talking_head"].kind == pl.KIND_CPU and p["talking_head"].total == pl.ORCHESTRATOR_GPU_INSTANCES
    # today's numbers (BENCHMARKS.md), so a change to the specs shows up here as well
    assert {s.name: p[s.name].total for s in PIPELINE} == {
        "asr_encoder": 1, "asr_decoder": 2, "llm": 4, "tts": 2, "vocoder": 2, "lipsync": 2}
    # a memory limit the single-GPU set fits in changes nothing
    assert pl.place(1, gpu_memory_gib=80).models == p.models


@pytest.mark.parametrize("n", [2, 4])
def test_llm_vocoder_and_lipsync_spread_over_every_gpu(n):
    p = pl.place(n)
    for name in SPREAD:
        m = p[name]
        assert m.gpus == tuple(range(n)), name
        assert all(m.on_gpu(g) == spec.BY_NAME[name].gpu_instances for g in range(n)), name
        assert m.total == n * spec.BY_NAME[name].gpu_instances
    assert p["llm"].total == 4 * n  # the bottleneck scales with the GPUs
    for s in PIPELINE:  # unconstrained: every GPU a full replica, one instance group listing all GPUs
        assert p[s.name].groups == (pl.InstanceGroup(tuple(range(n)), s.gpu_instances),)
    assert p["talking_head"].groups == (pl.InstanceGroup((), pl.ORCHESTRATOR_GPU_INSTANCES * n),)
    assert pl.place(n, gpu_memory_gib=80).models == p.models  # an H100 holds the full set


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("memory", [80, 24, 20, 16, 12, 10])
def test_memory_limit_is_respected_and_the_pipeline_stays_whole(n, memory):
    p = pl.place(n, gpu_memory_gib=memory)
    budget = memory * (1 - pl.MEMORY_HEADROOM)
    for g in range(n):
        assert p.memory_gib(g) <= budget + 1e-9, (g, p.per_gpu(g))
        for name in SPREAD:
            assert p[name].on_gpu(g) >= 1, (name, g)  # LLM, vocoder and lipsync stay on every GPU
    for s in PIPELINE:
        assert p[s.name].on_gpu(0) >= 1  # GPU 0 always holds a whole pipeline
        assert p[s.name].on_gpu(0) <= s.gpu_instances
    # the LLM gets as many instances as fit: one more on any GPU would pass the per-GPU cap or break the budget
    llm = pl.instance_memory_gib("llm")
    for g in range(n):
        assert p["llm"].on_gpu(g) == spec.LLM.gpu_instances or p.memory_gib(g) + llm > budget, g


def test_tight_memory_moves_the_light_stages_to_a_subset_first():
    p = pl.place(2, gpu_memory_gib=16)  # 14.4 GiB usable: the 22.6 GiB single-GPU set does not fit
    for name in ("asr_encoder", "asr_decoder", "tts"):
        assert p[name].gpus == (0,), name
    # GPU 0 keeps the light stages, so it keeps fewer LLM instances than GPU 1 (never under the floor of 2)
    assert p["llm"].on_gpu(0) == 2 and p["llm"].on_gpu(1) == 3
    assert p["lipsync"].on_gpu(1) == 2


def test_too_little_memory_is_an_error():
    with pytest.raises(ValueError, match="GPU 0"):
        pl.place(2, gpu_memory_gib=8)
    with pytest.raises(ValueError):
        pl.place(0)


def test_memory_estimates_come_from_parameter_counts():
    from export.toolchain.graphs import parameter_count
    from export.toolchain.models import qwen2

    assert pl.llm_parameters(get_preset("base").llm) == 494_032_768  # Qwen2.5-0.5B
    tiny = get_preset("tiny").llm
    assert pl.llm_parameters(tiny) == parameter_count(qwen2.build(tiny))  # the formula is the model's
    base = get_preset("base")
    assert pl.llm_kv_budget_gib(base) == pytest.approx(1.5)  # 2 x 16 x 2048 tokens x 24 KiB (fp32)
    weights_gib = 494_032_768 * 2 / pl.GIB  # bf16
    assert weights_gib == pytest.approx(0.92, abs=0.01)
    assert pl.instance_memory_gib("llm") == pytest.approx(pl.CUDA_CONTEXT_GIB + weights_gib + 1.5
                                                          + pl.LLM_ACTIVATION_GIB)
    for name in ("asr_encoder", "asr_decoder", "tts", "vocoder", "fastspeech2", "hifigan", "wav2lip"):
        assert pl.instance_memory_gib(name) < pl.instance_memory_gib("llm") / 2, name
    from export.toolchain.graphs import build_graphs

    voice = build_graphs(base, 0, ["tts", "vocoder"])  # the recorded counts are the models'
    assert {n: parameter_count(g) for n, g in voice.items()} == {n: pl.BASE_PARAMETERS[n] for n in voice}
    one = pl.place(1).memory_gib(0)
    assert 15 < one < 30  # the H100 run measured 19.0 GiB peak for this set (BENCHMARKS.md)


# ---------------------------------------------------------------- rendered configs

@pytest.mark.parametrize("variant", ["gpu", "tensorrt"])
@pytest.mark.parametrize("n", configs.SCALE_OUT_GPUS)
def test_rendered_scale_out_configs_list_the_gpus_and_counts(variant, n):
    from tritonclient.grpc import model_config_pb2 as mc

    name = configs.variant_name(variant, n)
    assert name == f"{variant}_x{n}"
    p = pl.place(n)
    files = configs.rendered_configs()
    for s in PIPELINE:
        rel = f"{s.name}/configs/{name}.pbtxt"
        assert rel in files and configs.config_paths(s)[name] == rel
        cfg = _config(rel)
        groups = [(tuple(g.gpus), g.count, g.kind) for g in cfg.instance_group]
        assert groups == [(tuple(range(n)), s.gpu_instances, mc.ModelInstanceGroup.KIND_GPU)], rel
        assert groups == [(g.gpus, g.count, mc.ModelInstanceGroup.KIND_GPU) for g in p[s.name].groups]
        # everything else is the 1-GPU variant's, but for the session cache that only the 1-GPU variant keeps
        # (its one instance holds every session; several instances would split a session's steps between them)
        if s.session is not None and variant in s.session.variants:
            assert "session_id" not in files[rel], rel
            continue
        one = _config(configs.config_paths(s)[variant])
        del one.instance_group[:], cfg.instance_group[:]
        assert cfg == one, rel
    cfg = _config(f"talking_head/configs/{name}.pbtxt")
    assert [(list(g.gpus), g.count, g.kind) for g in cfg.instance_group] == \
        [([], pl.ORCHESTRATOR_GPU_INSTANCES * n, mc.ModelInstanceGroup.KIND_CPU)]
    assert cfg.model_transaction_policy.decoupled
    assert "avatar_registry/configs/" + name + ".pbtxt" not in files  # Triton falls back to its config.pbtxt


def test_render_config_gpus_argument_and_variant_names_agree():
    for s in spec.STAGES + (spec.TALKING_HEAD,):
        for v in configs.SCALABLE_VARIANTS:
            assert configs.render_config(s, v, gpus=2) == configs.render_config(s, f"{v}_x2")
            assert configs.render_config(s, v, gpus=1) == configs.render_config(s, v)
    # one GPU is unchanged: no gpus list, the spec's count
    text = configs.render_config(spec.VOCODER, "gpu")
    assert "gpus:" not in text and f"count: {spec.VOCODER.gpu_instances}" in text
    assert "count: 1\n" in configs.render_config(spec.LLM, "gpu")  # one instance holds the session cache
    assert configs.parse_variant("gpu_x4") == ("gpu", 4) and configs.parse_variant("gpu_naive") == ("gpu_naive", 1)
    with pytest.raises(ValueError):
        configs.render_config(spec.LLM, "cpu", gpus=2)
    with pytest.raises(ValueError):
        configs.render_config(spec.LLM, "gpu_naive_x2")
    with pytest.raises(ValueError):
        configs.render_config(spec.LLM, "gpu_x2", gpus=4)
    with pytest.raises(ValueError):
        configs.render_config(spec.LLM, "fpga")


# ---------------------------------------------------------------- bench_gpu --gpus (argparse only)

def test_bench_gpu_parses_gpus_and_maps_them_to_configs():
    from loadtests import bench_gpu

    args = bench_gpu.parse_args(["--gpus", "1", "2", "4"])
    assert args.gpus == [1, 2, 4]
    assert bench_gpu.scale_out_configs(args) == {1: "gpu", 2: "gpu_x2", 4: "gpu_x4"}
    for config in bench_gpu.scale_out_configs(args).values():
        for model in [s.name for s in spec.STAGES] + ["talking_head"]:
            path = MODEL_REPOSITORY / model / "configs" / f"{config}.pbtxt"
            assert path.exists(), path
    assert bench_gpu.parse_args(["--gpus", "4", "2"]).gpus == [1, 2, 4]  # the 1-GPU run is the reference
    trt = bench_gpu.parse_args(["--gpus", "2", "--optimized-config", "tensorrt"])
    assert bench_gpu.scale_out_configs(trt) == {1: "tensorrt", 2: "tensorrt_x2"}
    plain = bench_gpu.parse_args([])
    assert plain.gpus is None and bench_gpu.scale_out_configs(plain) == {} and not plain.skip_naive


@pytest.mark.parametrize("argv", [["--gpus", "3"], ["--gpus", "8"], ["--gpus"],
                                  ["--gpus", "2", "--optimized-config", "gpu_naive"],
                                  ["--gpus", "2", "--optimized-config", "gpu_x2"]])
def test_bench_gpu_refuses_gpu_counts_without_configs(argv):
    from loadtests import bench_gpu

    with pytest.raises(SystemExit):
        bench_gpu.parse_args(argv)


def test_visible_gpus_pins_and_restores(monkeypatch):
    from loadtests.bench_gpu import visible_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with visible_gpus(2):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")
    with visible_gpus(1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5,6"
    with pytest.raises(RuntimeError), visible_gpus(4):
        pass


def _level(real_time: bool, ttfa_p95: float) -> dict:
    return {"turns": 1, "failed": 0, "real_time_sessions": int(real_time), "all_real_time": real_time,
            "ttfa_p50_s": ttfa_p95 / 2, "ttfa_p95_s": ttfa_p95, "ttff_p50_s": 0.3, "ttff_p95_s": 0.4,
            "total_p50_s": 2.0, "audio_s_p50": 5.8, "late_frames": 0, "audio_underruns": 0,
            "stage_ms_per_turn": {"llm": 1000.0}, "errors": []}


def _run(config: str, caps: dict[int, bool]) -> dict:
    return {"config": config, "options": {"lipsync_batch": 8}, "server_start_s": 60.0, "peak_gpu_memory_mib": 20000,
            "speech_c1": _level(True, 0.5), "levels": {str(c): _level(ok, 0.1 * c) for c, ok in caps.items()}}


def test_scale_out_summary_and_report_section():
    from loadtests import bench_gpu
    from loadtests.bench_report import markdown

    runs = {1: _run("gpu", {1: True, 16: True, 32: False}),
            2: _run("gpu_x2", {16: True, 32: True, 64: False}),
            4: _run("gpu_x4", {32: True, 64: True, 128: True})}
    summary = bench_gpu.scale_out_summary(runs)
    assert [summary[n]["capacity"] for n in ("1", "2", "4")] == [16, 32, 128]
    assert summary["2"]["ratio_vs_1"] == 2.0 and summary["4"]["ratio_vs_1"] == 8.0
    assert summary["4"]["capacity_per_gpu"] == 32
    assert summary["2"]["ttfa_p95_at_capacity_s"] == pytest.approx(3.2)
    assert summary["2"]["max_level"] == 64 and summary["2"]["ttfa_p95_at_max_level_s"] == pytest.approx(6.4)
    none = bench_gpu.scale_out_summary({1: _run("gpu", {1: False}), 2: _run("gpu_x2", {1: False})})
    assert none["2"]["ratio_vs_1"] is None and none["2"]["ttfa_p95_at_capacity_s"] is None

    report = {"date": "d", "preset": "base", "hardware": "h", "command": "c", "optimized": runs[1],
              "capacity": {"optimized": 16},
              "scale_out": {"gpus": [1, 2, 4], "runs": {"2": runs[2], "4": runs[4]}, "summary": summary}}
    md = markdown(report)
    assert "## Scale-out across GPUs (`--gpus 1 2 4`)" in md
    assert "| 2 | `gpu_x2` | 32 | 16.0 | 2.00× | 3200 |" in md
    assert "| 4 | `gpu_x4` | 128 | 32.0 | 8.00× | 12800 |" in md
    assert "## End to end, optimized on 4 GPUs (`--model-config-name=gpu_x4`" in md
    assert "## End to end, naive" not in md  # --skip-naive


def test_report_without_gpus_is_unchanged():
    from loadtests.bench_report import markdown

    report = json.loads((Path(__file__).resolve().parent.parent / "loadtests" / "results" / "bench_gpu_h100.json")
                        .read_text())
    md = markdown(report)
    assert "Scale-out" not in md
    assert "- largest measured concurrency with every session real time: naive 4, optimized 1" in md


def test_bench_gpu_main_runs_each_gpu_count_once_and_resumes(tmp_path, monkeypatch):
    """main() with the server runs faked: which configs run on how many GPUs, the report, --resume."""
    from loadtests import bench_gpu

    calls = []

    def fake_serve(config_name, options, levels, turns, workdir, port, speech, gpus=None, avatar_image=None,
                   per_process=0, one_process=()):
        from loadtests.bench_clients import client_shares

        calls.append((config_name, gpus, tuple(levels)))
        run = _run(config_name, {c: c <= 16 * (gpus or 1) for c in levels})
        for c, s in run["levels"].items():  # as serve_and_measure records them (resume compares them)
            s["client_processes"] = len(client_shares(int(c), per_process))
        return {**run, "options": options, "turns": turns, "gpus": gpus}

    monkeypatch.setattr(bench_gpu, "serve_and_measure", fake_serve)
    monkeypatch.setattr(bench_gpu, "available_gpus", lambda: 4)
    monkeypatch.setattr(bench_gpu, "write_orchestrator_artifacts", lambda *a, **k: None)
    monkeypatch.setattr(bench_gpu, "hardware", lambda: "fake")
    argv = ["--gpus", "1", "2", "4", "--skip-stages", "--skip-naive", "--concurrency", "1", "16", "32",
            "--scale-concurrency", "16", "32", "64", "--out", str(tmp_path)]
    assert bench_gpu.main(argv) == 0
    assert calls == [("gpu", 1, (1, 16, 32)), ("gpu_x2", 2, (16, 32, 64)), ("gpu_x4", 4, (16, 32, 64))]
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert {n: s["capacity"] for n, s in report["scale_out"]["summary"].items()} == {"1": 16, "2": 32, "4": 64}
    assert "## Scale-out across GPUs" in (tmp_path / "BENCHMARKS.md").read_text()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["gpu.json", "gpu_x2.json", "gpu_x4.json"]
    calls.clear()
    assert bench_gpu.main(argv + ["--resume"]) == 0
    assert calls == []  # every run reused
    (tmp_path / "runs" / "gpu_x4.json").unlink()
    assert bench_gpu.main(argv + ["--resume"]) == 0
    assert calls == [("gpu_x4", 4, (16, 32, 64))]
    calls.clear()  # the same levels with every session in one client process: not the saved runs
    assert bench_gpu.main(argv + ["--resume", "--sessions-per-process", "0"]) == 0
    assert [c[0] for c in calls] == ["gpu", "gpu_x2", "gpu_x4"]

    monkeypatch.setattr(bench_gpu, "available_gpus", lambda: 1)  # too few GPUs: refused before any run
    calls.clear()
    with pytest.raises(SystemExit):
        bench_gpu.main(argv)
    assert calls == []


def test_bench_gpu_main_without_gpus_runs_as_before(tmp_path, monkeypatch):
    from loadtests import bench_gpu

    calls = []

    def fake_serve(config_name, options, levels, turns, workdir, port, speech, gpus=None, avatar_image=None,
                   per_process=0, one_process=()):
        calls.append((config_name, gpus))
        return {**_run(config_name, {c: True for c in levels}), "options": options, "turns": turns}

    monkeypatch.setattr(bench_gpu, "serve_and_measure", fake_serve)
    monkeypatch.setattr(bench_gpu, "write_orchestrator_artifacts", lambda *a, **k: None)
    monkeypatch.setattr(bench_gpu, "hardware", lambda: "fake")
    assert bench_gpu.main(["--skip-stages", "--out", str(tmp_path)]) == 0
    assert calls == [("gpu_naive", None), ("gpu", None)]  # not pinned: as before
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert "scale_out" not in report and set(report["capacity"]) == {"naive", "optimized"}
    assert "Scale-out" not in (tmp_path / "BENCHMARKS.md").read_text()
