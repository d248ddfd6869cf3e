"""The audio/video contract: every sample rate, hop, mel setting and frame rate, once.

Each model family reads its front-end settings from here, and the invariants
that tie them together are asserted at import time, so a mismatch fails loudly
instead of producing subtly wrong audio or lip motion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


def exact_div(x: int, y: int) -> int:
    """x / y, asserting that y divides x (as whisper's audio.py does)."""
    assert x % y == 0, f"{x} is not divisible by {y}"
    return x // y


@dataclass(frozen=True)
class MelSpec:
    """How a waveform becomes a mel spectrogram for one model family."""

    sample_rate: int  # Hz of the waveform
    n_fft: int  # FFT size in samples
    win_length: int  # analysis window in samples (Hann)
    hop_length: int  # samples between mel frames
    n_mels: int  # mel bins
    fmin: float  # lowest mel filter edge, Hz
    fmax: float  # highest mel filter edge, Hz

    @property
    def frames_per_second(self) -> Fraction:
        return Fraction(self.sample_rate, self.hop_length)


# Whisper (openai/whisper audio.py): 16 kHz, 25 ms window, 10 ms hop, 80 mels, 30 s context.
ASR_MEL = MelSpec(sample_rate=16000, n_fft=400, win_length=400, hop_length=160, n_mels=80, fmin=0.0, fmax=8000.0)
ASR_CHUNK_SECONDS = 30
ASR_N_SAMPLES = ASR_CHUNK_SECONDS * ASR_MEL.sample_rate  # 480000 samples in a 30 s chunk
ASR_N_FRAMES = exact_div(ASR_N_SAMPLES, ASR_MEL.hop_length)  # 3000 mel frames in the encoder input
ASR_AUDIO_CTX = exact_div(ASR_N_FRAMES, 2)  # 1500 encoder positions after the stride-2 conv

# FastSpeech2 (LJSpeech preprocess.yaml) and HiFi-GAN V1 (config_v1.json) share this mel.
TTS_MEL = MelSpec(sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, n_mels=80, fmin=0.0, fmax=8000.0)
# HiFi-GAN's dynamic_range_compression clips magnitudes at 1e-5 before the log: the log-mel of silence.
LOG_MEL_FLOOR = math.log(1e-5)
# HiFi-GAN V1 transposed-conv upsampling; their product must equal the mel hop.
VOCODER_UPSAMPLE_RATES = (8, 8, 2, 2)
assert math.prod(VOCODER_UPSAMPLE_RATES) == TTS_MEL.hop_length

# Wav2Lip (Rudrabha/Wav2Lip hparams.py): its own 16 kHz mel, 80 frames per second.
LIPSYNC_MEL = MelSpec(sample_rate=16000, n_fft=800, win_length=800, hop_length=200, n_mels=80, fmin=55.0, fmax=7600.0)
LIPSYNC_PREEMPHASIS = 0.97  # hparams.preemphasis
LIPSYNC_MIN_LEVEL_DB = -100.0  # hparams.min_level_db
LIPSYNC_REF_LEVEL_DB = 20.0  # hparams.ref_level_db
LIPSYNC_MAX_ABS_VALUE = 4.0  # symmetric mels in [-4, 4]
LIPSYNC_MEL_STEP = 16  # mel frames in the window that drives one video frame (mel_step_size)
FACE_SIZE = 96  # Wav2Lip's square face crop, pixels

# Video clock.
VIDEO_FPS = 25
MEL_FRAMES_PER_VIDEO_FRAME = LIPSYNC_MEL.frames_per_second / VIDEO_FPS  # 80/25 = 16/5 (Wav2Lip's 80./fps)
assert MEL_FRAMES_PER_VIDEO_FRAME == Fraction(16, 5)
# Output audio samples per video frame at the TTS rate: 22050 / 25 = 882.
AUDIO_SAMPLES_PER_VIDEO_FRAME = exact_div(TTS_MEL.sample_rate, VIDEO_FPS)

# The service's input audio contract (what the ASR front end accepts).
INPUT_SAMPLE_RATE = ASR_MEL.sample_rate
OUTPUT_SAMPLE_RATE = TTS_MEL.sample_rate

# Voice activity detection (silero VAD, snakers4/silero-vad utils_vad.py OnnxWrapper): at 16 kHz each call
# sees one 512-sample window (32 ms) behind the last 64 samples of the window before it; the LSTM carries
# a 2 x 128 state per stream from call to call.
VAD_SAMPLE_RATE = INPUT_SAMPLE_RATE
VAD_WINDOW = 512  # samples per call at 16 kHz (silero accepts no other window at this rate)
VAD_CONTEXT = 64  # samples of the previous window prepended to each call
VAD_INPUT = VAD_CONTEXT + VAD_WINDOW  # 576 samples per call
VAD_STATE = (2, 128)  # silero's LSTM state per stream (h and c, 128 units)
assert VAD_SAMPLE_RATE == 16000, "silero VAD's 512-sample window and 64-sample context are its 16 kHz settings"


def lipsync_window_start(frame_index: int) -> int:
    """First Wav2Lip mel frame of video frame `frame_index` (Wav2Lip: int(80. * (i / fps)))."""
    return int(MEL_FRAMES_PER_VIDEO_FRAME * frame_index)


def video_frames_for_samples(n_samples: int, sample_rate: int = OUTPUT_SAMPLE_RATE) -> int:
    """Video frames that cover n_samples of audio at the video rate (rounded up)."""
    return math.ceil(Fraction(n_samples * VIDEO_FPS, sample_rate))
