"""BENCHMARKS.md tables and PNG plots from a bench_gpu.json report."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from export.contract import spec
from loadtests.bench_clients import DROPPED_TURNS_LISTED, FIRST_EVENTS, concurrency_of


def _f(x, digits=3, scale=1.0) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}"


def _p50_p95(pair) -> str:
    """A [p50, p95] pair as one table cell ("120.5 / 200"); "—" where there is none."""
    return " / ".join(f"{v:g}" for v in pair) if pair else "—"


def _turn_table(title: str, rows: list[tuple[str, object, list]], cell) -> list[str]:
    """A table of one figure per turn of a session (`rows`: label, concurrency, the figure of each turn), each
    written by `cell`; "—" for a turn a level does not have."""
    n = max(len(t) for _, _, t in rows)
    return [title, "", "| input | concurrency | " + " | ".join(f"turn {k + 1}" for k in range(n)) + " |",
            "| --- | ---: |" + " ---: |" * n,
            *(f"| {label} | {c} | " + " | ".join(cell(t[k]) if k < len(t) else "—" for k in range(n)) + " |"
              for label, c, t in rows), ""]


STAGES = tuple(s.name for s in spec.STAGES + spec.VARIANT_MODELS)  # a turn's stage models, in pipeline order
FRAME_STAGES = (spec.LIPSYNC_FRAMES.name, *(s.name for s in spec.LIPSYNC_FAMILIES.values()))  # what makes frames


STAGE_ROWS = [
    ("vocoder_xrt_b1", "vocoder × real time, batch 1", 0),
    ("vocoder_xrt_b16", "vocoder × real time, batch 16", 0),
    ("vocoder_xrt_b1_chunk", "vocoder × real time, batch 1, streamed 64-frame chunk as served (optimized: CUDA graph)", 0),
    ("lipsync_fps_b1", "Wav2Lip frames/s, batch 1", 0),
    ("lipsync_fps_b32", "Wav2Lip frames/s, batch 32", 0),
    ("lipsync_fps_b64", "Wav2Lip frames/s, batch 64", 0),
    ("lipsync_fps_b1_served", "Wav2Lip frames/s, batch 1 as served (optimized: CUDA graph)", 0),
    ("lipsync_fps_b8_served", "Wav2Lip frames/s, batch 8 as served (optimized: CUDA graph)", 0),
    ("llm_ms_per_token_b1", "LLM ms/token, batch 1 (past 128)", 2),
    ("llm_tokens_per_s_b16", "LLM tokens/s, batch 16", 0),
    ("asr_rtf_5s", "ASR real-time factor, 5 s utterance (20 tokens)", 4),
    ("asr_rtf_5s_served", "ASR real-time factor as served (optimized: encoder graph, whole-transcript decoder request)", 4),
    ("tts_ms_sentence", "TTS ms per 60-phoneme sentence", 1),
    ("tts_ms_sentence_served", "TTS ms per 60-phoneme sentence as served (optimized: bucketed CUDA graphs)", 1),
    ("peak_memory_gb", "peak PyTorch memory, GB", 2),
]


def _dropped_turns(rows: list[tuple[str, object, dict]]) -> list[str]:
    """The turns with frames dropped late, each beside its first audio and its first call to the stage that makes
    its frames (ms from the turn's start on the server); nothing where no level has any."""
    found = [(label, c, t) for label, c, s in rows for t in s.get("dropped_turns") or []]
    if not found:
        return []
    lines = [f"The turns with frames dropped late (the most first, up to {DROPPED_TURNS_LISTED} a level): ms from the "
             "turn's start to its first audio, and to its first frame-stage call sent and answered:", "",
             "| input | concurrency | turn | dropped | first audio | frame stage | sent | answered |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for label, c, t in found:
        stage = next((m for m in FRAME_STAGES if m in t["first_calls_ms"]), None)
        sent, answered = t["first_calls_ms"][stage] if stage else (None, None)
        lines.append(f"| {label} | {c} | {t['turn'] + 1} | {t['dropped']} | {_f(t['first_audio_ms'], 1)} | "
                     f"{stage or '—'} | {_f(sent, 1)} | {_f(answered, 1)} |")
    return lines + [""]


def markdown(report: dict) -> str:
    lines = [f"# Benchmarks ({report['preset']} preset)", "",
             f"- date: {report['date']}", f"- hardware: {report['hardware']}",
             f"- command: `{report['command']}`", ""]
    if "stages" in report:
        lines += ["## Per stage (PyTorch modules on the GPU, outside Triton; medians)", "",
                  "| figure | naive (fp32 eager) | optimized (fp16/bf16) |", "| --- | ---: | ---: |"]
        for key, label, digits in STAGE_ROWS:
            lines.append(f"| {label} | {_f(report['stages']['naive'].get(key), digits)} |"
                         f" {_f(report['stages']['optimized'].get(key), digits)} |")
        lines.append("")
    for name in ("naive", "optimized"):
        if name in report:  # bench_gpu --skip-naive leaves the baseline out
            lines += _end_to_end(name, report[name])
    cap = report["capacity"]
    n1, o1 = (report["naive"]["levels"].get("1") or report["naive"]["levels"].get(1)) if "naive" in report else None, \
        report["optimized"]["levels"].get("1") or report["optimized"]["levels"].get(1)
    lines += ["## Summary", "",
              "- largest measured concurrency with every session real time: "
              + ", ".join(f"{name} {cap[name]}" for name in ("naive", "optimized") if name in cap)]
    if n1 and o1 and o1["ttff_p50_s"] and n1["ttff_p50_s"]:
        lines.append(f"- TTFF p50 at concurrency 1: naive {n1['ttff_p50_s'] * 1000:.0f} ms, optimized "
                     f"{o1['ttff_p50_s'] * 1000:.0f} ms ({n1['ttff_p50_s'] / o1['ttff_p50_s']:.1f}× lower)")
        lines.append(f"- TTFA p50 at concurrency 1: naive {n1['ttfa_p50_s'] * 1000:.0f} ms, optimized "
                     f"{o1['ttfa_p50_s'] * 1000:.0f} ms")
    lines.append("")
    if "scale_out" in report:
        lines += scale_out_markdown(report)
    return "\n".join(lines)


def _memory_phases(r: dict) -> str:
    """" (before the server started 512, start and warm-up 40000, levels 24300)": where the peak came, if known."""
    parts = ([f"before the server started {r['gpu_memory_before_start_mib']}"]
             if r.get("gpu_memory_before_start_mib") is not None else [])
    parts += [f"{phase} {mib}" for phase, mib in (r.get("peak_gpu_memory_mib_by_phase") or {}).items()]
    return f" ({', '.join(parts)})" if parts else ""


def _end_to_end(name: str, r: dict) -> list[str]:
    """The end-to-end section of one server run: per-level latency and real-time table, then stage times."""
    lines = [f"## End to end, {name} (`--model-config-name={r['config']}`, options {json.dumps(r['options'])})", "",
             (f"Server start to ready: {_f(r['server_start_s'], 1)} s; peak GPU memory (nvidia-smi): "
              f"{r['peak_gpu_memory_mib']} MiB{_memory_phases(r)}."
              + (f" Server environment: OPENBLAS/OMP/MKL/OPENCV_FOR_THREADS_NUM={r['stub_threads']}." if r.get("stub_threads")
                 else "")), "",
             ("| input | concurrency | turns | failed | TTFA p50 / p95 (ms) | TTFF p50 / p95 (ms) |"
              " turn total p50 (s) | audio p50 (s) | real-time sessions | late frames (dropped by the server, of them in a turn's 1st s; received late in a turn's 1st s) |"
              " worst lateness p95 (ms) | frames skipped | underruns |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows = ([("speech 5 s", 1, r["speech_c1"])] + [("text", c, s) for c, s in r["levels"].items()]
            + [("text", f"{c}, one client process", s) for c, s in r.get("one_process", {}).items()])
    for label, c, s in rows:
        lines.append(f"| {label} | {c} | {s['turns']} | {s['failed']} | {_f(s['ttfa_p50_s'], 0, 1000)} / "
                     f"{_f(s['ttfa_p95_s'], 0, 1000)} | {_f(s['ttff_p50_s'], 0, 1000)} / {_f(s['ttff_p95_s'], 0, 1000)} |"
                     f" {_f(s['total_p50_s'], 2)} | {_f(s['audio_s_p50'], 1)} | {s['real_time_sessions']}/{s['turns']} |"
                     f" {s['late_frames']} ({s.get('late_dropped', '—')}, {s.get('late_dropped_first_s', '—')}; {s.get('late_in_first_s', '—')}) | {_f(s.get('late_max_ms_p95'), 0)} |"
                     f" {s.get('frames_skipped', '—')} | {s['audio_underruns']} |")
    lines += ["", "Server time inside each stage model per turn (ms, mean; BLS call to answer, queueing included):", "",
              "| input | concurrency | " + " | ".join(STAGES) + " |", "| --- | ---: |" + " ---: |" * len(STAGES)]
    for label, c, s in rows:
        st = s.get("stage_ms_per_turn", {})
        lines.append(f"| {label} | {c} | " + " | ".join(_f(st.get(k), 0) for k in STAGES) + " |")
    lines.append("")
    firsts = [(label, c, s["server_first_ms"]) for label, c, s in rows if s.get("server_first_ms")]
    if firsts:
        names = [n for n in FIRST_EVENTS if any(n in f for _, _, f in firsts)]
        lines += ["Where a turn's first audio goes, on the server: ms from the turn's start to its first event of each "
                  "type (p50 / p95; text: the first LLM token's text, piece: the first piece cut for TTS):", "",
                  "| input | concurrency | " + " | ".join(names) + " |", "| --- | ---: |" + " ---: |" * len(names)]
        lines += [f"| {label} | {c} | " + " | ".join(_p50_p95(f.get(n)) for n in names) + " |"
                  for label, c, f in firsts]
        lines.append("")
    calls = [(label, c, s["first_calls_ms"]) for label, c, s in rows if s.get("first_calls_ms")]
    if calls:
        stages = [m for m in STAGES if any(m in f for _, _, f in calls)]
        lines += ["A turn's first call to each stage: ms from the turn's start to the call being sent, and answered "
                  "(p50 / p95 each; the time between is the stage's queue, compute and the BLS round trip):", "",
                  "| input | concurrency | " + " | ".join(f"{m} sent | {m} answered" for m in stages) + " |",
                  "| --- | ---: |" + " ---: | ---: |" * len(stages)]
        lines += [f"| {label} | {c} | " + " | ".join(_p50_p95(f.get(m, {}).get(k)) for m in stages
                                                    for k in ("sent", "answered")) + " |" for label, c, f in calls]
        lines.append("")
    by_turn = [(label, c, s["ttfa_ms_by_turn"]) for label, c, s in rows if len(s.get("ttfa_ms_by_turn") or []) > 1]
    if by_turn:
        lines += _turn_table("TTFA by a session's turn, p50 / p95 (ms; every session of a level starts its first turn "
                             "at once, its later turns where its earlier ended):", by_turn, _p50_p95)
    dropped = [(label, c, s["dropped_by_turn"]) for label, c, s in rows if any(s.get("dropped_by_turn") or [])]
    if dropped:
        lines += _turn_table("Frames the server dropped late, by a session's turn (levels with any):", dropped, str)
    lines += _dropped_turns(rows)
    served = [(c, s["models"]) for _, c, s in rows[1:] if s.get("models")]
    if served:
        models = [m for m in STAGES if any(m in ms for _, ms in served)]
        lines += ["Triton's own figures per model while each text level ran (its metrics; loadtests/triton_stats.py): "
                  "rows per batch, queue ms and compute ms per request (a request's compute is its batch's):", "",
                  "| concurrency | " + " | ".join(models) + " |", "| ---: |" + " ---: |" * len(models)]
        lines += [f"| {c} | " + " | ".join(
            f"{ms[m]['rows_per_batch']:g} / {ms[m]['queue_ms']:g} / {ms[m]['compute_ms']:g}" if m in ms else "—"
            for m in models) + " |" for c, ms in served]
        lines.append("")
    busy = [(c, s) for _, c, s in rows[1:] if s.get("gpu_util_pct") is not None or s.get("cpu_util_pct") is not None]
    if busy:
        lines += ["Host load while each text level ran (GPU: nvidia-smi utilization, share of time a kernel ran; "
                  "CPU: busy share of all cores, /proc/stat; cores: CPU seconds per wall second of the busiest "
                  "processes, stubs summed per model):", "",
                  "| concurrency | client processes | GPU busy % | CPU busy % | cores used by |",
                  "| ---: | ---: | ---: | ---: | --- |"]
        lines += [f"| {c} | {s.get('client_processes', 1)} | {_f(s.get('gpu_util_pct'), 0)} |"
                  f" {_f(s.get('cpu_util_pct'), 0)} | "
                  + ", ".join(f"{k} {v:.1f}" for k, v in list((s.get("cores_by_process") or {}).items())[:6]) + " |"
                  for c, s in busy]
        lines.append("")
    held = [(c, s["gpu_mib_by_process"]) for _, c, s in rows[1:] if s.get("gpu_mib_by_process")]
    if held:
        if r.get("gpu_mib_after_warmup"):
            held.insert(0, ("warm-up", r["gpu_mib_after_warmup"]))
        lines += ["GPU memory held after the warm-up and at each text level's end (MiB, nvidia-smi's compute apps, "
                  "stubs summed per model; what a stage's caching allocator grew to stays held):", "",
                  "| after | total | by process |", "| --- | ---: | --- |"]
        lines += [f"| {c} | {sum(m.values())} | " + ", ".join(f"{k} {v}" for k, v in list(m.items())[:8]) + " |"
                  for c, m in held]
        lines.append("")
    return lines


def scale_out_markdown(report: dict) -> list[str]:
    """The "Scale-out" section (bench_gpu --gpus): capacity per GPU count, then each multi-GPU run in full."""
    so = report["scale_out"]
    lines = [f"## Scale-out across GPUs (`--gpus {' '.join(str(n) for n in so['gpus'])}`)", "",
             ("The optimized pipeline once per GPU count, the server seeing only the first N GPUs; instances "
              "placed by export/toolchain/placement.py (every GPU a replica of the single-GPU set). Capacity: the largest "
              "measured concurrency with every session real time; the ratio is to the 1-GPU capacity."), "",
             ("| GPUs | config | real-time capacity (sessions) | per GPU | vs 1 GPU | TTFA p95 at capacity (ms) |"
              " highest level: TTFA p95 (ms) | peak GPU memory, busiest GPU (MiB) | server start (s) |"),
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, s in sorted(so["summary"].items(), key=lambda kv: int(kv[0])):
        top = "—" if s["max_level"] is None else f"c={s['max_level']}: {_f(s['ttfa_p95_at_max_level_s'], 0, 1000)}"
        ratio = "—" if s["ratio_vs_1"] is None else f"{s['ratio_vs_1']:.2f}×"
        lines.append(f"| {n} | `{s['config']}` | {s['capacity']} | {_f(s['capacity_per_gpu'], 1)} | {ratio} |"
                     f" {_f(s['ttfa_p95_at_capacity_s'], 0, 1000)} | {top} | {s['peak_gpu_memory_mib']} |"
                     f" {_f(s['server_start_s'], 1)} |")
    lines.append("")
    for n, r in sorted(so["runs"].items(), key=lambda kv: int(kv[0])):
        lines += _end_to_end(f"optimized on {n} GPUs", r)
    return lines


def _ms_series(levels: dict, key: str) -> tuple[list[int], list[float]]:
    """Concurrency levels and one latency figure in ms (NaN where no turn completed); first runs of each level."""
    cs = sorted((c for c in levels if str(c) == str(concurrency_of(c))), key=int)  # "48", not its repeat "48#2"
    return [int(c) for c in cs], [levels[c][key] * 1000 if levels[c][key] is not None else float("nan") for c in cs]


def _latency_axes(ax, ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)


def plots(report: dict, out: Path) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("naive", "optimized"):
        if name not in report:
            continue
        for key, style in (("ttfa_p95_s", "-o"), ("ttff_p95_s", "--s")):
            xs, ys = _ms_series(report[name]["levels"], key)
            if any(y == y for y in ys):
                ax.plot(xs, ys, style, label=f"{name} {key[:4].upper()} p95")
    _latency_axes(ax, "ms at the client", "Latency vs concurrency")
    save(fig, "latency_vs_concurrency.png")
    if "stages" in report:
        fig, ax = plt.subplots(figsize=(6, 4))
        keys = ["vocoder_xrt_b1_chunk", "lipsync_fps_b32", "llm_tokens_per_s_b16"]
        x = range(len(keys))
        for i, name in enumerate(("naive", "optimized")):
            ax.bar([k + i * 0.4 for k in x], [report["stages"][name].get(k, 0) for k in keys], width=0.4, label=name)
        ax.set_xticks([k + 0.2 for k in x], ["vocoder ×RT b1 (chunk)", "Wav2Lip fps b32", "LLM tok/s b16"])
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("Per-stage throughput")
        save(fig, "stages.png")
    if "scale_out" in report:
        runs = {"1": report["optimized"], **report["scale_out"]["runs"]}
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in sorted(runs, key=int):
            ax.plot(*_ms_series(runs[n]["levels"], "ttfa_p95_s"), "-o", label=f"{n} GPU{'s' if int(n) > 1 else ''}")
        _latency_axes(ax, "TTFA p95, ms at the client", "Scale-out: latency vs concurrency per GPU count")
        save(fig, "scale_out.png")
    return written


def write_report(report: dict, out: Path) -> None:
    (out / "BENCHMARKS.md").write_text(markdown(report))
    for p in plots(report, out):
        print(f"wrote {p}")
    print(markdown(report))


if __name__ == "__main__":
    src = Path(sys.argv[1])
    write_report(json.loads(src.read_text()), src.parent)
