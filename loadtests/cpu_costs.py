"""Per-unit CPU costs of the orchestrator's own work: what a session costs the host.

    python -m loadtests.cpu_costs [--avatar PATH] [--frames 300]

One 25 fps frame of the warp lip-sync as the orchestrator makes it (ensemble/lipsync.py WarpFrames): the head
pose rendered (ensemble/motion.py), the mouth crop cut and the warp's result pasted back (ensemble/mouth.py),
JPEG; CPU seconds per frame (process time, all threads) and wall time, so a library's own thread pool that
spins shows as CPU above wall. Run it with OPENCV_FOR_THREADS_NUM=1 and without to compare. Also: sampling one
LLM token (export.contract.sampling.sample, temperature 0.7, top-k 40) over the base preset's vocabulary and over the
top candidates the gpu variant's llm answers a session with, and text ->
phoneme ids of one sentence with the exported Piper voice (the quality benchmark's 24 sentences; p50 and p95).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from ensemble import avatar as avatars
from ensemble import motion, mouth
from export.contract.layout import MODEL_REPOSITORY
from export.contract.presets import get_preset
from export.contract.sampling import Candidates, greedy, sample
from export.contract.spec import LLM_CANDIDATES


def median_ms(fn, repeats: int = 60) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def warp_frame(a: avatars.Avatar, geometry: mouth.MouthGeometry, k: int) -> bytes:
    pose = motion.pose_at(k / 25, "happy", 0.0)  # an emotion that moves the head and the brows
    image = motion.render(a.image, a.box, pose)
    m = mouth.crop_matrix(geometry, a.image.shape, a.box, pose)
    crop = mouth.cut(image, m)
    return avatars.encode_jpeg(mouth.paste(image, crop, crop, m), quality=85)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--avatar", type=Path, help="portrait image (default: the demo avatar)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="where the face_detector graph is")
    args = ap.parse_args(argv)
    from export.toolchain.face import onnx_detector

    detect = onnx_detector(args.repository / "face_detector" / "1" / "model.onnx", threads=1)
    data = args.avatar.read_bytes() if args.avatar else avatars.demo_avatar_png()
    a = avatars.register(data, max_bytes=10**8, max_pixels=10**8, detect=detect)
    geometry = mouth.avatar_geometry(a.image, a.keypoints)
    for k in range(10):
        warp_frame(a, geometry, k)
    cpu, wall = time.process_time(), time.perf_counter()
    for k in range(args.frames):
        warp_frame(a, geometry, k)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    logits = np.random.default_rng(1).standard_normal(get_preset("base").llm.vocab_size).astype(np.float32)
    rng = np.random.default_rng(0)
    print(f"OpenCV threads {cv2.getNumThreads()} (OPENCV_FOR_THREADS_NUM={os.environ.get('OPENCV_FOR_THREADS_NUM')}),"
          f" {os.cpu_count()} cores, avatar {a.image.shape[1]}x{a.image.shape[0]}")
    print(f"warp frame: {1000 * cpu / args.frames:.2f} ms CPU, {1000 * wall / args.frames:.2f} ms wall"
          f" ({args.frames} frames; a real-time session needs 25 a second)")
    banned = list(range(151643, 151665))  # Qwen2.5's 22 special tokens
    top = np.argsort(-logits)[:LLM_CANDIDATES]
    cands = Candidates(top, logits[top])  # what the gpu variant's llm answers a session with
    for what, scores in (("the whole vocabulary's logits", logits), (f"{LLM_CANDIDATES} candidates", cands)):
        ms = median_ms(lambda: sample(scores, rng, 0.7, 40, banned, vocab=151665))
        print(f"sample token from {what}: {ms:.2f} ms wall")
    print(f"greedy token (the default) from the whole vocabulary's logits: "
          f"{median_ms(lambda: greedy(logits, banned, vocab=151665)):.2f} ms wall")
    voice = args.repository / "talking_head" / "1" / "tts_voice.json"
    if voice.is_file():
        from export.contract.phonemes import PiperPhonemizer
        from loadtests.quality import SENTENCES

        ph = PiperPhonemizer.from_json(voice)
        times = []
        for _ in range(5):
            for sentence in SENTENCES:
                t = time.perf_counter()
                ph.utterances(sentence)
                times.append(time.perf_counter() - t)
        times.sort()
        print(f"phonemize a sentence: p50 {1000 * times[len(times) // 2]:.2f} ms, p95 "
              f"{1000 * times[int(len(times) * 0.95)]:.2f} ms ({len(SENTENCES)} sentences x 5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
