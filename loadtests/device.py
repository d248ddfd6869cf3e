"""Stage what one call to the GPU machine needs, within the device tool's 64 MiB carry (no network there).

    python -m loadtests.device stage          # here, once: prints the carry list and its size

then, on the GPU machine (device tool; carry the paths it printed):

    source .device/activate.sh && TRITON_HOME=/tmp/triton \\
      python3 -m loadtests.bench_gpu --preset base --avatar build/device/avatar.jpg --out $OUT/bench ...

What is staged:
  .device/          Triton 2.51 (the nvidia-pytriton wheel's tritonserver, Python 3.12 stub), the client wheels and
                    numpy 1.26.4 (../shared/device/stage-triton.sh, the machine's own staging script)
  .device-wheels/   piper-phonemize-cross 1.2.1 for CPython 3.12, slimmed to English: espeak-ng's dictionaries of
                    the other languages are dropped (the wheel is 15.6 MB, most of it dictionaries); the
                    orchestrator phonemizes the reply with it (export/contract/phonemes.py); pytest, for the
                    GPU tests:  source .device/activate.sh && python3 -m pytest -p no:cacheprovider -m gpu \\
                    tests/test_stage_graphs.py tests/test_llm_sessions.py tests/test_asr_sessions.py
  model_repository/vad/1, model_repository/face_detector/1
                    the two graphs that are not PyTorch modules (the gpu variant rebuilds the others from the
                    preset and seed on the machine)
  build/device/avatar.jpg   the demo avatar (scikit-image is not on the machine)
  build/device/before.patch with --before COMMIT: that commit's code as a patch over this tree, to measure the two
                    in one call (runs on one machine differ less than runs on two; BENCHMARKS.md)
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

from ensemble.avatar import demo_avatar_png
from export.contract.layout import BUILD, MODEL_REPOSITORY, ROOT

CARRY_LIMIT = 64 * 1024 * 1024
PIPER_WHEEL = "piper-phonemize-cross==1.2.1"
TEST_WHEELS = ("pytest==9.2.0", "pluggy==1.7.0", "iniconfig==2.3.1", "pygments==2.21.0")  # the GPU tests there
KEEP_DICTS = ("en_dict",)  # espeak-ng-data/<lang>_dict files kept (the voices are English)
STAGE_TRITON = ROOT.parent / "shared" / "device" / "stage-triton.sh"
DEVICE, WHEELS, AVATAR = ROOT / ".device", ROOT / ".device-wheels", BUILD / "device" / "avatar.jpg"
GRAPHS = [MODEL_REPOSITORY / "vad" / "1", MODEL_REPOSITORY / "face_detector" / "1"]


def slim_wheel(wheel: Path, out_dir: Path, keep: tuple[str, ...] = KEEP_DICTS) -> Path:
    """A copy of the wheel without espeak-ng's dictionaries other than `keep`, its RECORD rewritten."""
    out = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        names = [n for n in src.namelist()
                 if not (n.endswith("_dict") and "/espeak-ng-data/" in n and Path(n).name not in keep)]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = []
        for name in names:
            if name == record:
                continue
            data = src.read(name)
            dst.writestr(src.getinfo(name), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append([name, f"sha256={digest}", str(len(data))])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows + [[record, "", ""]])
        dst.writestr(record, buf.getvalue())
    return out


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def stage_before(commit: str) -> Path:
    """build/device/before.patch: the serving code of `commit` as a patch over the working tree, for an A/B in one
    device call (no git there): `cp -a . /tmp/before && cd /tmp/before && patch -p1 -s < build/device/before.patch`."""
    # the serving code only: both runs use this tree's benchmark (loadtests/)
    diff = subprocess.run(["git", "diff", "--binary", "HEAD", commit, "--", "ensemble", "export", "deploy",
                           "model_repository"], cwd=ROOT, capture_output=True, check=True).stdout
    out = AVATAR.parent / "before.patch"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(diff)
    print(f"{out.relative_to(ROOT)}: HEAD -> {commit}, {len(diff) / 1024:.0f} KiB")
    return out


def stage(before: str | None = None) -> int:
    if not (DEVICE / "activate.sh").is_file():
        if not STAGE_TRITON.is_file():
            raise SystemExit(f"{STAGE_TRITON} is missing: it comes with the GPU machine's documentation")
        subprocess.run(["bash", str(STAGE_TRITON), str(DEVICE)], check=True, cwd=ROOT)
    WHEELS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform",
                        "manylinux_2_28_x86_64", "-d", tmp, PIPER_WHEEL], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        for old in WHEELS.glob("piper_phonemize*.whl"):
            old.unlink()
        slim = slim_wheel(wheel, WHEELS)
        print(f"{slim.name}: {wheel.stat().st_size / 1e6:.1f} MB -> {slim.stat().st_size / 1e6:.1f} MB")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(WHEELS), *TEST_WHEELS],
                   check=True)
    missing = [g for g in GRAPHS if not (g / "model.onnx").is_file()]
    if missing:
        from export.__main__ import main as export_main

        if export_main(["--models", "vad", "face_detector"]) != 0:
            return 1
    AVATAR.parent.mkdir(parents=True, exist_ok=True)
    image = cv2.imdecode(np.frombuffer(demo_avatar_png(), np.uint8), cv2.IMREAD_COLOR)
    AVATAR.write_bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    (AVATAR.parent / "before.patch").unlink(missing_ok=True)
    if before:
        stage_before(before)
    git_dir = Path(subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip())
    exclude = (ROOT / git_dir if not git_dir.is_absolute() else git_dir) / "info" / "exclude"
    for name in (".device/", ".device-wheels/"):
        if name not in (exclude.read_text() if exclude.is_file() else ""):
            exclude.parent.mkdir(parents=True, exist_ok=True)
            with open(exclude, "a") as f:
                f.write(f"/{name}\n")
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.split(b"\0")
    tree = sum(_size(ROOT / n.decode()) for n in tracked if n and (ROOT / n.decode()).is_file())
    carry = [DEVICE, WHEELS, *GRAPHS, AVATAR.parent]
    total = tree + sum(_size(p) for p in carry)
    print("carry: " + " ".join(str(p.relative_to(ROOT)) for p in carry))
    print(f"with the tree: {total / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
    return 0 if total <= CARRY_LIMIT else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("stage",))
    ap.add_argument("--before", metavar="COMMIT",
                    help="also write build/device/before.patch: that commit's code as a patch over this tree (an A/B "
                         "of the two in one device call)")
    args = ap.parse_args(argv)
    if shutil.which("git") is None:
        raise SystemExit("git is needed to size the working tree")
    return stage(args.before)


if __name__ == "__main__":
    raise SystemExit(main())
