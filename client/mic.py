"""A live microphone as 16 kHz mono float32 chunks, for `python -m client talk --mic` (sounddevice + PortAudio).

    for chunk in live_chunks(seconds=30):      # Ctrl-C ends early
        ...

sounddevice is an optional dependency (`pip install sounddevice`; Debian: libportaudio2). Without it, or
without an input device, `MicrophoneUnavailable` says which and what to do instead (`--audio FILE`).
"""
from __future__ import annotations

import queue
from collections.abc import Iterator

import numpy as np

from export.contract import media


class MicrophoneUnavailable(RuntimeError):
    """No sounddevice/PortAudio, or no input device to record from."""


def live_chunks(seconds: float, chunk_ms: float = 32.0, device: str | int | None = None) -> Iterator[np.ndarray]:
    """Up to `seconds` from the default (or named) input device, as `chunk_ms` chunks as they come; raises
    MicrophoneUnavailable at once (not at the first chunk) when there is nothing to record from."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: the module is there, PortAudio is not
        raise MicrophoneUnavailable(f"no microphone support here ({e}); install sounddevice and PortAudio "
                                    f"(pip install sounddevice; apt-get install libportaudio2), or pass --audio FILE"
                                    ) from None
    try:
        sd.check_input_settings(device=device, channels=1, samplerate=media.INPUT_SAMPLE_RATE, dtype="float32")
    except Exception as e:  # PortAudioError, ValueError: no such device or it cannot do 16 kHz mono
        raise MicrophoneUnavailable(f"no usable input device ({e}); pass --audio FILE instead") from None
    return _record(sd, int(seconds * media.INPUT_SAMPLE_RATE), int(round(chunk_ms * media.INPUT_SAMPLE_RATE / 1000)),
                   device)


def _record(sd, total: int, block: int, device) -> Iterator[np.ndarray]:
    chunks: queue.Queue = queue.Queue()
    with sd.InputStream(samplerate=media.INPUT_SAMPLE_RATE, channels=1, dtype="float32", blocksize=block,
                        device=device, callback=lambda data, frames, t, status: chunks.put(data[:, 0].copy())):
        sent = 0
        try:
            while sent < total:
                chunk = chunks.get()
                sent += chunk.size
                yield chunk
        except KeyboardInterrupt:
            return
