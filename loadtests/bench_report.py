"""BENCHMARKS.md tables and PNG plots from a bench_gpu.json report."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, digits=3, scale=1.0) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}"


STAGES = ("asr_encoder", "asr_decoder", "llm", "tts", "vocoder", "lipsync")
STAGE_ROWS = [
    ("vocoder_xrt_b1", "vocoder × real time, batch 1", 0),
    ("vocoder_xrt_b16", "vocoder × real time, batch 16", 0),
    ("lipsync_fps_b1", "Wav2Lip frames/s, batch 1", 0),
    ("lipsync_fps_b32", "Wav2Lip frames/s, batch 32", 0),
    ("lipsync_fps_b64", "Wav2Lip frames/s, batch 64", 0),
    ("llm_ms_per_token_b1", "LLM ms/token, batch 1 (past 128)", 2),
    ("llm_tokens_per_s_b16", "LLM tokens/s, batch 16", 0),
    ("asr_rtf_5s", "ASR real-time factor, 5 s utterance (20 tokens)", 4),
    ("tts_ms_sentence", "TTS ms per 60-phoneme sentence", 1),
    ("peak_memory_gb", "peak PyTorch memory, GB", 2),
]


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
        r = report[name]
        lines += [f"## End to end, {name} (`--model-config-name={r['config']}`, options {json.dumps(r['options'])})", "",
                  f"Server start to ready: {_f(r['server_start_s'], 1)} s; peak GPU memory (nvidia-smi): "
                  f"{r['peak_gpu_memory_mib']} MiB.", "",
                  "| input | concurrency | turns | failed | TTFA p50 / p95 (ms) | TTFF p50 / p95 (ms) |"
                  " turn total p50 (s) | audio p50 (s) | real-time sessions | late frames | underruns |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        rows = [("speech 5 s", 1, r["speech_c1"])] + [("text", c, s) for c, s in r["levels"].items()]
        for label, c, s in rows:
            lines.append(f"| {label} | {c} | {s['turns']} | {s['failed']} | {_f(s['ttfa_p50_s'], 0, 1000)} / "
                         f"{_f(s['ttfa_p95_s'], 0, 1000)} | {_f(s['ttff_p50_s'], 0, 1000)} / {_f(s['ttff_p95_s'], 0, 1000)} |"
                         f" {_f(s['total_p50_s'], 2)} | {_f(s['audio_s_p50'], 1)} | {s['real_time_sessions']}/{s['turns']} |"
                         f" {s['late_frames']} | {s['audio_underruns']} |")
        lines += ["", "Server time inside each stage model per turn (ms, mean; BLS call to answer, queueing included):", "",
                  "| input | concurrency | " + " | ".join(STAGES) + " |", "| --- | ---: |" + " ---: |" * len(STAGES)]
        for label, c, s in rows:
            st = s.get("stage_ms_per_turn", {})
            lines.append(f"| {label} | {c} | " + " | ".join(_f(st.get(k), 0) for k in STAGES) + " |")
        lines.append("")
    cap = report["capacity"]
    n1, o1 = report["naive"]["levels"].get("1") or report["naive"]["levels"].get(1), \
        report["optimized"]["levels"].get("1") or report["optimized"]["levels"].get(1)
    lines += ["## Summary", "",
              f"- largest measured concurrency with every session real time: naive {cap['naive']}, optimized {cap['optimized']}"]
    if n1 and o1 and o1["ttff_p50_s"] and n1["ttff_p50_s"]:
        lines.append(f"- TTFF p50 at concurrency 1: naive {n1['ttff_p50_s'] * 1000:.0f} ms, optimized "
                     f"{o1['ttff_p50_s'] * 1000:.0f} ms ({n1['ttff_p50_s'] / o1['ttff_p50_s']:.1f}× lower)")
        lines.append(f"- TTFA p50 at concurrency 1: naive {n1['ttfa_p50_s'] * 1000:.0f} ms, optimized "
                     f"{o1['ttfa_p50_s'] * 1000:.0f} ms")
    lines.append("")
    return "\n".join(lines)


def plots(report: dict, out: Path) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("naive", "optimized"):
        levels = report[name]["levels"]
        cs = sorted(levels, key=int)
        for key, style in (("ttfa_p95_s", "-o"), ("ttff_p95_s", "--s")):
            ys = [levels[c][key] * 1000 if levels[c][key] is not None else float("nan") for c in cs]
            if any(y == y for y in ys):
                ax.plot([int(c) for c in cs], ys, style, label=f"{name} {key[:4].upper()} p95")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("ms at the client")
    ax.legend(fontsize=8)
    ax.set_title("Latency vs concurrency")
    fig.tight_layout()
    path = out / "latency_vs_concurrency.png"
    fig.savefig(path, dpi=120)
    written.append(path)
    if "stages" in report:
        fig, ax = plt.subplots(figsize=(6, 4))
        keys = ["vocoder_xrt_b1", "lipsync_fps_b32", "llm_tokens_per_s_b16"]
        x = range(len(keys))
        for i, name in enumerate(("naive", "optimized")):
            ax.bar([k + i * 0.4 for k in x], [report["stages"][name][k] for k in keys], width=0.4, label=name)
        ax.set_xticks([k + 0.2 for k in x], ["vocoder ×RT b1", "Wav2Lip fps b32", "LLM tok/s b16"])
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("Per-stage throughput")
        fig.tight_layout()
        path = out / "stages.png"
        fig.savefig(path, dpi=120)
        written.append(path)
    return written


def write_report(report: dict, out: Path) -> None:
    (out / "BENCHMARKS.md").write_text(markdown(report))
    for p in plots(report, out):
        print(f"wrote {p}")
    print(markdown(report))


if __name__ == "__main__":
    src = Path(sys.argv[1])
    write_report(json.loads(src.read_text()), src.parent)
