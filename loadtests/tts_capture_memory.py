"""GPU memory of capturing the tts stage's CUDA graphs (gpu variant, export/runtime/tts_graphs.py), base preset:
allocated after loading the weights, peak allocated during the capture, reserved after it and after empty_cache,
with cuDNN's algorithm timing on and off. On the GPU machine:

    python3 -m loadtests.tts_capture_memory
"""
from __future__ import annotations

import argparse
import time

GIB = 2**30


def measure(cudnn_benchmark: bool) -> dict[str, float]:
    import torch

    from export.contract.presets import get_preset
    from export.contract.spec import TTS
    from export.runtime.torch_runtime import TorchStage, graph_batches, load_graph
    from export.runtime.tts_graphs import GraphedTts

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    stage = TorchStage(TTS, load_graph(TTS, get_preset("base"), 0, "cuda", "fp32"), "cuda", "fp32")
    torch.cuda.synchronize()
    out = {"weights_gib": torch.cuda.memory_allocated() / GIB}
    t0 = time.perf_counter()
    graphed = GraphedTts(stage, graph_batches(TTS), TTS.gpu_graphs,
                         cudnn_benchmark=cudnn_benchmark)
    out["capture_s"] = time.perf_counter() - t0
    out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
    out["reserved_after_gib"] = torch.cuda.memory_reserved() / GIB
    torch.cuda.empty_cache()
    out["reserved_after_empty_cache_gib"] = torch.cuda.memory_reserved() / GIB
    del graphed, stage
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cudnn-benchmark", choices=("on", "off", "both"), default="both")
    args = ap.parse_args(argv)
    for mode in ("off", "on") if args.cudnn_benchmark == "both" else (args.cudnn_benchmark,):
        figures = measure(mode == "on")
        print(f"cudnn.benchmark {mode}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
