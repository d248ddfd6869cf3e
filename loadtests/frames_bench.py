"""The gpu variant's frame composer (ensemble/frames_torch.py, the lipsync_frames model) on its own: frames per
second and host CPU per frame by batch size, and how far its frames are from the orchestrator's OpenCV path.

    python -m loadtests.frames_bench [--avatar PATH] [--device cuda] [--batches 1 8 16 32 64] [--out FILE]
    python -m loadtests.frames_bench --first-use   # a fresh process's first batch of each size, and peak memory

Per batch size: median wall time of one batch (poses, warp, paste and JPEG, synchronized), frames/s, and the host
CPU seconds per frame (process time: launches, matrices, JPEG bytes back). Parity: mean and 99.9th percentile of
|composed - OpenCV| over 50 frames of a happy and a surprised gesture (0..255 levels).

--first-use: in this fresh process, every batch size 1..64 once in turn and then once again (the avatar's, JPEG
included, synchronized, composed COMPOSE_ROWS at a time as served, or --max-rows): what a served lipsync_frames
instance pays the first time a size comes, against the same size again, and the peak device memory reserved.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ensemble import avatar as avatars
from ensemble import motion, mouth
from ensemble.frames_torch import COMPOSE_ROWS, FrameComposer
from export.contract.layout import MODEL_REPOSITORY
from export.contract.spec import LIPSYNC
from export.runtime.torch_runtime import graphed_module
from export.toolchain.models import mouth_warp


def poses_and_visemes(n: int) -> tuple[list[motion.Pose], np.ndarray]:
    poses = [motion.pose_at(k / 25, "happy" if k < n // 2 else "surprised", 0.0 if k < n // 2 else n / 50)
             for k in range(n)]
    t = np.arange(n, dtype=np.float32) / 25
    visemes = np.stack([0.5 + 0.5 * np.sin(7 * t), 0.5 * np.sin(3 * t), np.zeros_like(t), np.zeros_like(t),
                        0.5 + 0.5 * np.sin(5 * t)], axis=1).astype(np.float32)
    return poses, visemes


def opencv_frame(a: avatars.Avatar, warp: torch.nn.Module, pose: motion.Pose, visemes: np.ndarray) -> np.ndarray:
    """The orchestrator's frame (ensemble/lipsync.py WarpFrames): motion.render, mouth.cut, the warp (CPU),
    mouth.paste; uint8 BGR [H, W, 3]."""
    g = mouth.avatar_geometry(a.image, a.keypoints)
    image = motion.render(a.image, a.box, pose)
    m = mouth.crop_matrix(g, a.image.shape, a.box, pose)
    crop = mouth.cut(image, m)
    with torch.inference_mode():
        w = warp(torch.from_numpy(crop[None]), torch.from_numpy(visemes[None]), torch.from_numpy(g.row()[None]))
    return mouth.paste(image, crop, w.numpy()[0], m)


def parity(composer: FrameComposer, a: avatars.Avatar, warp: torch.nn.Module, n: int = 50) -> dict:
    poses, visemes = poses_and_visemes(n)
    got = composer.compose(a, poses, visemes).cpu().numpy().transpose(0, 2, 3, 1).astype(int)
    d = np.stack([np.abs(frame - opencv_frame(a, warp, pose, v)) for frame, pose, v in zip(got, poses, visemes)])
    return {"frames": n, "mean_abs": round(float(d.mean()), 4), "p999_abs": float(np.percentile(d, 99.9))}


def synchronizer(composer: FrameComposer):
    """A call that waits for the composer's device (nothing to wait for on the CPU): timings of whole batches."""
    return torch.cuda.synchronize if composer.device.type == "cuda" else (lambda: None)


def throughput(composer: FrameComposer, a: avatars.Avatar, batch: int, repeats: int, quality: int) -> dict:
    poses, visemes = poses_and_visemes(max(batch, 64))
    sync = synchronizer(composer)
    walls, cpus = [], []
    for k in range(repeats + 3):
        rows = [(k * batch + i) % len(poses) for i in range(batch)]
        sync()
        t, c = time.perf_counter(), time.process_time()
        composer.compose_jpegs(a, [poses[r] for r in rows], visemes[rows], quality)
        sync()
        if k >= 3:  # warm-up first
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    wall = statistics.median(walls)
    return {"batch": batch, "batch_ms": round(wall * 1000, 2), "frames_per_s": round(batch / wall),
            "host_cpu_ms_per_frame": round(statistics.median(cpus) * 1000 / batch, 3)}


def first_use(composer: FrameComposer, a: avatars.Avatar, sizes: range, quality: int) -> list[dict]:
    poses, visemes = poses_and_visemes(sizes[-1])
    sync = synchronizer(composer)

    def once(n: int) -> float:
        sync()
        t = time.perf_counter()
        composer.compose_jpegs(a, poses[:n], visemes[:n], quality)
        sync()
        return round((time.perf_counter() - t) * 1000, 2)

    first = {n: once(n) for n in sizes}
    return [{"batch": n, "first_ms": first[n], "again_ms": once(n)} for n in sizes]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--avatar", type=Path, help="portrait image (default: the demo avatar)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="where the face_detector graph is")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here too")
    ap.add_argument("--profile", type=int, metavar="BATCH", help="also print torch.profiler's table of one batch size")
    ap.add_argument("--first-use", action="store_true", help="only each batch size's first call against its second")
    ap.add_argument("--max-rows", type=int, default=COMPOSE_ROWS, help="the most frames composed at once")
    args = ap.parse_args(argv)
    from export.toolchain.face import onnx_detector

    detect = onnx_detector(args.repository / "face_detector" / "1" / "model.onnx", threads=1)
    data = args.avatar.read_bytes() if args.avatar else avatars.demo_avatar_png()
    a = avatars.register(data, max_bytes=10**8, max_pixels=10**8, detect=detect)
    warp = mouth_warp.LipsyncGraph(mouth_warp.build()).eval()
    served = mouth_warp.LipsyncGraph(mouth_warp.build()).eval().to(args.device)
    if args.device.startswith("cuda"):  # as the lipsync_frames model runs it (deploy/backends/torch_gpu)
        served = graphed_module(LIPSYNC, served, args.device, LIPSYNC.gpu_precision, {})
    composer = FrameComposer(served, args.device, max_rows=args.max_rows)
    if args.first_use:
        rows = first_use(composer, a, range(1, 65), args.quality)
        extra = [r["first_ms"] - r["again_ms"] for r in rows]
        cuda = composer.device.type == "cuda"
        peak_mib = torch.cuda.max_memory_reserved(composer.device) >> 20 if cuda else None
        print(f"frame composer first use on {args.device}, avatar {a.image.shape[1]}x{a.image.shape[0]}, composed "
              f"{args.max_rows} rows at a time: first call over the second, summed over sizes 1..64 "
              f"{sum(extra):.0f} ms, largest {max(extra):.1f} ms (size {rows[extra.index(max(extra))]['batch']}); "
              f"peak memory reserved {peak_mib} MiB")
        print("| batch | first ms | again ms |\n| ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['batch']} | {r['first_ms']} | {r['again_ms']} |")
        if args.out:
            args.out.write_text(json.dumps({"max_rows": args.max_rows, "peak_reserved_mib": peak_mib,
                                            "first_use": rows}, indent=2))
        return 0
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "avatar": list(a.image.shape), "parity": parity(composer, a, warp),
              "throughput": [throughput(composer, a, b, args.repeats, args.quality) for b in args.batches]}
    print(f"frame composer on {report['device']}, avatar {a.image.shape[1]}x{a.image.shape[0]}: |composed - OpenCV| "
          f"mean {report['parity']['mean_abs']}, p99.9 {report['parity']['p999_abs']} levels")
    print("| batch | ms a batch | frames/s | host CPU ms a frame |\n| ---: | ---: | ---: | ---: |")
    for r in report["throughput"]:
        print(f"| {r['batch']} | {r['batch_ms']} | {r['frames_per_s']} | {r['host_cpu_ms_per_frame']} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if composer.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            throughput(composer, a, args.profile, 10, args.quality)
        key = "cuda_time_total" if composer.device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
