"""Audio front ends in numpy: Whisper's log-mel, Wav2Lip's mel (whole and streaming), resampling.

All settings come from export/contract/media.py. Filter banks and windows are cached
per settings by `functools.lru_cache` and handed out read-only: constants, not state.
"""
from __future__ import annotations

from functools import lru_cache

import librosa
import numpy as np
import scipy.signal
import soxr

from export.contract import media as C

# --------------------------------------------------------------------------- helpers


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    return _readonly(librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float64))


@lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    # librosa.stft's window="hann" (scipy periodic Hann); torch.hann_window is the same window.
    return _readonly(librosa.filters.get_window("hann", n, fftbins=True).astype(np.float64))


def _as_mono_float(audio: np.ndarray, dtype=np.float32) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"expected 1-D mono audio, got shape {a.shape}")
    return a.astype(dtype, copy=False)


# --------------------------------------------------------------------------- Whisper


def whisper_log_mel(audio16k: np.ndarray) -> np.ndarray:
    """openai/whisper `log_mel_spectrogram(pad_or_trim(audio))`: [80, 3000] float32.

    Pads with zeros (or trims) to ASR_N_SAMPLES, centred reflect-padded STFT with a
    periodic Hann window, drops the last frame, power -> mel (librosa slaney filters,
    the ones whisper ships), log10 clamped at 1e-10, dynamic range 8 (log10 units)
    below the max, then (x + 4) / 4.
    """
    spec = C.ASR_MEL
    a = _as_mono_float(audio16k)
    n = C.ASR_N_SAMPLES
    a = a[:n] if a.shape[0] >= n else np.pad(a, (0, n - a.shape[0]))
    stft = librosa.stft(
        a, n_fft=spec.n_fft, hop_length=spec.hop_length, win_length=spec.win_length,
        window="hann", center=True, pad_mode="reflect",
    )
    power = np.abs(stft[:, :-1]).astype(np.float64) ** 2
    mel = _mel_basis(spec.sample_rate, spec.n_fft, spec.n_mels, 0.0, None) @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    out = ((log_spec + 4.0) / 4.0).astype(np.float32)
    assert out.shape == (spec.n_mels, C.ASR_N_FRAMES)
    return out


# --------------------------------------------------------------------------- HiFi-GAN


def hifigan_log_mel(audio22k: np.ndarray) -> np.ndarray:
    """jik876/hifi-gan `mel_spectrogram` (meldataset.py) of 22.05 kHz audio: [80, n / 256] float32.

    Reflect-pads (n_fft - hop) / 2 on both sides, STFT without centring (periodic Hann), magnitude,
    mel (librosa slaney filters, fmin 0, fmax 8000), natural log of max(mel, 1e-5): the contract's TTS_MEL,
    what a FastSpeech2 checkpoint predicts and HiFi-GAN vocodes.
    """
    spec = C.TTS_MEL
    a = _as_mono_float(audio22k)
    pad = (spec.n_fft - spec.hop_length) // 2
    stft = librosa.stft(np.pad(a, (pad, pad), mode="reflect"), n_fft=spec.n_fft, hop_length=spec.hop_length,
                        win_length=spec.win_length, window="hann", center=False)
    mel = _mel_basis(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax) @ np.abs(stft)
    return np.log(np.maximum(mel, np.exp(C.LOG_MEL_FLOOR))).astype(np.float32)


# --------------------------------------------------------------------------- Wav2Lip


def _lipsync_from_magnitudes(mag: np.ndarray) -> np.ndarray:
    """|STFT| [n_fft/2+1, frames] -> Wav2Lip's normalised symmetric mel [80, frames] (float64)."""
    spec = C.LIPSYNC_MEL
    mel = _mel_basis(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax) @ mag
    min_level = 10.0 ** (C.LIPSYNC_MIN_LEVEL_DB / 20.0)  # audio.py: exp(min_level_db / 20 * ln 10) = 1e-5
    s = 20.0 * np.log10(np.maximum(min_level, mel)) - C.LIPSYNC_REF_LEVEL_DB
    m = C.LIPSYNC_MAX_ABS_VALUE
    return np.clip((2 * m) * ((s - C.LIPSYNC_MIN_LEVEL_DB) / (-C.LIPSYNC_MIN_LEVEL_DB)) - m, -m, m)


def _lipsync_mel_of_preemphasized(y: np.ndarray) -> np.ndarray:
    spec = C.LIPSYNC_MEL
    d = librosa.stft(y=y, n_fft=spec.n_fft, hop_length=spec.hop_length, win_length=spec.win_length,
                     pad_mode="reflect")
    return _lipsync_from_magnitudes(np.abs(d))


def wav2lip_mel(audio16k: np.ndarray) -> np.ndarray:
    """Rudrabha/Wav2Lip audio.py `melspectrogram(wav)`: [80, 1 + len // 200] float32 in [-4, 4].

    Pre-emphasis 0.97, centred reflect-padded STFT (n_fft 800, hop 200), magnitude ->
    mel (55..7600 Hz), 20*log10(max(1e-5, x)) - 20 dB, symmetric normalisation with clipping.
    Computed in float64 like Wav2Lip (lfilter promotes to float64). Needs at least one sample.
    """
    a = _as_mono_float(audio16k, np.float64)
    if a.shape[0] == 0:
        raise ValueError("wav2lip_mel needs at least one sample")
    y = scipy.signal.lfilter([1.0, -C.LIPSYNC_PREEMPHASIS], [1.0], a)
    return _lipsync_mel_of_preemphasized(y).astype(np.float32)


def lipsync_window(mel: np.ndarray, frame_index: int) -> np.ndarray:
    """The [80, 16] mel window that drives video frame `frame_index` of an utterance whose full
    Wav2Lip mel is `mel` (Wav2Lip's inference loop, with its end-of-audio clamp to the last
    16 frames). A mel shorter than 16 frames (< 0.2 s of audio) is padded on the right with the
    silence value -4 (Wav2Lip itself would fail there)."""
    step = C.LIPSYNC_MEL_STEP
    if mel.shape[1] < step:
        pad = np.full((mel.shape[0], step - mel.shape[1]), -C.LIPSYNC_MAX_ABS_VALUE, dtype=mel.dtype)
        return np.concatenate([mel, pad], axis=1)
    start = min(C.lipsync_window_start(frame_index), mel.shape[1] - step)
    return mel[:, start:start + step]


class LipsyncMelStream:
    """Wav2Lip mel windows from 16 kHz audio that arrives in pieces.

    `push(samples)` returns the windows ([80, 16] float32 arrays, consecutive video frames; the
    first is frame `frames_emitted - len(result)`) of every frame whose 16 mel frames are final
    (a mel frame is final once all samples within n_fft/2 = 400 of its centre have arrived),
    so frame i comes out once about 640*i + 3400 samples (~212 ms past its pts) are in.
    `finish(n_video_frames)` reflect-pads the end like librosa and returns the remaining
    windows up to the utterance's video frame count; windows that would run past the mel
    end are clamped to the last 16 mel frames as Wav2Lip does. The result is identical to
    `lipsync_window(wav2lip_mel(whole_audio), i)` for i in range(n_video_frames).

    n_video_frames: pass the count the audio clock uses (FrameClock, 22050 Hz samples), so
    video and audio agree exactly. If omitted, it is computed from the 16 kHz samples as
    `video_frames_for_samples(n16k, 16000)`, which can differ by one from the 22050 Hz count
    because of resampler rounding. Work per push is proportional to the new audio.
    """

    def __init__(self) -> None:
        spec = C.LIPSYNC_MEL
        self._n_fft = spec.n_fft
        self._hop = spec.hop_length
        self._half = spec.n_fft // 2
        self._prev = 0.0  # last raw sample, for the pre-emphasis filter across pushes
        self._n = 0  # raw samples received
        self._pre: list[np.ndarray] = []  # pre-emphasised samples until the left reflect pad can be built
        self._buf = np.zeros(0, np.float64)  # padded signal from padded index _buf_start on
        self._buf_start = 0
        self._padded = False  # left reflect padding built (needs n > n_fft / 2)
        self._mel = np.zeros((spec.n_mels, 0), np.float64)  # final mel frames from _mel_start on
        self._mel_start = 0
        self._n_mel = 0  # final mel frames computed so far
        self._next_frame = 0  # next video frame to emit
        self._finished = False

    @property
    def frames_emitted(self) -> int:
        return self._next_frame

    @property
    def samples_received(self) -> int:
        return self._n

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        if self._finished:
            raise RuntimeError("push after finish")
        x = _as_mono_float(samples, np.float64).ravel()
        if x.shape[0] == 0:
            return []
        y = x - C.LIPSYNC_PREEMPHASIS * np.concatenate([[self._prev], x[:-1]])
        self._prev = float(x[-1])
        self._n += x.shape[0]
        if not self._padded:
            self._pre.append(y)
            if self._n <= self._half:
                return []
            sig = np.concatenate(self._pre)
            self._pre = []
            self._buf = np.concatenate([sig[self._half:0:-1], sig])  # np.pad(mode="reflect") head
            self._buf_start = 0
            self._padded = True
        else:
            self._buf = np.concatenate([self._buf, y])
        # frame j needs padded[j*hop, j*hop + n_fft), available up to padded index half + n
        n_final = (self._n - self._half) // self._hop + 1
        self._compute_frames(n_final)
        out = []
        step = C.LIPSYNC_MEL_STEP
        while C.lipsync_window_start(self._next_frame) + step <= self._n_mel:
            out.append(self._window(C.lipsync_window_start(self._next_frame)))
            self._next_frame += 1
        self._trim()
        return out

    def finish(self, n_video_frames: int | None = None) -> list[np.ndarray]:
        if self._finished:
            raise RuntimeError("finish called twice")
        self._finished = True
        if n_video_frames is None:
            n_video_frames = C.video_frames_for_samples(self._n, C.LIPSYNC_MEL.sample_rate)
        if n_video_frames < self._next_frame:
            raise ValueError(f"n_video_frames={n_video_frames} but {self._next_frame} frames were already emitted")
        first = self._next_frame
        if n_video_frames == first:
            return []
        if self._n == 0:
            mel = np.zeros((C.LIPSYNC_MEL.n_mels, 0))
        elif not self._padded:  # short utterance (<= n_fft/2 samples): everything is still buffered
            y = np.concatenate(self._pre)
            frames = np.lib.stride_tricks.sliding_window_view(
                np.pad(y, self._half, mode="reflect"), self._n_fft)[:: self._hop]
            mel = _lipsync_from_magnitudes(np.abs(np.fft.rfft(frames * _hann(self._n_fft), axis=1)).T)
        else:
            n, h = self._n, self._half
            rel = n - 1 - self._buf_start  # padded index n - 1 holds x[n - 401]
            tail = self._buf[rel:rel + h][::-1]  # x[n-2], ..., x[n-1-h]: np.pad(mode="reflect") tail
            self._buf = np.concatenate([self._buf, tail])
            self._compute_frames(1 + n // self._hop)
            mel = self._mel
        offset = self._mel_start if self._padded else 0
        total = offset + mel.shape[1]  # mel frames of the whole utterance
        out = []
        for i in range(first, n_video_frames):
            if total < C.LIPSYNC_MEL_STEP:
                out.append(lipsync_window(mel, 0))
            else:
                start = min(C.lipsync_window_start(i), total - C.LIPSYNC_MEL_STEP) - offset
                out.append(mel[:, start:start + C.LIPSYNC_MEL_STEP])
        self._next_frame = n_video_frames
        return [w.astype(np.float32) for w in out]

    # ----------------------------------------------------------------- internals

    def _window(self, start: int) -> np.ndarray:
        s = start - self._mel_start
        return self._mel[:, s:s + C.LIPSYNC_MEL_STEP].astype(np.float32)

    def _compute_frames(self, n_final: int) -> None:
        if n_final <= self._n_mel:
            return
        a = self._n_mel * self._hop - self._buf_start
        b = (n_final - 1) * self._hop + self._n_fft - self._buf_start
        frames = np.lib.stride_tricks.sliding_window_view(self._buf[a:b], self._n_fft)[:: self._hop]
        assert frames.shape[0] == n_final - self._n_mel
        mag = np.abs(np.fft.rfft(frames * _hann(self._n_fft), axis=1)).T
        self._mel = np.concatenate([self._mel, _lipsync_from_magnitudes(mag)], axis=1)
        self._n_mel = n_final

    def _trim(self) -> None:
        # keep samples for the next frames and the 401 samples the end reflection needs
        keep = min(self._n_mel * self._hop, self._n - 1)
        if keep > self._buf_start:
            self._buf = self._buf[keep - self._buf_start:]
            self._buf_start = keep
        # keep mel for the next window and the last 16 frames (end clamp)
        keep_mel = max(0, min(C.lipsync_window_start(self._next_frame), self._n_mel - C.LIPSYNC_MEL_STEP))
        if keep_mel > self._mel_start:
            self._mel = self._mel[:, keep_mel - self._mel_start:]
            self._mel_start = keep_mel


# --------------------------------------------------------------------------- resampling


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Whole-signal resampling with soxr (HQ), float32 out."""
    a = _as_mono_float(audio)
    if from_rate == to_rate:
        return a.copy()
    return soxr.resample(a, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


class StreamingResampler:
    """soxr.ResampleStream for mono float32; default is the TTS 22050 Hz -> Wav2Lip 16 kHz path.

    Output lags input by the filter delay; `finish()` flushes it. The concatenated output
    equals `resample(whole, from_rate, to_rate)`.
    """

    def __init__(self, from_rate: int = C.OUTPUT_SAMPLE_RATE, to_rate: int = C.LIPSYNC_MEL.sample_rate,
                 quality: str = "HQ") -> None:
        self.from_rate = from_rate  # input rate, Hz
        self.to_rate = to_rate  # output rate, Hz
        self._stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality=quality)
        self.samples_in = 0
        self.samples_out = 0
        self._finished = False

    def push(self, samples: np.ndarray) -> np.ndarray:
        if self._finished:
            raise RuntimeError("push after finish")
        x = np.ascontiguousarray(_as_mono_float(samples))
        self.samples_in += x.shape[0]
        y = self._stream.resample_chunk(x, last=False)
        self.samples_out += y.shape[0]
        return y

    def finish(self) -> np.ndarray:
        if self._finished:
            raise RuntimeError("finish called twice")
        self._finished = True
        y = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self.samples_out += y.shape[0]
        return y
