"""A live microphone through the front door, with the server idle and under load (issue 15, "A twelfth pass").

    python -m loadtests.door_microphone [--repository model_repository] [--load 6] [--door-tree DIR] [--out FILE]

Starts the embedded server on free ports and `python -m deploy.front_door` of `--door-tree` (e.g. a worktree of an
older commit, to measure "before") with its default quotas, TLS and a keys file; `--load` sessions ask turns back to
back straight to Triton (the load other clients make); then the SDK's microphone streams a spoken question three
times (espeak-ng: heard out, then asked twice, the third over the second's reply) through the door at real time,
32 ms chunks, as `python -m client talk --mic` does. Prints every `vad` and `done` event with its time, how the stream ended, and the load's turns; writes them as
JSON to `--out`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from client import media
from client.sdk import TalkingHeadClient
from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.contract import events as ev
from export.contract import media as C
from export.contract.layout import BUILD, MODEL_REPOSITORY
from loadtests.adversarial import KEYS
from loadtests.door_connections import start_door
from loadtests.run import checkout_commit

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France?"


def recording(text: str = QUESTION) -> np.ndarray:
    """`text` spoken three times: heard out (4 s of silence for the answer), asked again and at once a third time
    over that reply (0.5 s later: a barge-in), then heard out."""
    wav = Path(tempfile.mkdtemp()) / "q.wav"
    subprocess.run([shutil.which("espeak-ng") or "espeak-ng", "-w", str(wav), text], check=True)
    q = media.read_audio(wav, rate=C.INPUT_SAMPLE_RATE)
    pause = lambda s: np.zeros(int(s * C.INPUT_SAMPLE_RATE), np.float32)  # noqa: E731
    return np.concatenate([pause(0.5), q, pause(4), q, pause(0.5), q, pause(4)])


class Load:
    """`n` sessions asking short text turns back to back straight to Triton, on threads."""

    def __init__(self, url: str, avatar: str, n: int):
        self.done = self.failed = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(url, avatar, k), daemon=True) for k in range(n)]

    def _loop(self, url: str, avatar: str, k: int) -> None:
        with TalkingHeadClient(url) as c:
            while not self._stop.is_set():
                try:
                    c.turn(avatar_id=avatar, text=f"Tell me about the number {k + self.done}.",
                           options={"session": f"load{k}", "max_reply_tokens": 24})
                    self.done += 1
                except Exception:
                    self.failed += 1

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)


def speak(url: str, ca: Path, avatar: str, audio: np.ndarray) -> dict:
    """The SDK's microphone through the door at real time; its events and how it ended."""
    events, ended = [], "completed"
    t0 = time.monotonic()
    with TalkingHeadClient(url, ssl=True, root_certificates=str(ca), api_key=KEYS["victim"]) as c:
        try:
            for e in c.microphone(session="mic", avatar_id=avatar, audio=audio, options={"min_silence_ms": 400}):
                if e.type == ev.VAD:
                    events.append({"t_s": round(time.monotonic() - t0, 2), "vad": e.data["state"],
                                   "audio_t_s": e.data["t_s"]})
                elif e.type == ev.DONE:
                    events.append({"t_s": round(time.monotonic() - t0, 2), "done": e.data["turn_id"],
                                   "transcript": e.data.get("transcript"), "reply": e.data.get("reply"),
                                   "interrupted": e.data.get("interrupted")})
        except Exception as e:  # what the user's client got
            ended = f"{type(e).__name__}: {e}"[:300]
    return {"ended": ended, "after_s": round(time.monotonic() - t0, 2), "events": events}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY,
                    help="model repository (default: the real models', `make export`)")
    ap.add_argument("--load", type=int, default=6, help="sessions asking turns straight to Triton (default 6)")
    ap.add_argument("--door-tree", type=Path, default=ROOT, help="the tree whose deploy.front_door runs")
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    args = ap.parse_args(argv)
    workdir = BUILD / "door-microphone"
    workdir.mkdir(parents=True, exist_ok=True)
    options = ServerOptions(repository=args.repository, workdir=workdir / "triton", exit_timeout_s=10,
                            **server_ports())
    audio = recording()
    with EmbeddedServer(options):
        proc, door = start_door(args.door_tree.resolve(), options.grpc_url, workdir, flags=())
        try:
            with TalkingHeadClient(options.grpc_url) as c:
                avatar = c.register_avatar(demo_avatar_png()).id
            with Load(options.grpc_url, avatar, args.load) as load:
                time.sleep(3 if args.load else 0)  # the load's turns in flight
                result = speak(f"localhost:{door.port}", door.ca, avatar, audio)
            result.update(load=args.load, load_turns_done=load.done, load_turns_failed=load.failed,
                          recording_s=round(audio.size / C.INPUT_SAMPLE_RATE, 2),
                          door_code=checkout_commit(args.door_tree.resolve()), repository=str(args.repository))
        finally:
            proc.terminate()
            proc.wait(20)
    for e in result["events"]:
        print(json.dumps(e))
    print(f"the microphone's stream: {result['ended']} after {result['after_s']} s (recording "
          f"{result['recording_s']} s); load: {result['load_turns_done']} turns done, "
          f"{result['load_turns_failed']} failed")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
