"""Audio and video files on the client side: read any audio, write WAV, mux the answer into MP4.

- `read_audio`: decode any audio (or video-with-audio) file with PyAV and
  resample it to mono float32 at the rate the server wants
  (`media.INPUT_SAMPLE_RATE`, 16 kHz by default).
- `write_wav`: float32 PCM to a WAV file with soundfile.
- `write_mp4`: the streamed JPEG frames and PCM audio of one answer to an
  MP4 with one H.264 (libx264, yuv420p) video stream and one AAC audio stream.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction

import av
import cv2
import numpy as np
import soundfile as sf

from export.contract import media

AAC_FRAME_SIZE = 1024  # samples per AAC frame; PyAV's encoder re-chunks to this
_AUDIO_CHUNK = 4 * AAC_FRAME_SIZE  # how many samples we hand the encoder at a time


# ---------------------------------------------------------------- audio in

def read_audio(path: str | os.PathLike, rate: int = media.INPUT_SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file FFmpeg reads, as mono float32 at `rate` Hz.

    Multi-channel audio is downmixed by libswresample; the resampler is flushed,
    so the result holds round(n_in * rate / rate_in) samples (give or take one).
    """
    with av.open(os.fspath(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{os.fspath(path)}: no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            frame.pts = None  # let the resampler count samples; odd source timestamps make it pad or drop
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):  # flush the resampler's delay line
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


# ---------------------------------------------------------------- audio out

def _mono_float32(audio: np.ndarray | Sequence[float]) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 1:
        if a.ndim == 0 or sorted(a.shape)[-2] != 1:  # allow (1, n) and (n, 1)
            raise ValueError(f"expected mono audio (a 1-D array), got shape {a.shape}")
        a = a.reshape(-1)
    return a


def write_wav(path: str | os.PathLike, audio: np.ndarray, rate: int = media.OUTPUT_SAMPLE_RATE,
              subtype: str = "PCM_16") -> None:
    """Write mono float32 PCM (-1..1) to a WAV file; 16-bit PCM by default ("FLOAT" keeps float32)."""
    a = _mono_float32(audio)
    if subtype.startswith("PCM"):
        a = np.clip(a, -1.0, 1.0)
    sf.write(os.fspath(path), a, int(rate), subtype=subtype, format="WAV")


# ---------------------------------------------------------------- video out

def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG (or PNG) bytes -> BGR uint8 image."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode image ({len(data)} bytes)")
    return img


def _even(n: int) -> int:
    return n + (n % 2)


def _fit(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Make `img` exactly width x height: pad a missing odd row/column by edge replication,
    resize anything else (a frame of a different size than the first)."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    if w <= width <= w + 1 and h <= height <= h + 1:
        return np.pad(img, ((0, height - h), (0, width - w), (0, 0)), mode="edge")
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def write_mp4(path: str | os.PathLike, frames_jpeg: Sequence[bytes], audio: np.ndarray | None,
              audio_rate: int = media.OUTPUT_SAMPLE_RATE, fps: int = media.VIDEO_FPS, *,
              frame_indices: Sequence[int] | None = None, crf: int = 20, preset: str = "veryfast") -> None:
    """Mux JPEG frames and mono PCM into an MP4: H.264 (libx264, yuv420p) + AAC.

    Frame k is shown at slot frame_indices[k] (default k) of the 1/fps clock and the video has a constant
    frame rate: a slot the server dropped to keep up with audio repeats the frame before it (the first frame
    fills slots before it), and slots continue to the end of the audio, so frame count = audio x fps
    (rounded up) and the rest stay in sync with the voice; audio frames carry pts in
    samples (time base 1/audio_rate). Frames are padded to even dimensions
    (yuv420p needs them); frames of a different size than the first are resized
    to it. With no frames the file holds only the AAC stream, with no (or empty)
    audio only the H.264 stream; with neither it is an error.
    """
    a = None if audio is None else _mono_float32(audio)
    if a is not None and a.size == 0:
        a = None
    if not frames_jpeg and a is None:
        raise ValueError("write_mp4: nothing to write (no frames and no audio)")

    with av.open(os.fspath(path), mode="w", format="mp4") as container:
        vstream = astream = None
        width = height = 0
        if frames_jpeg:
            first = decode_jpeg(frames_jpeg[0])
            height, width = _even(first.shape[0]), _even(first.shape[1])
            vstream = container.add_stream("libx264", rate=fps)
            vstream.width, vstream.height = width, height
            vstream.pix_fmt = "yuv420p"
            vstream.codec_context.time_base = Fraction(1, fps)
            vstream.options = {"crf": str(crf), "preset": preset}
        if a is not None:
            astream = container.add_stream("aac", rate=int(audio_rate), layout="mono")
            astream.codec_context.time_base = Fraction(1, int(audio_rate))

        # Interleave: before frame i, encode the audio that plays before i / fps.
        audio_pos = 0

        def encode_audio_until(sample: int) -> None:
            nonlocal audio_pos
            while astream is not None and audio_pos < min(sample, a.size):
                n = min(_AUDIO_CHUNK, a.size - audio_pos)
                af = av.AudioFrame.from_ndarray(a[audio_pos:audio_pos + n].reshape(1, -1), format="fltp",
                                                layout="mono")
                af.sample_rate = int(audio_rate)
                af.pts = audio_pos
                af.time_base = Fraction(1, int(audio_rate))
                container.mux(astream.encode(af))
                audio_pos += n

        indices = list(range(len(frames_jpeg))) if frame_indices is None else list(frame_indices)
        if len(indices) != len(frames_jpeg) or any(b <= a for a, b in zip(indices, indices[1:])):
            raise ValueError("write_mp4: frame_indices must be increasing, one per frame")
        # a constant frame rate: every slot of the clock gets a frame (a dropped slot repeats the frame before
        # it), through the end of the audio
        slots = indices[-1] + 1 if indices else 0
        if a is not None and indices:
            slots = max(slots, media.video_frames_for_samples(a.size, int(audio_rate)))
        by_slot = dict(zip(indices, frames_jpeg))
        vf = None
        for i in range(slots):
            encode_audio_until(int(Fraction(i * int(audio_rate), fps)))
            if i in by_slot or vf is None:
                img = _fit(decode_jpeg(by_slot.get(i, frames_jpeg[0])), width, height)
                vf = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            container.mux(vstream.encode(vf))
        if a is not None:
            encode_audio_until(a.size)
        # Flush both encoders (x264's lookahead, the AAC tail and its padding).
        if vstream is not None:
            container.mux(vstream.encode(None))
        if astream is not None:
            container.mux(astream.encode(None))


def read_mp4_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """Every video frame of a media file, BGR uint8."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def contact_sheet(frames: Sequence[np.ndarray], box: tuple[int, int, int, int], count: int = 10,
                  start: int = 0, step: int = 3, height: int = 160) -> np.ndarray:
    """`count` frames (BGR) from `start`, every `step`-th, cut to the box (x0, y0, x1, y1: e.g. the lower face)
    and laid side by side at `height` pixels (BGR uint8): the mouth's shapes without playing the video."""
    x0, y0, x1, y1 = box
    picked = list(frames)[start::step][:count]
    if not picked:
        raise ValueError(f"no frames from {start} on (there are {len(frames)})")
    width = max(1, round((x1 - x0) * height / max(1, y1 - y0)))
    tiles = [cv2.resize(f[y0:y1, x0:x1], (width, height), interpolation=cv2.INTER_CUBIC) for f in picked]
    gap = np.full((height, 4, 3), 255, np.uint8)
    return np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
