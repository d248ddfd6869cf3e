"""GPU benchmark: naive baseline vs optimized streaming pipeline, side by side in one run.

    python -m loadtests.bench_gpu --preset base --out bench_out     # on a GPU host

1. per-stage speed of the PyTorch modules (loadtests.stage_bench): fp32 ("naive") and
   the spec's GPU precisions ("optimized");
2. end to end through the real Triton server at the client:
   (a) naive: `--model-config-name=gpu_naive` (eager fp32, no dynamic batching, one
       orchestrator instance) with turn option streaming=false (whole reply, whole TTS,
       whole vocoder, all frames, then everything is sent);
   (b) optimized: `--model-config-name=gpu` (fp16/bf16, dynamic batching, several
       orchestrator instances), streaming;
   text turns at each concurrency (a level's sessions in client processes of at most 8 sessions,
   `--sessions-per-process`: loadtests/bench_clients.py), and speech turns (a 5 s utterance) at concurrency 1;
   time to first audio chunk (TTFA) and first video frame (TTFF) p50/p95, whether every
   session stayed real time (no audio underrun after the first chunk, every frame on
   time at 25 fps), the largest real-time concurrency, peak GPU memory, and the GPU memory each model's
   processes hold after the warm-up and at each level's end;
3. with `--gpus 1 2 4` (scale-out, on a host with that many GPUs): the optimized pipeline
   once per GPU count with `--model-config-name=gpu` / `gpu_x2` / `gpu_x4` (instances
   placed by export/toolchain/placement.py), the server seeing only the first N GPUs
   (CUDA_VISIBLE_DEVICES; the 1-GPU runs above too); real-time capacity per GPU count,
   its ratio to 1 GPU and TTFA p95 at the capacity point. No tensor crosses GPUs (no NCCL).

    python -m loadtests.bench_gpu --preset base --gpus 1 2 4 --skip-naive --skip-stages --resume --out bench_scale

   `--resume` reuses the end-to-end runs already saved under <out>/runs/ (same config,
   options, levels and turns), so a run cut short can be started again where it stopped.
Writes <out>/bench_gpu.json, <out>/BENCHMARKS.md, <out>/runs/<config>.json and PNG plots.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from client.sdk import TalkingHeadClient
from deploy.server import STUB_THREAD_VARS, EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.contract.artifacts import write_orchestrator_artifacts
from export.contract.layout import MODEL_REPOSITORY
from export.contract.presets import PRESETS
from export.contract.spec import served_stages
from export.toolchain.configs import SCALABLE_VARIANTS, SCALE_OUT_GPUS, parse_variant, variant_name
from loadtests import triton_stats
from loadtests.bench_clients import (
    capacity,
    client_shares,
    concurrency_of,
    level_keys,
    run_level,
    speech_utterance,
    summarize,
)


class GpuMemory:
    """GPU memory in use (all processes) and utilization, sampled with nvidia-smi; peaks kept per phase.

    The phase is what the run is doing ("start and warm-up", then "levels": `phase(name)`), so a peak far above
    what the processes hold at a level's end says whether it came while the server started or while it served;
    `before_mib` is the first sample, before the server started (what other processes held).
    """

    def __init__(self, interval_s: float = 0.5, phase: str = "start and warm-up"):
        self.peak_mib = 0  # the busiest GPU's
        self.peak_per_gpu_mib: list[int] = []
        self.peak_by_phase_mib: dict[str, int] = {}
        self.before_mib: int | None = None
        self.util: list[tuple[float, int]] = []  # (perf_counter, utilization.gpu % of the busiest GPU)
        self._phase = phase
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)

    def phase(self, name: str) -> None:
        self._phase = name

    def record(self, used: list[int], util: list[int]) -> None:
        """One sample: memory used (MiB) and utilization (%) of each GPU."""
        if self.before_mib is None:
            self.before_mib = max(used)
        self.util.append((time.perf_counter(), max(util)))
        self.peak_mib = max(self.peak_mib, max(used))
        self.peak_by_phase_mib[self._phase] = max(self.peak_by_phase_mib.get(self._phase, 0), max(used))
        self.peak_per_gpu_mib = [max(a, b) for a, b in
                                 zip(used, self.peak_per_gpu_mib + [0] * (len(used) - len(self.peak_per_gpu_mib)))]

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu",
                                      "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                rows = [[int(v) for v in line.split(",")] for line in out.strip().splitlines()]
                self.record([r[0] for r in rows], [r[1] for r in rows])
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def mean_util(self, start: float, end: float) -> float | None:
        """Mean GPU utilization (% of time a kernel ran, nvidia-smi) sampled between two perf_counter times."""
        vals = [u for t, u in self.util if start <= t <= end]
        return sum(vals) / len(vals) if vals else None

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def available_gpus() -> int:
    """GPUs this process may use: nvidia-smi's count, narrowed by CUDA_VISIBLE_DEVICES when set."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return n if visible is None else min(n, len([x for x in visible.split(",") if x.strip()]))


@contextmanager
def visible_gpus(n: int | None):
    """The server started inside sees only the first `n` GPUs (None: as it is). A config without `gpus:`
    (configs/gpu.pbtxt) puts its instances on every GPU Triton sees: this keeps the 1-GPU runs on one."""
    if n is None:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in old.split(",") if x.strip()] if old is not None else [str(i) for i in range(n)]
    if len(ids) < n:
        raise RuntimeError(f"{n} GPUs wanted, CUDA_VISIBLE_DEVICES={old!r} has {len(ids)}")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:n])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


@contextmanager
def thread_pools(n: int | None):
    """The server started inside gets STUB_THREAD_VARS = n where the environment does not set them (None: as it is);
    the BLAS/OpenMP libraries of every stub read them when they load."""
    old = {v: os.environ.get(v) for v in STUB_THREAD_VARS}
    if n:
        for v in STUB_THREAD_VARS:
            os.environ.setdefault(v, str(n))
    try:
        yield
    finally:
        for v, value in old.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


def serve_and_measure(config_name: str, options: dict, levels: list[int], turns: int, workdir: Path,
                      port: int, speech: np.ndarray, gpus: int | None = None, avatar_image: bytes | None = None,
                      per_process: int = 0, one_process: tuple[int, ...] = ()) -> dict:
    """gpus: the server sees only the first `gpus` GPUs (None: every GPU it would see anyway); avatar_image: the face
    registered (None: the demo avatar). Each level's sessions are spread over client processes of at most
    `per_process` sessions (bench_clients.run_level); the levels in `one_process` are then run again with every
    session in this one process (result["one_process"]), to show what a single client process does to the figures."""
    server_options = ServerOptions(config_name=config_name, workdir=workdir / config_name, grpc_port=port,
                                   http_port=port - 1, metrics_port=port + 1, ready_timeout_s=400)

    result: dict = {"config": config_name, "options": options, "levels": {}, "turns": turns}
    if gpus is not None:
        result["gpus"] = gpus
    with GpuMemory() as mem, visible_gpus(gpus), EmbeddedServer(server_options) as server:
        result["server_start_s"] = server.started_s
        url = server_options.grpc_url
        with TalkingHeadClient(url) as c:
            avatar = c.register_avatar(avatar_image or demo_avatar_png()).id
        # warm-up: first calls load kernels and allocate, in every orchestrator process (Triton spreads concurrent
        # turns over its instances); a process's first turn also builds its avatar and feature caches
        n = 2 * orchestrator_instances(config_name)
        run_level(url, avatar, 1, 2, options)
        run_level(url, avatar, n, 1, options)
        run_level(url, avatar, n, 1, options, audio=speech)
        result["gpu_mib_after_warmup"] = gpu_mib_by_process(server.process.pid)
        mem.phase("levels")
        result["speech_c1"] = summarize(run_level(url, avatar, 1, turns, options, audio=speech))
        print(f"[{config_name}] speech c=1: {result['speech_c1']}", flush=True)
        def level(c: int, per: int) -> dict:
            t, cpu, procs = time.perf_counter(), _cpu_times(), process_cpu_s(server.process.pid)
            stats = triton_stats.read(server_options.metrics_url)
            s = summarize(run_level(url, avatar, c, turns, options, per_process=per))
            s["client_processes"] = len(client_shares(c, per))
            s["models"] = triton_stats.between(stats, triton_stats.read(server_options.metrics_url))
            s["wall_s"] = time.perf_counter() - t
            s["gpu_util_pct"] = mem.mean_util(t, time.perf_counter())
            s["cpu_util_pct"] = _cpu_busy_pct(cpu, _cpu_times())
            s["gpu_mib_by_process"] = gpu_mib_by_process(server.process.pid)  # at the level's end
            used = process_cpu_s(server.process.pid)
            s["cores_by_process"] = {k: round((v - procs.get(k, 0.0)) / s["wall_s"], 2)
                                     for k, v in sorted(used.items(), key=lambda kv: procs.get(kv[0], 0.0) - kv[1])}
            return s

        for key, c in zip(level_keys(levels), levels):
            result["levels"][key] = level(c, per_process)
            print(f"[{config_name}] text c={key}: {result['levels'][key]}", flush=True)
        for c in one_process:
            result.setdefault("one_process", {})[str(c)] = level(c, 0)
            print(f"[{config_name}] text c={c}, one client process: {result['one_process'][str(c)]}", flush=True)
    result["peak_gpu_memory_mib"] = mem.peak_mib
    result["peak_gpu_memory_mib_per_gpu"] = mem.peak_per_gpu_mib
    result["peak_gpu_memory_mib_by_phase"] = mem.peak_by_phase_mib
    result["gpu_memory_before_start_mib"] = mem.before_mib
    return result


def process_cpu_s(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by tritonserver, its stubs (summed per model, with their own children: the
    orchestrator's espeak-ng worker) and the clients: this process and its finished client processes."""
    from deploy.processes import children, stubs

    tick = os.sysconf("SC_CLK_TCK")

    def cpu(pid: int, children: bool = False) -> float:
        try:
            fields = [int(f) for f in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
            return sum(fields[:4] if children else fields[:2]) / tick  # utime + stime (+ cutime + cstime)
        except (OSError, ValueError, IndexError):
            return 0.0

    out = {"tritonserver": cpu(server_pid), "clients (bench)": cpu(os.getpid(), children=True)}
    for st in stubs(server_pid):
        out[st.model] = out.get(st.model, 0.0) + cpu(st.pid) + sum(cpu(c) for c in children(st.pid))
    return out


def gpu_mib_by_process(server_pid: int) -> dict[str, int]:
    """GPU memory in use now (MiB) by tritonserver and its stubs, summed per model (nvidia-smi's compute apps); {}
    where nvidia-smi is missing or lists nothing."""
    from deploy.processes import stubs

    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return mib_by_name(out, {server_pid: "tritonserver"} | {st.pid: st.model for st in stubs(server_pid)})


def mib_by_name(compute_apps: str, names: dict[int, str]) -> dict[str, int]:
    """nvidia-smi's `pid, used_memory` rows summed by each pid's name ("other" for a process not named), largest
    first; a row it cannot read ("[N/A]" under some drivers) is left out."""
    out: dict[str, int] = {}
    for line in compute_apps.splitlines():
        try:
            pid, mib = (int(v) for v in line.split(","))
        except ValueError:
            continue
        name = names.get(pid, "other")
        out[name] = out.get(name, 0) + mib
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat (None where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _cpu_busy_pct(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float | None:
    """Share of the host's CPU time that was busy between two _cpu_times() readings, in %."""
    if a is None or b is None or b[1] == a[1]:
        return None
    return 100.0 * (b[0] - a[0]) / (b[1] - a[1])


def orchestrator_instances(config_name: str) -> int:
    """Instances of the orchestrator in the variant `config_name` (its rendered config, else config.pbtxt)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    folder = MODEL_REPOSITORY / "talking_head"
    path = folder / "configs" / f"{config_name}.pbtxt"
    cfg = text_format.Parse((path if path.exists() else folder / "config.pbtxt").read_text(), mc.ModelConfig())
    return sum(g.count * max(len(g.gpus), 1) for g in cfg.instance_group) or 1


def measure_or_resume(config_name: str, options: dict, levels: list[int], turns: int, workdir: Path, port: int,
                      speech: np.ndarray, gpus: int | None, resume: bool, stub_threads: int | None = 1,
                      avatar_image: bytes | None = None, per_process: int = 0,
                      one_process: tuple[int, ...] = ()) -> dict:
    """serve_and_measure (the server's STUB_THREAD_VARS = stub_threads), saved to <workdir>/runs/<config>.json; with
    resume, a saved run of the same settings (the same client processes at each level; a saved run without that
    figure ran each level in one process)."""
    path = workdir / "runs" / f"{config_name}.json"
    if resume and path.exists():
        saved = json.loads(path.read_text())
        if (saved.get("options") == options and saved.get("turns") == turns and saved.get("gpus") == gpus
                and saved.get("stub_threads") == (stub_threads or None)
                and sorted(concurrency_of(c) for c in saved.get("levels", {})) == sorted(levels)
                and all(s.get("client_processes", 1) == len(client_shares(concurrency_of(c), per_process))
                        for c, s in saved.get("levels", {}).items())
                and sorted(int(c) for c in saved.get("one_process", {})) == sorted(one_process)):
            print(f"[{config_name}] reusing {path}", flush=True)
            return saved
    with thread_pools(stub_threads):
        result = serve_and_measure(config_name, options, levels, turns, workdir, port, speech, gpus, avatar_image,
                                   per_process, one_process)
    if stub_threads:
        result["stub_threads"] = stub_threads
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return result


def _level(levels: dict, c: int) -> dict | None:
    return levels.get(c) or levels.get(str(c))


def scale_out_summary(runs: dict[int, dict]) -> dict[str, dict]:
    """GPU count -> capacity, capacity per GPU, ratio to 1 GPU, TTFA p95 at the capacity point (and at the
    highest level measured, which still shows the trend when no level is real time)."""
    caps = {n: capacity(r["levels"]) for n, r in runs.items()}
    base = caps.get(1)
    out = {}
    for n in sorted(runs):
        r, cap = runs[n], caps[n]
        at_cap = _level(r["levels"], cap) if cap else None
        top = max((concurrency_of(c) for c in r["levels"]), default=None)
        at_top = _level(r["levels"], top) if top is not None else None
        out[str(n)] = {"gpus": n, "config": r["config"], "capacity": cap, "capacity_per_gpu": cap / n,
                       "ratio_vs_1": cap / base if base else None,
                       "ttfa_p95_at_capacity_s": at_cap["ttfa_p95_s"] if at_cap else None,
                       "max_level": top, "ttfa_p95_at_max_level_s": at_top["ttfa_p95_s"] if at_top else None,
                       "peak_gpu_memory_mib": r.get("peak_gpu_memory_mib"), "server_start_s": r.get("server_start_s")}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    ap.add_argument("--naive-concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--concurrency-repeats", type=int, default=1, metavar="N",
                    help="run the list of --concurrency levels N times in the same server run (levels '48', "
                         "'48#2', ...); capacity counts a level only when every run of it is real time")
    ap.add_argument("--sessions-per-process", type=int, default=8, metavar="N",
                    help="at most N sessions per client process (0: every session in this one process, as runs "
                         "before 2026-12-05 did); one Python process receiving dozens of frame streams is bound by "
                         "its GIL and stamps arrivals late")
    ap.add_argument("--one-process-levels", type=int, nargs="*", default=[], metavar="C",
                    help="after the levels, run these concurrencies again with every session in one client process "
                         "(the single process's own effect on the figures, same server run)")
    ap.add_argument("--turns", type=int, default=2, help="turns per session at each level")
    ap.add_argument("--max-reply-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7,
                    help="LLM sampling temperature of the turns (top-k 40). 0.7 is the workload of every run in "
                         "BENCHMARKS.md; greedy decoding (the turns' default since 0266ded) of the base preset's "
                         "random weights loops on a few tokens and gives replies 5x shorter in audio")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--skip-stages", action="store_true", help="no per-stage microbenchmarks")
    ap.add_argument("--port", type=int, default=8101)
    ap.add_argument("--naive-config", default="gpu_naive", help="model config variant of the baseline")
    ap.add_argument("--optimized-config", default="gpu", help="model config variant of the optimized pipeline")
    ap.add_argument("--stage-device", default="cuda", help="device of the per-stage microbenchmarks")
    ap.add_argument("--gpus", type=int, nargs="+", default=None, metavar="N",
                    help="scale-out: run the optimized pipeline on each of these GPU counts "
                         f"(1 or one of {list(SCALE_OUT_GPUS)}; config <optimized-config>_x<N>)")
    ap.add_argument("--scale-concurrency", type=int, nargs="+", default=None,
                    help="concurrency levels of the runs on more than one GPU (default: --concurrency)")
    ap.add_argument("--skip-naive", action="store_true", help="no naive baseline run")
    ap.add_argument("--avatar", type=Path, default=None,
                    help="the face to register, a PNG/JPEG (default: the demo avatar, from scikit-image)")
    ap.add_argument("--resume", action="store_true", help="reuse end-to-end runs saved under <out>/runs/")
    ap.add_argument("--stub-threads", type=int, default=1,
                    help=f"{'/'.join(STUB_THREAD_VARS)} of the server's processes unless set (0: the launcher's default, 1)")
    args = ap.parse_args(argv)
    if args.gpus is not None:
        bad = [n for n in args.gpus if n != 1 and n not in SCALE_OUT_GPUS]
        if bad:
            ap.error(f"--gpus: no configs rendered for {bad} GPUs; choose from {[1, *SCALE_OUT_GPUS]}")
        base, n = parse_variant(args.optimized_config)
        if n != 1 or (any(g > 1 for g in args.gpus) and base not in SCALABLE_VARIANTS):
            ap.error(f"--gpus scales out --optimized-config {args.optimized_config!r}: "
                     f"give one of {list(SCALABLE_VARIANTS)} (1 GPU)")
        args.gpus = sorted(set(args.gpus) | {1})  # the optimized run is the 1-GPU point
    return args


def scale_out_configs(args: argparse.Namespace) -> dict[int, str]:
    """GPU count -> --model-config-name of the scale-out runs (1 -> the optimized run's)."""
    return {n: variant_name(args.optimized_config, n) for n in (args.gpus or [])}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpus and max(args.gpus) > (have := available_gpus()):
        raise SystemExit(f"--gpus {' '.join(map(str, args.gpus))}: this host has {have} GPU(s) to use")
    args.out.mkdir(parents=True, exist_ok=True)
    write_orchestrator_artifacts(MODEL_REPOSITORY / "talking_head" / "1", args.preset, 0,
                                 models=[s.name for s in served_stages(PRESETS[args.preset])])

    report: dict = {"date": datetime.date.today().isoformat(), "preset": args.preset, "hardware": hardware(),
                    "command": "python -m loadtests.bench_gpu " + " ".join(sys.argv[1:] if argv is None else argv)}
    if not args.skip_stages:
        from loadtests.stage_bench import bench
        report["stages"] = {"naive": bench(args.preset, args.stage_device, "fp32", 30),
                            "optimized": bench(args.preset, args.stage_device, None, 30)}
        print("stages:", json.dumps(report["stages"]), flush=True)
    speech = speech_utterance()
    avatar = args.avatar.read_bytes() if args.avatar else None
    base_opts = {"max_reply_tokens": args.max_reply_tokens, "ignore_eos": True, "temperature": args.temperature}
    one_gpu = 1 if args.gpus else None  # scale-out: keep the 1-GPU runs on one GPU of the multi-GPU host
    if not args.skip_naive:
        report["naive"] = measure_or_resume(args.naive_config, {**base_opts, "streaming": False, "lipsync_batch": 1},
                                            args.naive_concurrency, args.turns, args.out, args.port, speech,
                                            one_gpu, args.resume, args.stub_threads, avatar, args.sessions_per_process)
    optimized_opts = {**base_opts, "lipsync_batch": 8}
    levels = args.concurrency * args.concurrency_repeats
    report["optimized"] = measure_or_resume(args.optimized_config, optimized_opts, levels,
                                            args.turns, args.out, args.port, speech, one_gpu, args.resume,
                                            args.stub_threads, avatar, args.sessions_per_process,
                                            tuple(args.one_process_levels))
    report["capacity"] = {name: capacity(report[name]["levels"]) for name in ("naive", "optimized") if name in report}
    if args.gpus:
        runs = {1: report["optimized"]}
        for n, config in scale_out_configs(args).items():
            if n > 1:
                runs[n] = measure_or_resume(config, optimized_opts, args.scale_concurrency or args.concurrency,
                                            args.turns, args.out, args.port, speech, n, args.resume,
                                            args.stub_threads, avatar, args.sessions_per_process)
        report["scale_out"] = {"gpus": args.gpus, "runs": {str(n): r for n, r in runs.items() if n > 1},
                               "summary": scale_out_summary(runs)}
    (args.out / "bench_gpu.json").write_text(json.dumps(report, indent=2, default=str))
    from loadtests.bench_report import write_report
    write_report(report, args.out)
    return 0


def hardware() -> str:
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        gpu = "no GPU"
    import os
    return f"{gpu}; {os.cpu_count()} CPU cores; {platform.platform()}"


if __name__ == "__main__":
    raise SystemExit(main())
