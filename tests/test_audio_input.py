from __future__ import annotations

import numpy as np
import pytest

from ensemble.audio_input import validate_audio
from ensemble.errors import InputError
from export.contract import media as C

SR = C.INPUT_SAMPLE_RATE


def _tone(n: int = SR, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * 220 * np.arange(n) / SR)).astype(np.float32)


def test_valid_audio_passes_through():
    a = _tone()
    out = validate_audio(a, SR, 30.0)
    assert out.dtype == np.float32 and out.shape == (SR,) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("shape", [(1, SR), (SR, 1)])
def test_singleton_axis_accepted(shape):
    out = validate_audio(_tone().reshape(shape), np.array([SR], np.int32), 30.0)
    assert out.shape == (SR,)


def test_sample_rate_forms():
    assert validate_audio(_tone(), np.int64(SR), 5).shape == (SR,)
    assert validate_audio(_tone(), float(SR), 5).shape == (SR,)


@pytest.mark.parametrize("dtype", [np.int16, np.float64, np.int32])
def test_wrong_dtype(dtype):
    a = (_tone() * 32767).astype(dtype) if dtype != np.float64 else _tone().astype(dtype)
    with pytest.raises(InputError, match=rf"^audio must be float32 PCM in \[-1, 1\], got {np.dtype(dtype).name}$"):
        validate_audio(a, SR, 30)


def test_not_an_array():
    with pytest.raises(InputError, match="numpy float32 array, got list"):
        validate_audio([0.1, 0.2], SR, 30)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(SR, 2), (2, SR)])
def test_stereo(shape):
    with pytest.raises(InputError, match=r"^audio has 2 channels; send mono$"):
        validate_audio(np.zeros(shape, np.float32) + 0.1, SR, 30)


def test_bad_rank():
    with pytest.raises(InputError, match=r"must be a 1-D array of mono samples, got shape \(2, 3, 100\)"):
        validate_audio(np.zeros((2, 3, 100), np.float32), SR, 30)
    with pytest.raises(InputError, match=r"1-D array of mono samples, got shape \(\)"):
        validate_audio(np.float32(0.5), SR, 30)


def test_wrong_sample_rate():
    with pytest.raises(InputError, match=r"^audio sample_rate is 8000 Hz; expected 16000$"):
        validate_audio(_tone(), 8000, 30)
    with pytest.raises(InputError, match="expected 16000"):
        validate_audio(_tone(), 16000.5, 30)
    with pytest.raises(InputError, match="one integer"):
        validate_audio(_tone(), np.array([16000, 16000]), 30)
    with pytest.raises(InputError, match="one integer"):
        validate_audio(_tone(), "16000", 30)  # type: ignore[arg-type]


def test_empty():
    with pytest.raises(InputError, match=r"^audio is empty$"):
        validate_audio(np.zeros(0, np.float32), SR, 30)


def test_too_long():
    assert validate_audio(_tone(2 * SR), SR, 2.0).shape == (2 * SR,)  # exactly at the limit
    with pytest.raises(InputError, match=r"^audio is 2.00 s long; the limit is 1.5 s$"):
        validate_audio(_tone(2 * SR), SR, 1.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf(bad):
    a = _tone()
    a[1234] = bad
    with pytest.raises(InputError, match=r"NaN or Inf \(first at sample 1234\)"):
        validate_audio(a, SR, 30)


def test_out_of_range():
    with pytest.raises(InputError, match=r"must be in \[-1, 1\]"):
        validate_audio(_tone(amp=32767.0), SR, 30)
    assert validate_audio(_tone(amp=1.05), SR, 30).shape == (SR,)  # mild overshoot tolerated


def test_silent():
    with pytest.raises(InputError, match=r"^audio is silent"):
        validate_audio(np.zeros(SR, np.float32), SR, 30)
    with pytest.raises(InputError, match="audio is silent"):
        validate_audio(_tone(amp=5e-5), SR, 30)
    assert validate_audio(_tone(amp=5e-4), SR, 30).shape == (SR,)  # quiet but not silent
