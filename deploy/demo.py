"""The end-to-end demo (`make demo`): export, serve, ask one spoken question, write the answer.

1. exports the preset's graphs to ONNX (skipped when up to date),
2. speaks the question to a WAV with espeak-ng,
3. starts the embedded Triton server (CPU variant),
4. registers the demo avatar (a public-domain NASA portrait shipped in scikit-image),
5. streams the question through `python -m client ask`, which writes out/answer.wav and
   out/answer.mp4 and prints the latency summary,
6. stops the server.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from client import cli
from client.sdk import TalkingHeadClient
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.__main__ import main as export_main
from export.contract.layout import GRPC_PORT, ROOT

QUESTION = "What can you do for me today?"


def speak(text: str, path: Path) -> Path:
    """A WAV of `text` spoken by espeak-ng (Debian package espeak-ng)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not installed: `apt-get install espeak-ng` (make demo does this)")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([espeak, "-w", str(path), text], check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset to export and serve (default: tiny)")
    ap.add_argument("--question", default=QUESTION, help="what the user says")
    ap.add_argument("--out", type=Path, default=ROOT / "out", help="where answer.wav and answer.mp4 go")
    ap.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    print(f"== 1/4 export ({args.preset})", flush=True)
    if export_main(["--preset", args.preset]) != 0:
        return 1
    t_export = time.perf_counter() - t0

    print(f"== 2/4 question: {args.question!r} (espeak-ng)", flush=True)
    question = speak(args.question, args.out / "question.wav")
    avatar_png = args.out / "avatar.png"
    avatar_png.write_bytes(demo_avatar_png())

    print("== 3/4 starting the embedded Triton server (CPU variant)", flush=True)
    options = ServerOptions(grpc_port=args.grpc_port, http_port=args.grpc_port - 1, metrics_port=args.grpc_port + 1)
    with EmbeddedServer(options) as server:
        print(f"ready in {server.started_s:.1f} s\n{server.endpoints()}", flush=True)
        url = options.grpc_url
        with TalkingHeadClient(url) as client:
            avatar = client.register_avatar(avatar_png.read_bytes())
        print(f"avatar {avatar.id}: {avatar.message}", flush=True)
        print("== 4/4 asking", flush=True)
        code = cli.main(["ask", "--url", url, "--audio", str(question), "--avatar", avatar.id,
                         "--out", str(args.out), "--name", "answer"])
    print(f"server stopped. demo total {time.perf_counter() - t0:.1f} s (export {t_export:.1f} s)."
          " Weights are seeded random: the answer's words, voice and lips are noise until real checkpoints are given.")
    return code


if __name__ == "__main__":
    sys.exit(main())
