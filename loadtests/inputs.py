"""What the simulated users send, made without the server side of the repository: spoken questions from espeak-ng
and the demo avatar. The load generator image (deploy/Dockerfile, target `loadgen`) holds only client/, ensemble/,
export/ and loadtests/ plus requirements-load.txt, so nothing here may import deploy/ or torch."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

QUESTIONS = ["What can you do for me today?", "Tell me something about the weather.",
             "Can you help me plan my week?"]


def speak(text: str, path: Path) -> Path:
    """A WAV of `text` spoken by espeak-ng (Debian package espeak-ng; the loadgen image installs it)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng), or give --wav FILE / "
                         "--speech-ratio 0")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
    return path


def spoken_questions(rate: int, questions: list[str] = QUESTIONS) -> list[np.ndarray]:
    """Each question as mono float32 at `rate` Hz."""
    from client import media

    with tempfile.TemporaryDirectory(prefix="loadtest-speech-") as tmp:
        return [media.read_audio(speak(q, Path(tmp) / f"q{i}.wav"), rate=rate) for i, q in enumerate(questions)]
