"""Per-stage speed of the PyTorch modules on one device, outside Triton (medians of timed repeats).

    python -m loadtests.stage_bench --preset base --device cuda

Vocoder × real time (batch 1 and best batch), Wav2Lip frames/s, LLM ms/token at
batch 1 and tokens/s at batch 16, ASR real-time factor on a 5 s utterance, TTS
ms per sentence; each in the spec's GPU precision ("optimized") and in fp32
("naive"). Inputs are fresh random tensors rotated between repeats.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from export.contract import media, spec
from export.contract.presets import get_preset
from export.runtime.torch_runtime import DTYPES, load_graph


def timed(fn: Callable[[int], object], device: str, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn(i) over `repeats` runs (after `warmup`), synchronizing the device."""
    for i in range(warmup):
        fn(i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _inputs(graph, n: int, batch: int, dtype, device, **sizes):
    sets = []
    for seed in range(n):
        xs = graph.example_inputs(batch=batch, seed=seed, **sizes)
        sets.append([x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device) for x in xs])
    return sets


def bench(preset_name: str, device: str, precision: str | None, repeats: int) -> dict:
    """precision: one dtype for every stage (the naive baseline: "fp32"), or None for each spec's GPU precision."""
    preset = get_preset(preset_name)
    out: dict[str, float] = {}

    def load(s):
        prec = precision or s.gpu_precision
        return load_graph(s, preset, 0, device, prec), DTYPES[prec]

    with torch.inference_mode():
        g, dtype = load(spec.VOCODER)
        frames_1s = round(media.TTS_MEL.frames_per_second)  # 86 mel frames = 1 s of audio
        for batch in (1, 16):
            sets = _inputs(g, 4, batch, dtype, device, frames=frames_1s)
            s = timed(lambda i: g(*sets[i % 4]), device, repeats)
            out[f"vocoder_xrt_b{batch}"] = batch * (frames_1s * media.TTS_MEL.hop_length / media.TTS_MEL.sample_rate) / s

        # as the gpu variant serves a streamed chunk: numpy in and out, CUDA graphs in the optimized runtime
        frames = max(f for f in spec.VOCODER.gpu_graphs)
        s = _served(g, spec.VOCODER, preset, precision, device, repeats, 1, frames=frames)
        out["vocoder_xrt_b1_chunk"] = frames * media.TTS_MEL.hop_length / media.TTS_MEL.sample_rate / s
        del g

        g, dtype = load(spec.LIPSYNC)
        for batch in (1, 32, 64):
            sets = _inputs(g, 4, batch, dtype, device)
            s = timed(lambda i: g(*sets[i % 4]), device, repeats)
            out[f"lipsync_fps_b{batch}"] = batch / s
        for batch in (1, 8):
            out[f"lipsync_fps_b{batch}_served"] = batch / _served(g, spec.LIPSYNC, preset, precision, device, repeats, batch)
        del g

        g, dtype = load(spec.LLM)
        for batch in (1, 16):
            if precision is None and device.startswith("cuda"):  # the gpu variant: session cache, graph replays
                s = _session_step(g, dtype, device, batch, repeats)
            else:  # the cache shipped in and out of an eager step
                sets = _inputs(g, 4, batch, dtype, device, tokens=1, past=128)
                s = timed(lambda i: g(*sets[i % 4]), device, repeats)
            out[f"llm_ms_per_token_b{batch}"] = s * 1000
            out[f"llm_tokens_per_s_b{batch}"] = batch / s
        del g

        out["asr_rtf_5s"] = _asr_rtf(*load(spec.ASR_ENCODER), load(spec.ASR_DECODER)[0], preset, device, repeats)
        if precision is None and device.startswith("cuda"):  # the gpu variant: audio sent once, caches kept
            out["asr_rtf_5s_served"] = _asr_session_rtf(load(spec.ASR_ENCODER)[0], load(spec.ASR_DECODER)[0],
                                                        preset, device, repeats)

        g, dtype = load(spec.TTS)
        sets = _inputs(g, 4, 1, dtype, device, phonemes=60)
        out["tts_ms_sentence"] = timed(lambda i: g(*sets[i % 4]), device, repeats) * 1000
        out["tts_ms_sentence_served"] = _served(g, spec.TTS, preset, precision, device, repeats, 1, phonemes=60) * 1000
    if device.startswith("cuda"):
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return out


def _served(graph, stage_spec, preset, precision: str | None, device: str, repeats: int, batch: int, **sizes) -> float:
    """Seconds of one call of the stage's runtime as the gpu variant serves it (numpy feeds in, numpy out):
    TorchStage (eager) for the naive precision, its CUDA graphs (graphed_stage) for the optimized one on CUDA."""
    from export.runtime.torch_runtime import TorchStage, graphed_stage

    prec = precision or stage_spec.gpu_precision
    stage = TorchStage(stage_spec, graph, device, prec)
    if precision is None and device.startswith("cuda") and stage_spec.gpu_graphs:
        stage = graphed_stage(stage, stage_spec.preset_dims(preset))
    sets = [{t.name: x.float().numpy() if x.is_floating_point() else x.numpy()
             for t, x in zip(stage_spec.inputs, graph.example_inputs(batch=batch, seed=k, **sizes))} for k in range(4)]
    return timed(lambda i: stage(sets[i % 4]), device, repeats)


def _session_step(graph, dtype, device: str, batch: int, repeats: int, past: int = 128) -> float:
    """Seconds of one decode step of `batch` sessions with `past` cached tokens each, as the gpu variant's llm
    model serves it (export/llm_sessions.SessionLLM.run: one token id per session in, logits to the host out)."""
    import numpy as np

    from export.runtime.batching import BatchRunner
    from export.runtime.llm_sessions import SessionLLM
    from export.runtime.torch_runtime import TorchStage

    prec = next(k for k, v in DTYPES.items() if v == dtype)
    runner = SessionLLM(spec.LLM, graph, device, BatchRunner(spec.LLM, TorchStage(spec.LLM, graph, device, prec)),
                        slots=batch)
    rng = np.random.default_rng(0)
    vocab = graph.model.config.vocab_size

    def req(sid, n, start=False):
        return {"input_ids": rng.integers(0, vocab, (1, n), dtype=np.int64),
                "session_id": np.asarray([[sid]], dtype=np.int64), "session_start": np.asarray([[start]])}

    for sid in range(1, batch + 1):
        runner.run([req(sid, past, start=True)])
    return timed(lambda i: runner.run([req(sid, 1) for sid in range(1, batch + 1)]), device, repeats)


def _asr_session_rtf(enc, dec, preset, device: str, repeats: int, steps: int = 20) -> float:
    """As _asr_rtf through the gpu variant's runtimes as served: the encoder's CUDA graph (numpy in and out),
    then one whole-transcript request on export/asr_sessions (features sent once, prompt of 4, `steps` greedy
    steps: the end id is suppressed, so the limit stops it)."""
    import numpy as np

    from export.runtime.asr_sessions import session_asr
    from export.runtime.batching import BatchRunner
    from export.runtime.torch_runtime import GraphedStage, TorchStage

    encoder = GraphedStage(TorchStage(spec.ASR_ENCODER, enc, device, spec.ASR_ENCODER.gpu_precision),
                           spec.ASR_ENCODER.preset_dims(preset))
    prec = spec.ASR_DECODER.gpu_precision
    runner = session_asr(spec.ASR_DECODER, dec, device,
                         BatchRunner(spec.ASR_DECODER, TorchStage(spec.ASR_DECODER, dec, device, prec)), slots=2)
    mels = [{"mel": x.float().numpy()} for x in (enc.example_inputs(batch=1, seed=k)[0] for k in range(2))]

    def asr(i):
        feats = encoder(mels[i % 2])["audio_features"]
        (out,) = runner.run([{"tokens": np.ones((1, 4), np.int64), "audio_features": feats,
                              "session_id": np.asarray([[i + 1]], dtype=np.int64),
                              "session_start": np.ones((1, 1), bool), "max_new_tokens": np.asarray([[steps]]),
                              "end_id": np.zeros((1, 1), np.int64), "suppress_ids": np.zeros((1, 1), np.int64)}])
        assert out["new_ids"].shape == (1, steps), out
    return timed(asr, device, max(3, repeats // 5)) / 5.0


def _asr_rtf(enc, dtype, dec, preset, device: str, repeats: int, steps: int = 20) -> float:
    """Encoder over the 30 s window plus `steps` decoder steps (a 5 s utterance is ~15-20 tokens), per second of speech."""
    mel = _inputs(enc, 2, 1, dtype, device)
    kv = spec.ASR_DECODER.shape(spec.ASR_DECODER.input("past_kv"), preset)  # [L, 2, H, "past", Dh]

    def asr(i):
        feats = enc(*mel[i % 2])
        past = torch.zeros((1, *kv[:3], 0, kv[4]), device=device, dtype=dtype)
        tok = torch.ones((1, 4), dtype=torch.int64, device=device)
        for _ in range(steps):
            _, past = dec(tok, feats, past)
            tok = tok[:, :1]
    return timed(asr, device, max(3, repeats // 5)) / 5.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    results = {label: bench(args.preset, args.device, precision, args.repeats)
               for label, precision in (("naive", "fp32"), ("optimized", None))}
    for label, figures in results.items():
        print(label, json.dumps({k: round(v, 3) for k, v in figures.items()}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
