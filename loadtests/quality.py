"""Quality of the served models, measured through a running server: does it hear, think, speak and move its lips?

    python -m loadtests.quality                        # exports the real weight set (model_repository, as the
                                                       # demo does), serves it, prints every figure
    python -m loadtests.quality --url HOST:PORT        # against a server that is already running

  ASR      word error rate of the served ASR on espeak-ng speech (24 sentences, 4 voice/speed settings)
  voice    word error rate of the served ASR on the served voice saying 24 sentences (action "say")
  vocoder  HiFi-GAN: the log-mel of the voice's speech through the `hifigan` graph, then the served ASR
  LLM      a factual answer, token streaming, the end of the turn, a long reply's first sentence spoken early
  A/V      per-frame mouth opening measured from the frames against the audio's loudness (Pearson r), and the
           mouth closed in silent frames

tests/test_quality.py asserts the thresholds on the same functions.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from client.media import read_audio
from client.sdk import TalkingHeadClient
from client.turns import TurnResult
from ensemble.features import hifigan_log_mel, resample
from export.contract import events as ev
from export.contract import media

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "Please tell me a story about the sea.",
    "What can you do for me today?", "I would like a cup of coffee with milk.",
    "The weather is lovely this morning.", "Where is the nearest train station?",
    "My brother plays the guitar every evening.", "She bought a new red bicycle last week.",
    "Turn left at the end of the street.", "The meeting starts after lunch.",
    "Can you help me find my keys?", "We watched a funny movie together.",
    "The children are playing in the garden.", "He reads the newspaper before breakfast.",
    "This soup needs a little more salt.", "Our flight leaves early in the morning.",
    "Please close the window, it is cold.", "The library is open until six.",
    "I forgot to call my mother yesterday.", "Dogs love to run on the beach.",
    "The doctor will see you in a moment.", "Let us plan a trip to the mountains.",
    "The music was too loud at the party.", "Thank you very much for your help.",
]
VOICES = (("en-us", 175), ("en-us", 140), ("en", 200), ("en-us+f3", 160))  # espeak-ng voice, words per minute
HEARING = {"max_reply_tokens": 1, "video": False, "temperature": 0}  # a turn that only transcribes


def espeak(text: str, voice: str = "en-us", speed: int = 175, rate: int = media.INPUT_SAMPLE_RATE) -> np.ndarray:
    """`text` spoken by espeak-ng (Debian package), mono float32 at `rate`."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng; make test does it)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
        return read_audio(wav, rate=rate)


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split())


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus word error rate, lower case, punctuation removed."""
    import jiwer

    return float(jiwer.wer([normalize(r) for r in refs], [normalize(h) for h in hyps]))


def transcribe(client: TalkingHeadClient, avatar_id: str, audio16k: np.ndarray) -> str:
    """What the served ASR hears in `audio16k` (a spoken turn that replies with one token)."""
    return client.turn(avatar_id=avatar_id, audio=audio16k, options=HEARING).transcript or ""


def asr_wer(client, avatar_id, sentences=SENTENCES) -> tuple[float, list[tuple[str, str]]]:
    pairs = []
    for k, text in enumerate(sentences):
        voice, speed = VOICES[k % len(VOICES)]
        pairs.append((text, transcribe(client, avatar_id, espeak(text, voice, speed))))
    return wer([r for r, _ in pairs], [h for _, h in pairs]), pairs


def say(client, avatar_id, text: str, **options) -> TurnResult:
    return client.turn(avatar_id=avatar_id, text=text, options={"action": "say", **options})


def voice_wer(client, avatar_id, sentences=SENTENCES) -> tuple[float, list[tuple[str, str]]]:
    pairs = []
    for text in sentences:
        spoken = say(client, avatar_id, text, video=False)
        heard = transcribe(client, avatar_id, resample(spoken.audio, spoken.sample_rate, media.INPUT_SAMPLE_RATE))
        pairs.append((text, heard))
    return wer([r for r, _ in pairs], [h for _, h in pairs]), pairs


def hifigan_graph() -> Path:
    """The registry's HiFi-GAN (universal) as the `hifigan` stage's ONNX graph, in build/hifigan_check (idempotent).
    The demo's speech family is the Piper voice, whose vocoder is its own; HiFi-GAN is checked on its own."""
    from export.__main__ import main as export_main
    from export.contract.layout import BUILD
    from export.contract.spec import HIFIGAN

    repo = BUILD / "hifigan_check"
    if export_main(["--repository", str(repo), "--models", HIFIGAN.name,
                    "--weights", "vocoder=registry:hifigan-universal"]) != 0:
        raise SystemExit("export failed")
    return repo / HIFIGAN.name / "1" / "model.onnx"


def vocoder_wer(client, avatar_id, graph: Path, sentences=SENTENCES) -> tuple[float, list[tuple[str, str]]]:
    """Natural-sounding speech (the served voice saying each sentence; espeak-ng's is too robotic to stand for real
    speech) -> its HiFi-GAN log-mel -> the HiFi-GAN graph (ONNX Runtime) -> the served ASR."""
    import onnxruntime as ort

    from export.contract.spec import HIFIGAN

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    pairs = []
    for text in sentences:
        mel = hifigan_log_mel(say(client, avatar_id, text, video=False).audio)[None]
        (audio,) = session.run([HIFIGAN.outputs[0].name], {HIFIGAN.inputs[0].name: mel})
        pairs.append((text, transcribe(client, avatar_id, resample(audio[0], media.OUTPUT_SAMPLE_RATE,
                                                                    media.INPUT_SAMPLE_RATE))))
    return wer([r for r, _ in pairs], [h for _, h in pairs]), pairs


def llm_checks(client, avatar_id) -> dict:
    """The served LLM answers, streams, stops, and hands its first sentence to the voice before it ends."""
    fact = client.turn(avatar_id=avatar_id, text="What is the capital of France?",
                       options={"temperature": 0, "video": False, "max_reply_tokens": 64})
    long = client.turn(avatar_id=avatar_id, text="Tell me three facts about the sun, one sentence each.",
                       options={"temperature": 0, "video": False, "max_reply_tokens": 96})
    order = [e.type for e in long.events]
    texts = [i for i, t in enumerate(order) if t == ev.TEXT]
    pieces = [i for i, t in enumerate(order) if t == ev.PIECE]
    audio = [i for i, t in enumerate(order) if t == ev.AUDIO]
    return {"fact_reply": fact.reply, "paris": "paris" in fact.reply.lower(),
            "fact_text_events": sum(e.type == ev.TEXT for e in fact.events),
            "fact_stopped": sum(e.type == ev.TEXT for e in fact.events) < 64,
            "long_reply": long.reply, "long_pieces": len(pieces),
            "first_piece_before_reply_ends": bool(pieces and texts and pieces[0] < texts[-1]),
            "first_audio_before_reply_ends": bool(audio and texts and audio[0] < texts[-1])}


def mouth_region(face_box, shape) -> tuple[slice, slice]:
    """The middle of the registered face box's lower half (brows to chin, padded): where the lips part, without the
    mouth's corners, the chin's shadow or the clothes a head movement brings in."""
    x0, y0, x1, y1 = face_box
    w, h = x1 - x0, y1 - y0
    return (slice(max(0, int(y0 + 0.55 * h)), min(shape[0], int(y0 + 0.92 * h))),
            slice(max(0, int(x0 + 0.30 * w)), min(shape[1], int(x1 - 0.30 * w))))


def av_sync(result: TurnResult, face_box, avatar_png: bytes, dark: int = 60, silent: float = 0.05) -> dict:
    """Mouth opening per frame (the share of dark pixels in the mouth region above the avatar's own, measured on
    the decoded frames at their slots) against the audio's RMS in each frame's 40 ms; and the share of silent
    frames (RMS under `silent` x the loudest) whose mouth is closed (opening under 0.5 %)."""
    avatar = cv2.imdecode(np.frombuffer(avatar_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    ys, xs = mouth_region(face_box, avatar.shape)
    base = float((avatar[ys, xs] < dark).mean())
    opening, loud = [], []
    hop = media.AUDIO_SAMPLES_PER_VIDEO_FRAME
    for index, jpeg in zip(result.frame_indices, result.frames):
        gray = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
        opening.append(max(0.0, float((gray[ys, xs] < dark).mean()) - base))
        chunk = result.audio[index * hop:(index + 1) * hop]
        loud.append(float(np.sqrt(np.mean(chunk ** 2))) if chunk.size else 0.0)
    opening, loud = np.asarray(opening), np.asarray(loud)
    quiet = loud < silent * loud.max()
    r = float(np.corrcoef(opening, loud)[0, 1]) if opening.std() > 0 and loud.std() > 0 else 0.0
    return {"frames": len(opening), "pearson_r": r, "silent_frames": int(quiet.sum()),
            "closed_in_silence": float((opening[quiet] < 0.005).mean()) if quiet.any() else 1.0,
            "max_opening": float(opening.max()) if opening.size else 0.0}


AV_TEXT = ("Hello! My name is Joe, and I am a digital human. Papa bought a big blue map. "
           "We can talk about anything you like, for example music, the ocean, or the moon.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running server's gRPC endpoint (default: start one)")
    ap.add_argument("--repository", type=Path, default=None,
                    help="model repository to serve (default: export the real weight set to model_repository)")
    args = ap.parse_args(argv)
    from ensemble.avatar import demo_avatar_png

    if args.url is not None:
        return _report(args.url, demo_avatar_png())
    from deploy.processes import server_ports
    from deploy.server import EmbeddedServer, ServerOptions

    repo = args.repository or export_real_repository()
    with tempfile.TemporaryDirectory() as work, \
            EmbeddedServer(ServerOptions(repository=repo, workdir=Path(work), **server_ports())) as server:
        return _report(server.options.grpc_url, demo_avatar_png())


def export_real_repository(repo: Path | None = None) -> Path:
    """The demo's repository: the real weight set, as `make demo` exports it (idempotent)."""
    from export.__main__ import main as export_main
    from export.contract.layout import MODEL_REPOSITORY

    repo = repo or MODEL_REPOSITORY
    if export_main(["--weight-set", "real", "--repository", str(repo)]) != 0:
        raise SystemExit("export failed")
    return repo


def _report(url: str, avatar_png: bytes) -> int:
    with TalkingHeadClient(url, turn_timeout_s=300) as client:
        avatar = client.register_avatar(avatar_png)
        rows = []
        for name, fn in (("ASR (espeak-ng speech)", lambda: asr_wer(client, avatar.id)),
                         ("voice (say -> ASR)", lambda: voice_wer(client, avatar.id)),
                         ("vocoder (HiFi-GAN -> ASR)", lambda: vocoder_wer(client, avatar.id, hifigan_graph()))):
            value, pairs = fn()
            rows.append(f"| {name} | WER {value:.1%} | {len(pairs)} sentences |")
            for ref, hyp in pairs:
                if normalize(ref) != normalize(hyp):
                    print(f"  {name}: {ref!r} -> {hyp!r}")
        llm = llm_checks(client, avatar.id)
        rows.append(f"| LLM | capital of France: {llm['fact_reply']!r} | first piece before the reply ends: "
                    f"{llm['first_piece_before_reply_ends']}, {llm['long_pieces']} pieces |")
        sync = av_sync(say(client, avatar.id, AV_TEXT), avatar.face_box, avatar_png)
        rows.append(f"| A/V | Pearson r {sync['pearson_r']:.2f} over {sync['frames']} frames | mouth closed in "
                    f"{sync['closed_in_silence']:.0%} of {sync['silent_frames']} silent frames |")
    print("| check | figure | |\n| --- | --- | --- |\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
