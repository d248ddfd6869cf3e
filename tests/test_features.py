from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal

from ensemble import features as F
from export.contract import media as C


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


# --------------------------------------------------------------------------- resampling


def test_resample_preserves_tone_and_length():
    sr = C.OUTPUT_SAMPLE_RATE
    t = np.arange(sr) / sr
    a = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    b = F.resample(a, sr, 16000)
    assert b.dtype == np.float32 and abs(b.size - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(b))
    assert abs(np.argmax(spectrum) * 16000 / b.size - 440) < 2
    np.testing.assert_array_equal(F.resample(a, sr, sr), a)


def test_streaming_resampler_equals_whole():
    a = _speechlike(22050 * 3 + 11, sr=22050)
    r = F.StreamingResampler()
    rng = np.random.default_rng(5)
    outs, i = [], 0
    while i < a.size:
        n = int(rng.integers(1, 4000))
        outs.append(r.push(a[i:i + n]))
        i += n
    outs.append(r.finish())
    got = np.concatenate(outs)
    ref = F.resample(a, 22050, 16000)
    assert got.size == ref.size == r.samples_out and r.samples_in == a.size
    np.testing.assert_allclose(got, ref, atol=1e-6)
    with pytest.raises(RuntimeError):
        r.push(a)
