"""Reference data for the lip-sync tests: the demo avatar's BlazeFace keypoints and face box, and two replies of
the real voice (tests/data/reply_*.npz: the Piper voice's tts/vocoder graphs, driven as Turn._speech drives them;
the audio and each id's symbol and duration on the reply's clock, cut into utterances)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
# BlazeFace's keypoints on the astronaut (ensemble.avatar.register with the face_detector stage on ONNX Runtime)
ASTRONAUT_KEYPOINTS = np.array([[204.41, 102.17], [247.32, 106.09], [223.72, 129.00], [222.36, 148.40],
                                [180.94, 108.30], [270.38, 116.01]], np.float32)
ASTRONAUT_BOX = (76, 185, 176, 276)  # y1, y2, x1, x2 (register's padded face box)


class Reply:
    def __init__(self, name: str):
        z = np.load(DATA / f"reply_{name}.npz")
        self.name = name
        self.audio = z["audio"].astype(np.float32) / 32767
        self.phones = list(zip(z["symbols"].tolist(), z["starts_s"].tolist(), z["lengths_s"].tolist()))
        cuts = list(z["pieces"]) + [len(self.phones)]
        self.pieces = [self.phones[a:b] for a, b in zip(cuts, cuts[1:])]
        self.text = str(z["text"])
