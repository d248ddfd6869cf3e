"""ensemble/features.py against the libraries it writes out: librosa (mel filters, Hann window, STFT), scipy
(lfilter, get_window) and soxr (HQ resampling). Those libraries are test references only: the module itself
imports numpy and the standard library (test_imports_without_librosa_scipy_soxr)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal
import soxr

from ensemble import features as F
from export.contract import media as C

ROOT = Path(__file__).resolve().parents[1]


def _speechlike(n: int, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Harmonic tone with a slow envelope plus noise and a silent gap: exercises the mel floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.1 * t)) ** 2
    x = 0.2 * x + 0.01 * rng.standard_normal(n)
    x[n // 3: n // 3 + n // 10] = 0.0
    return x.astype(np.float32)


# --------------------------------------------------------------------------- whisper


def test_whisper_log_mel_shape_and_silence_value():
    m = F.whisper_log_mel(np.zeros(16000, np.float32))
    assert m.shape == (80, 3000) and m.dtype == np.float32
    # log10(1e-10) = -10 everywhere; (x + 4) / 4 = -1.5
    np.testing.assert_allclose(m, -1.5)


def test_whisper_log_mel_pads_and_trims():
    a = _speechlike(16000 * 31)
    trimmed = F.whisper_log_mel(a)
    np.testing.assert_array_equal(trimmed, F.whisper_log_mel(a[: C.ASR_N_SAMPLES]))
    short = a[:16000 * 2]
    padded = np.concatenate([short, np.zeros(C.ASR_N_SAMPLES - short.size, np.float32)])
    np.testing.assert_array_equal(F.whisper_log_mel(short), F.whisper_log_mel(padded))
    # dynamic range is clamped to 8 log10 units -> 2.0 after scaling
    assert trimmed.max() - trimmed.min() <= 2.0 + 1e-6


@pytest.mark.parametrize("seconds", [0.01, 0.3, 5.0, 12.34, 29.97, 29.99])
def test_whisper_log_mel_of_short_audio_is_that_of_its_zero_padded_30_s(seconds):
    """Only the frames that touch the audio are computed (the rest is the padding's zeros): the result is bit for
    bit that of the whole zero-padded input, at every length up to the window's reach into the end."""
    short = _speechlike(int(16000 * seconds), seed=int(seconds * 100))
    padded = np.concatenate([short, np.zeros(C.ASR_N_SAMPLES - short.size, np.float32)])
    np.testing.assert_array_equal(F.whisper_log_mel(short), F.whisper_log_mel(padded))


def test_whisper_log_mel_matches_torch_reference():
    torch = pytest.importorskip("torch")
    a = _speechlike(16000 * 7, seed=3)
    # openai/whisper audio.py log_mel_spectrogram + pad_or_trim, verbatim in torch
    audio = torch.from_numpy(a)
    audio = torch.nn.functional.pad(audio, (0, C.ASR_N_SAMPLES - audio.shape[-1]))
    window = torch.hann_window(400)
    stft = torch.stft(audio, 400, 160, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=400, n_mels=80))
    mel_spec = filters @ magnitudes
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    ref = ((log_spec + 4.0) / 4.0).numpy()
    ours = F.whisper_log_mel(a)
    assert ref.shape == ours.shape
    np.testing.assert_allclose(ours, ref, atol=5e-5)  # float32 torch vs float64 here: ~1e-5


def test_whisper_log_mel_rejects_stereo():
    with pytest.raises(ValueError):
        F.whisper_log_mel(np.zeros((2, 1600), np.float32))


# --------------------------------------------------------------------------- wav2lip


def _wav2lip_reference(wav: np.ndarray) -> np.ndarray:
    """Rudrabha/Wav2Lip audio.py melspectrogram with hparams.py values, written out."""
    wav = scipy.signal.lfilter([1, -0.97], [1], wav)
    d = librosa.stft(y=wav, n_fft=800, hop_length=200, win_length=800, pad_mode="reflect")
    mel_basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    min_level = np.exp(-100 / 20 * np.log(10))
    s = 20 * np.log10(np.maximum(min_level, np.dot(mel_basis, np.abs(d)))) - 20
    return np.clip((2 * 4.0) * ((s - -100) / (100)) - 4.0, -4.0, 4.0)


def _wav2lip_windows(mel: np.ndarray, n_frames: int) -> np.ndarray:
    """Wav2Lip inference's mel_chunks loop, continued (clamped) up to n_frames."""
    out = []
    for i in range(n_frames):
        start_idx = int(i * (80.0 / 25))
        if start_idx + 16 > len(mel[0]):
            out.append(mel[:, len(mel[0]) - 16:])
        else:
            out.append(mel[:, start_idx: start_idx + 16])
    return np.stack(out)


def test_wav2lip_mel_matches_reference():
    a = _speechlike(16000 * 2 + 123)
    m = F.wav2lip_mel(a)
    assert m.shape == (80, 1 + a.size // 200) and m.dtype == np.float32
    np.testing.assert_allclose(m, _wav2lip_reference(a), atol=1e-5)
    assert m.min() >= -4 and m.max() <= 4 and m.max() > 0  # real content above the floor


def test_wav2lip_mel_silence_is_floor():
    np.testing.assert_array_equal(F.wav2lip_mel(np.zeros(4000, np.float32)), -4.0)


def test_wav2lip_mel_rejects_empty():
    with pytest.raises(ValueError):
        F.wav2lip_mel(np.zeros(0, np.float32))


def _stream(audio: np.ndarray, rng: np.random.Generator, max_chunk: int, n_video=None):
    s = F.LipsyncMelStream()
    windows, i = [], 0
    while i < audio.size:
        n = int(rng.integers(1, max_chunk + 1))
        windows += s.push(audio[i:i + n])
        assert s.frames_emitted == len(windows)
        i += n
    before = len(windows)
    windows += s.finish(n_video)
    assert s.frames_emitted == len(windows)
    for w in windows:
        assert w.shape == (80, 16) and w.dtype == np.float32
    return (np.stack(windows) if windows else np.zeros((0, 80, 16), np.float32)), before


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large:UserWarning")  # librosa, in the reference
@pytest.mark.parametrize("n", [1, 2, 150, 400, 401, 402, 3000, 3399, 3400, 3401, 16000, 16000 * 3 + 77])
def test_lipsync_stream_equals_whole_utterance(n):
    rng = np.random.default_rng(n)
    a = _speechlike(n, seed=n)
    n_video = C.video_frames_for_samples(n, 16000)
    for max_chunk in (1 if n < 5000 else 37, 700, 5000):
        got, _ = _stream(a, rng, max_chunk)
        assert got.shape == (n_video, 80, 16) and got.dtype == np.float32
        mel = F.wav2lip_mel(a)
        if mel.shape[1] >= 16:
            ref = _wav2lip_windows(mel, n_video)
        else:  # shorter than one window: right-padded with the silence value
            ref = np.stack([np.concatenate([mel, np.full((80, 16 - mel.shape[1]), -4.0)], 1)] * n_video)
        np.testing.assert_allclose(got, ref, atol=1e-5)
        np.testing.assert_allclose(got[0], F.lipsync_window(mel, 0), atol=0)


def test_lipsync_stream_emits_frames_early():
    a = _speechlike(16000 * 2)
    s = F.LipsyncMelStream()
    emitted = 0
    for n_in in range(1000, a.size + 1, 1000):
        emitted += len(s.push(a[n_in - 1000:n_in]))
        final_mel = (n_in - 400) // 200 + 1  # mel frames whose samples have all arrived
        expected = sum(1 for i in range(100) if C.lipsync_window_start(i) + 16 <= final_mel)
        assert emitted == expected == s.frames_emitted
    # all but the last few frames of a 2 s utterance come out before finish
    assert emitted >= C.video_frames_for_samples(a.size, 16000) - 6
    # frame i needs about 640*i + 3400 samples
    s2 = F.LipsyncMelStream()
    assert s2.push(a[:3399]) == []
    assert len(s2.push(a[3399:3400])) == 1


def test_lipsync_stream_explicit_frame_count_and_errors():
    a = _speechlike(16000)
    mel = F.wav2lip_mel(a)
    got, _ = _stream(a, np.random.default_rng(1), 999, n_video=27)  # e.g. the 22050 Hz clock says 27
    np.testing.assert_allclose(got, _wav2lip_windows(mel, 27), atol=1e-5)
    s = F.LipsyncMelStream()
    assert len(s.push(a)) > 5
    with pytest.raises(ValueError):
        s.finish(3)
    with pytest.raises(RuntimeError):
        s.push(a)
    s = F.LipsyncMelStream()
    assert s.finish(0) == []
    s = F.LipsyncMelStream()
    assert s.finish() == []  # no audio, no frames


def test_lipsync_stream_memory_is_bounded():
    s = F.LipsyncMelStream()
    chunk = _speechlike(1600)
    for _ in range(500):  # 50 s of audio
        s.push(chunk)
        assert s._buf.shape[0] < 4000 and s._mel.shape[1] < 40


# --------------------------------------------------------------------------- the numpy front end vs librosa / scipy


def test_imports_without_librosa_scipy_soxr():
    """The orchestrator's image (Triton's Python backend stub) has numpy only: block the others and use the module."""
    code = ("import sys\n"
            "for m in ('librosa', 'scipy', 'soxr'): sys.modules[m] = None  # any import of them raises ImportError\n"
            "import numpy as np\n"
            "import ensemble.features as F\n"
            "a = np.sin(np.arange(22050) * 0.05).astype(np.float32)\n"
            "assert F.whisper_log_mel(a[:16000]).shape == (80, 3000) and F.wav2lip_mel(a[:16000]).shape == (80, 81)\n"
            "assert F.hifigan_log_mel(a).shape == (80, 86) and F.resample(a, 22050, 16000).shape == (16000,)\n"
            "assert F.LipsyncMelStream().push(a[:16000]) and F.StreamingResampler().push(a).size > 15000\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(16000, 400, 80, 0.0, None), (22050, 1024, 80, 0.0, 8000.0),
                                                       (16000, 800, 80, 55.0, 7600.0),
                                                       (24000, 512, 128, 20.0, 11000.0)])
def test_mel_basis_equals_librosa(sr, n_fft, n_mels, fmin, fmax):
    ours = F._mel_basis(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)  # Slaney scale and norm
    assert ours.shape == ref.shape and ours.dtype == np.float64 and not ours.flags.writeable
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)  # float32 weights: equal, or one rounding apart


@pytest.mark.parametrize("n", [1, 2, 3, 301, 400, 800, 1024])
def test_hann_equals_scipy_periodic_hann(n):
    ref = scipy.signal.get_window("hann", n, fftbins=True)
    np.testing.assert_allclose(F._hann(n), ref, rtol=0, atol=1e-15)
    np.testing.assert_allclose(F._hann(n), librosa.filters.get_window("hann", n, fftbins=True), rtol=0, atol=1e-15)


@pytest.mark.filterwarnings("ignore:n_fft=.* is too large:UserWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_fft,hop,win,center,pad_mode", [
    (400, 160, 400, True, "reflect"), (800, 200, 800, True, "reflect"), (1024, 256, 1024, False, None),
    (800, 200, 600, True, "constant"), (512, 128, 301, True, "reflect")])  # win < n_fft: zero-padded, centred
def test_stft_equals_librosa(dtype, n_fft, hop, win, center, pad_mode):
    for n in (1, 2, 150, n_fft // 2, n_fft // 2 + 1, n_fft, 16000 + 77):
        if not center and n < n_fft:
            continue
        y = _speechlike(n, seed=n).astype(dtype)
        ref = librosa.stft(y, n_fft=n_fft, hop_length=hop, win_length=win, window="hann", center=center,
                           **({"pad_mode": pad_mode} if center else {}))
        ours = F._stft(y, n_fft, hop, win, center, pad_mode)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype, (n, ours.shape, ref.shape)
        tol = (1e-6 if dtype == np.float32 else 1e-12) * max(1.0, np.abs(ref).max())
        np.testing.assert_allclose(ours, ref, rtol=0, atol=tol)
    with pytest.raises(ValueError):
        F._stft(np.zeros(n_fft - 1, dtype), n_fft, hop, win, center=False)


def test_whisper_log_mel_equals_librosa_reference():
    a = _speechlike(16000 * 5 + 33, seed=4)
    n = C.ASR_N_SAMPLES
    stft = librosa.stft(np.pad(a, (0, n - a.size)), n_fft=400, hop_length=160, window="hann", pad_mode="reflect")
    power = np.abs(stft[:, :-1]).astype(np.float64) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80).astype(np.float64) @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    ref = ((np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0).astype(np.float32)
    np.testing.assert_allclose(F.whisper_log_mel(a), ref, rtol=0, atol=1e-6)


def test_hifigan_log_mel_equals_librosa_reference():
    a = _speechlike(22050 * 2 + 5, sr=22050, seed=6)
    stft = librosa.stft(np.pad(a, (384, 384), mode="reflect"), n_fft=1024, hop_length=256, window="hann", center=False)
    mel = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000).astype(np.float64) @ np.abs(stft)
    ref = np.log(np.maximum(mel, 1e-5)).astype(np.float32)
    ours = F.hifigan_log_mel(a)
    assert ours.shape == ref.shape == (80, a.size // 256)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)  # log of float32 magnitudes: ~1e-7 apart


def test_preemphasis_equals_lfilter():
    a = _speechlike(5000, seed=8).astype(np.float64)
    ours = F.wav2lip_mel(a)
    y = scipy.signal.lfilter([1.0, -0.97], [1.0], a)
    ref = F._lipsync_mel_of_preemphasized(y).astype(np.float32)
    np.testing.assert_array_equal(ours, ref)


# --------------------------------------------------------------------------- resampling

PAIRS = [(22050, 16000), (16000, 22050), (48000, 16000), (44100, 16000), (24000, 16000)]


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


def test_resample_preserves_tone_and_length():
    sr = C.OUTPUT_SAMPLE_RATE
    t = np.arange(sr) / sr
    a = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    b = F.resample(a, sr, 16000)
    assert b.dtype == np.float32 and abs(b.size - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(b))
    assert abs(np.argmax(spectrum) * 16000 / b.size - 440) < 2
    np.testing.assert_array_equal(F.resample(a, sr, sr), a)


@pytest.mark.parametrize("from_rate,to_rate", PAIRS)
def test_resample_matches_soxr_hq(from_rate, to_rate):
    """Same length as soxr (round(n * to / from), halves up) and within 50 dB of its HQ output on speech-like audio
    (~75 dB on espeak speech; white noise up to the input's Nyquist ~60 dB, the difference all in 7.4-8 kHz)."""
    for n in (0, 1, 2, 3, 7, 160, 441, 480, 1000, 12345):
        assert F.resample(np.ones(n, np.float32), from_rate, to_rate).size == soxr.resample(
            np.ones(n, np.float32), from_rate, to_rate, quality="HQ").size, n
    a = _speechlike(from_rate * 2 + 17, sr=from_rate, seed=from_rate)
    ref = soxr.resample(a, from_rate, to_rate, quality="HQ")
    ours = F.resample(a, from_rate, to_rate)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert _snr_db(ref, ours) > 50
    noise = np.random.default_rng(from_rate).standard_normal(from_rate).astype(np.float32) * 0.3
    assert _snr_db(soxr.resample(noise, from_rate, to_rate, quality="HQ"), F.resample(noise, from_rate, to_rate)) > 40


@pytest.mark.parametrize("from_rate,to_rate", [(22050, 16000), (48000, 16000), (16000, 22050)])
def test_resample_passband_and_anti_aliasing(from_rate, to_rate):
    nyquist = min(from_rate, to_rate) / 2
    t = np.arange(from_rate) / from_rate
    for f, low, high in [(1000, -0.01, 0.01), (0.9 * nyquist, -0.05, 0.01), (1.05 * nyquist, -999, -80)]:
        if f >= from_rate / 2:
            continue
        a = np.sin(2 * np.pi * f * t).astype(np.float32)
        b = F.resample(a, from_rate, to_rate)[2000:-2000].astype(np.float64)  # away from the ends
        gain_db = 20 * np.log10(np.sqrt(2 * np.mean(b ** 2)) + 1e-12)
        assert low <= gain_db <= high, (f, gain_db)


def test_resample_espeak_speech_matches_soxr(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import soundfile as sf
    wav = tmp_path / "s.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Please tell me a story about the sea."], check=True)
    a, rate = sf.read(wav, dtype="float32")
    for to in (16000, 48000):
        assert _snr_db(soxr.resample(a, rate, to, quality="HQ"), F.resample(a, rate, to)) > 60


def _streamed(r: F.StreamingResampler, a: np.ndarray, rng: np.random.Generator, max_chunk: int) -> np.ndarray:
    outs, i = [], 0
    while i < a.size:
        n = int(rng.integers(0, max_chunk + 1))  # empty pushes too
        outs.append(r.push(a[i:i + n]))
        assert outs[-1].dtype == np.float32
        i += n
    outs.append(r.finish())
    return np.concatenate(outs)


@pytest.mark.parametrize("from_rate,to_rate", PAIRS)
def test_streaming_resampler_equals_whole(from_rate, to_rate):
    rng = np.random.default_rng(5)
    for n in (0, 1, 5, 300, from_rate // 50, from_rate * 3 + 11):
        a = _speechlike(n, sr=from_rate, seed=n) if n else np.zeros(0, np.float32)
        ref = F.resample(a, from_rate, to_rate)
        for max_chunk in (1 if n < 2000 else 97, 441, 4000):
            r = F.StreamingResampler(from_rate, to_rate)
            got = _streamed(r, a, rng, max_chunk)
            assert got.size == ref.size == r.samples_out and r.samples_in == a.size
            np.testing.assert_array_equal(got, ref)  # the same float32 dot products, however the input was cut
    with pytest.raises(RuntimeError):
        r.push(a)
    with pytest.raises(RuntimeError):
        r.finish()


def test_streaming_resampler_lag_and_bounded_buffer():
    r = F.StreamingResampler()  # 22050 -> 16000
    chunk = _speechlike(441, sr=22050)
    for i in range(1, 1001):  # 20 s in 20 ms pushes
        r.push(chunk)
        assert r.samples_out >= i * 320 - 100  # output lags by the filter's half width (~5 ms), no more
        assert r._buf.shape[0] < 1000
    with pytest.raises(ValueError):
        F.StreamingResampler(22050, 16000, quality="best")
    same = F.StreamingResampler(16000, 16000)
    np.testing.assert_array_equal(np.concatenate([same.push(chunk), same.finish()]), chunk)
