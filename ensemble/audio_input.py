"""Validation of the user's speech input (what the ASR front end accepts)."""
from __future__ import annotations

import numpy as np

from ensemble.errors import InputError
from export.contract import media as C

SILENCE_PEAK = 1e-4  # peak amplitude below which the input is treated as silence
MAX_PEAK = 2.0  # float PCM should be in [-1, 1]; resampler overshoot up to this is tolerated


def _sample_rate(sample_rate) -> int:
    sr = np.asarray(sample_rate)
    if sr.size != 1 or not np.issubdtype(sr.dtype, np.number) or sr.dtype == np.bool_:
        raise InputError(f"audio sample_rate must be one integer (Hz); expected {C.INPUT_SAMPLE_RATE}")
    value = sr.reshape(-1)[0].item()
    if value != int(value):
        raise InputError(f"audio sample_rate is {value} Hz; expected {C.INPUT_SAMPLE_RATE}")
    return int(value)


def check_samples(a: np.ndarray, what: str) -> float:
    """Finite samples with a peak of at most MAX_PEAK (a non-empty 1-D float array); returns the peak."""
    finite = np.isfinite(a)
    if not finite.all():
        raise InputError(f"{what} contains NaN or Inf (first at sample {int(np.argmin(finite))})")
    peak = float(np.abs(a).max())
    if peak > MAX_PEAK:
        raise InputError(f"{what} peak amplitude is {peak:g}; float32 PCM must be in [-1, 1] "
                         "(int16 values sent as float?)")
    return peak


def check_sample_rate(sample_rate) -> int:
    """The sample rate, which must be media.INPUT_SAMPLE_RATE (no server-side resampling), or InputError."""
    sr = _sample_rate(sample_rate)
    if sr != C.INPUT_SAMPLE_RATE:
        raise InputError(f"audio sample_rate is {sr} Hz; expected {C.INPUT_SAMPLE_RATE}")
    return sr


def validate_audio(audio: np.ndarray, sample_rate: int, max_seconds: float) -> np.ndarray:
    """User audio -> contiguous float32 mono [n] at media.INPUT_SAMPLE_RATE, or InputError.

    Accepts shape [n], and [1, n] / [n, 1] (a batch or channel axis of one). Does not resample:
    a different sample_rate is an error naming the expected one. Samples must be finite, with a
    peak of at most MAX_PEAK (values in (1, MAX_PEAK] are passed through unchanged) and at least
    SILENCE_PEAK.
    """
    if isinstance(audio, np.generic):  # a numpy scalar: report it as a 0-D array below
        audio = np.asarray(audio)
    if not isinstance(audio, np.ndarray):
        raise InputError(f"audio must be a numpy float32 array, got {type(audio).__name__}")
    if audio.dtype != np.float32:
        raise InputError(f"audio must be float32 PCM in [-1, 1], got {audio.dtype}")
    a = audio
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim == 2 and min(a.shape) <= 8:
        raise InputError(f"audio has {min(a.shape)} channels; send mono")
    if a.ndim != 1:
        raise InputError(f"audio must be a 1-D array of mono samples, got shape {tuple(audio.shape)}")
    sr = check_sample_rate(sample_rate)
    n = a.shape[0]
    if n == 0:
        raise InputError("audio is empty")
    max_samples = int(max_seconds * sr)
    if n > max_samples:
        raise InputError(f"audio is {n / sr:.2f} s long; the limit is {max_seconds:g} s")
    peak = check_samples(a, "audio")
    if peak < SILENCE_PEAK:
        raise InputError(f"audio is silent (peak amplitude {peak:.1e}; need at least {SILENCE_PEAK:.0e})")
    return np.ascontiguousarray(a)
