"""What one large avatar costs (issue 15): the demo portrait upscaled to SIDE x SIDE (nearest neighbour, JPEG at
OpenCV's default quality 95: 0.76 MB at 4096), registered with the service's limits and saved into a fresh
AvatarStore; prints its upload, file and in-memory bytes as JSON.

    .venv/bin/python -m loadtests.avatar_bytes [--side 4096]

`held_bytes` is what one cached avatar holds (its arrays); `store_memory_bound` what one AvatarStore may hold
in memory at most (count limit x held bytes, or the store's byte budget where it has one). Needs the tiny
export's face detector (build/tiny_repository: `python -m export --preset tiny --repository build/tiny_repository`).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ensemble.avatar import AvatarStore, demo_avatar_png, register
from ensemble.options import Limits
from export.contract.layout import BUILD
from export.toolchain.face import onnx_detector


def measure(side: int, detector: Path) -> dict:
    portrait = cv2.imdecode(np.frombuffer(demo_avatar_png(), np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".jpg", cv2.resize(portrait, (side, side), interpolation=cv2.INTER_NEAREST))
    assert ok
    upload, limits = buf.tobytes(), Limits()
    detect = onnx_detector(detector, threads=2)
    start = time.perf_counter()
    avatar = register(upload, limits.max_avatar_bytes, limits.max_avatar_pixels, min_side=limits.min_avatar_side,
                      detect=detect)
    seconds = time.perf_counter() - start
    held = avatar.image.nbytes + avatar.face.nbytes + avatar.keypoints.nbytes
    with tempfile.TemporaryDirectory() as root:
        store = AvatarStore(Path(root))
        store.save(avatar)
        on_disk = (Path(root) / f"{avatar.id}.npz").stat().st_size
    budget = getattr(store, "max_memory_bytes", None)
    bound = store.capacity * held if budget is None else min(store.capacity * held, budget)
    return {"side": side, "upload_bytes": len(upload), "stored_image": list(avatar.image.shape), "box": list(avatar.box),
            "file_bytes": on_disk, "held_bytes": held, "store_capacity": store.capacity, "store_memory_budget": budget,
            "store_memory_bound": bound, "register_s": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096, help="the square image's side in pixels (default 4096)")
    parser.add_argument("--detector", type=Path, default=BUILD / "tiny_repository" / "face_detector" / "1" / "model.onnx",
                        help="the face_detector ONNX graph (default: the tiny export's)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.side, args.detector)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
