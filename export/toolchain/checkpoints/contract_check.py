"""The audio contract (export/contract/media.py) checked across real checkpoints at load time.

A TTS and a vocoder trained on different mels produce noise, not an error, so every setting is
compared before anything is exported and any difference is a `ContractError` (a CheckpointError)
that names each mismatching field with every value and where each came from:

* FastSpeech2 (ming024 `preprocess.yaml`: preprocessing.audio.sampling_rate, stft.filter_length /
  hop_length / win_length, mel.n_mel_channels / mel_fmin / mel_fmax) and HiFi-GAN (`config.json`:
  sampling_rate, n_fft, hop_size, win_size, num_mels, fmin, fmax) must agree with each other and
  with `media.TTS_MEL`; the vocoder's prod(upsample_rates) must equal the hop (its own and the
  contract's), or its audio is not F * hop samples long.
* Wav2Lip has no config file: its front end is fixed by Rudrabha/Wav2Lip's hparams.py (16 kHz,
  n_fft 800, hop 200, win 800, 80 mels, fmin 55, fmax 7600, 16-frame windows, 96-pixel faces),
  which must be `media.LIPSYNC_MEL` and the contract's window and face sizes; the checkpoint's
  audio encoder must take one channel and reduce an 80 x 16 mel window to 1 x 1.
* Whisper: the ASR spec fixes 80 mels and 1500 encoder positions (large-v3's 128 mels do not fit).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from export.contract import media
from export.toolchain.checkpoints.common import CheckpointError

FIELDS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax")
CONTRACT_SOURCE = "export/contract/media.py"

# ming024 preprocess.yaml and jik876 config.json key of each contract field
PREPROCESS_KEYS = {
    "sample_rate": ("preprocessing", "audio", "sampling_rate"),
    "n_fft": ("preprocessing", "stft", "filter_length"),
    "win_length": ("preprocessing", "stft", "win_length"),
    "hop_length": ("preprocessing", "stft", "hop_length"),
    "n_mels": ("preprocessing", "mel", "n_mel_channels"),
    "fmin": ("preprocessing", "mel", "mel_fmin"),
    "fmax": ("preprocessing", "mel", "mel_fmax"),
}
HIFIGAN_KEYS = {"sample_rate": "sampling_rate", "n_fft": "n_fft", "win_length": "win_size", "hop_length": "hop_size",
                "n_mels": "num_mels", "fmin": "fmin", "fmax": "fmax"}

# Rudrabha/Wav2Lip hparams.py (and audio.py / inference.py), as released
WAV2LIP_HPARAMS = {"sample_rate": 16000, "n_fft": 800, "win_length": 800, "hop_length": 200, "n_mels": 80,
                   "fmin": 55.0, "fmax": 7600.0}
WAV2LIP_MEL_STEP = 16  # inference.py mel_step_size (hparams.syncnet_mel_step_size)
WAV2LIP_IMG_SIZE = 96  # hparams.img_size
WAV2LIP_FPS = 25.0  # hparams.fps


class ContractError(CheckpointError):
    """Checkpoints whose audio settings disagree with each other or with export/contract/media.py."""


_MISSING = object()


@dataclass(frozen=True)
class AudioSettings:
    """One checkpoint's audio front end as its config file states it (a field it does not state is absent)."""

    owner: str  # "TTS", "vocoder"
    file: str = ""  # the config file read
    values: dict = field(default_factory=dict)  # contract field -> value
    sources: dict = field(default_factory=dict)  # contract field -> "FILE: key"
    complete: bool = True  # from a config file meant to state every field (False: only what a checkpoint shows)

    def where(self, name: str) -> str:
        return self.sources.get(name, self.owner)


def _get(cfg: Mapping, path: Sequence[str]):
    node = cfg
    for k in path:
        if not isinstance(node, Mapping) or k not in node:
            return _MISSING
        node = node[k]
    return node


def tts_audio_from_preprocess(preprocess: Mapping, source: str) -> AudioSettings:
    """The contract fields of a ming024 preprocess.yaml (parsed)."""
    values, sources = {}, {}
    for name, path in PREPROCESS_KEYS.items():
        v = _get(preprocess, path)
        if v is not _MISSING:
            values[name] = v
            sources[name] = f"{source}: {'.'.join(path)}"
    return AudioSettings("TTS", source, values, sources)


def vocoder_audio_from_config(config: Mapping, source: str) -> AudioSettings:
    """The contract fields of a jik876/hifi-gan config.json (parsed)."""
    values, sources = {}, {}
    for name, key in HIFIGAN_KEYS.items():
        if key in config:
            values[name] = config[key]
            sources[name] = f"{source}: {key}"
    return AudioSettings("vocoder", source, values, sources)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-9)
    return a == b


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "null" if v is None else str(v)


def check_tts_audio(tts: AudioSettings | None = None, vocoder: AudioSettings | None = None, *,
                    upsample_rates: Sequence[int] | None = None, upsample_source: str = "vocoder config") -> None:
    """Raise ContractError unless the TTS and vocoder settings given match each other and media.TTS_MEL."""
    expected = media.TTS_MEL
    problems = []
    sides = [s for s in (tts, vocoder) if s is not None]
    for name in FIELDS:
        want = getattr(expected, name)
        entries = [(f"contract {_fmt(want)}", want, f"{CONTRACT_SOURCE} TTS_MEL.{name}")]
        absent = []
        for s in sides:
            if name in s.values:
                entries.append((f"{s.owner} {_fmt(s.values[name])}", s.values[name], s.where(name)))
            else:
                absent.append(s)
        if any(not _same(v, want) for _, v, _ in entries[1:]):
            # name the checkpoints first (the usual reader's question: which two disagree?)
            shown = entries[1:] + entries[:1]
            problems.append(f"{name}: " + ", ".join(f"{label} ({where})" for label, _, where in shown))
        for s in (s for s in absent if s.complete):
            problems.append(f"{name}: {s.owner} config {s.file or '(none)'} does not state it; "
                            f"contract {_fmt(want)} ({CONTRACT_SOURCE} TTS_MEL.{name})")
    if upsample_rates is not None:
        product = math.prod(int(u) for u in upsample_rates)
        hops = [(f"contract hop {expected.hop_length}", expected.hop_length, f"{CONTRACT_SOURCE} TTS_MEL.hop_length")]
        if vocoder is not None and "hop_length" in vocoder.values:
            hops.insert(0, (f"vocoder hop_size {_fmt(vocoder.values['hop_length'])}", vocoder.values["hop_length"],
                            vocoder.where("hop_length")))
        wrong = [h for h in hops if not _same(product, h[1])]
        if wrong:
            problems.append(f"upsample_rates: prod({list(upsample_rates)}) = {product} ({upsample_source}: "
                            f"upsample_rates) != " + ", ".join(f"{label} ({where})" for label, _, where in wrong)
                            + "; the vocoder's audio would not be frames * hop samples long")
    if problems:
        who = " and ".join(s.owner for s in sides) or "vocoder"
        raise ContractError(f"audio contract mismatch ({who} vs export/contract/media.py TTS_MEL "
                            f"{_describe(expected)}):\n  " + "\n  ".join(problems))


def _describe(m: media.MelSpec) -> str:
    return (f"{m.sample_rate} Hz, n_fft {m.n_fft}, win {m.win_length}, hop {m.hop_length}, {m.n_mels} mels, "
            f"{_fmt(m.fmin)}-{_fmt(m.fmax)} Hz")


# ----------------------------------------------------------------------------- Wav2Lip

def check_lipsync_constants() -> None:
    """Wav2Lip's hparams (fixed at training, no config file) against media.LIPSYNC_MEL and friends."""
    problems = []
    for name, value in WAV2LIP_HPARAMS.items():
        have = getattr(media.LIPSYNC_MEL, name)
        if not _same(have, value):
            problems.append(f"{name}: Wav2Lip hparams.py {_fmt(value)} != {_fmt(have)} "
                            f"({CONTRACT_SOURCE} LIPSYNC_MEL.{name})")
    for label, value, have, where in (
            ("mel_step_size", WAV2LIP_MEL_STEP, media.LIPSYNC_MEL_STEP, "LIPSYNC_MEL_STEP"),
            ("img_size", WAV2LIP_IMG_SIZE, media.FACE_SIZE, "FACE_SIZE"),
            ("fps", WAV2LIP_FPS, media.VIDEO_FPS, "VIDEO_FPS")):
        if not _same(value, have):
            problems.append(f"{label}: Wav2Lip {_fmt(value)} != {_fmt(have)} ({CONTRACT_SOURCE} {where})")
    if problems:
        raise ContractError("Wav2Lip's fixed front end disagrees with export/contract/media.py:\n  " + "\n  ".join(problems))


@torch.no_grad()
def check_lipsync_model(model: torch.nn.Module, source: str) -> None:
    """The Wav2Lip audio encoder takes [B, 1, 80, 16] mel windows and reduces them to the 1 x 1 embedding
    the face decoder starts from; its face encoder takes the 6-channel (masked + reference) faces."""
    check_lipsync_constants()
    first = model.audio_encoder[0].conv_block[0]
    face = model.face_encoder_blocks[0][0].conv_block[0]
    n_mels, step = media.LIPSYNC_MEL.n_mels, media.LIPSYNC_MEL_STEP
    problems = []
    if first.in_channels != 1:
        problems.append(f"audio_encoder.0.conv_block.0.weight takes {first.in_channels} input channels, "
                        f"the mel window has 1")
    if face.in_channels != 6:
        problems.append(f"face_encoder_blocks.0.0.conv_block.0.weight takes {face.in_channels} input channels, "
                        f"the faces input has 6")
    if not problems:
        was = model.training
        model.eval()
        emb = model.audio_encoder(torch.zeros(1, 1, n_mels, step))
        model.train(was)
        width = model.face_decoder_blocks[0][0].conv_block[0].in_channels
        if tuple(emb.shape) != (1, width, 1, 1):
            problems.append(f"the audio encoder maps a [1, 1, {n_mels}, {step}] mel window to {list(emb.shape)}, "
                            f"the face decoder expects [1, {width}, 1, 1]")
    if problems:
        raise ContractError(f"{source}: Wav2Lip checkpoint does not fit the lip-sync contract "
                            f"({n_mels} x {step} mel windows, {media.FACE_SIZE}-pixel faces):\n  "
                            + "\n  ".join(problems))


# ----------------------------------------------------------------------------- Whisper

def check_asr_dims(dims, source: str) -> None:
    """WhisperDims against the ASR spec: 80-mel input, 1500 encoder positions, 448 decoder positions."""
    from export.contract import spec

    dec = spec.ASR_DECODER
    need_ctx = dec.axis("past").max + dec.axis("tokens").max
    problems = []
    if dims.n_mels != media.ASR_MEL.n_mels:
        problems.append(f"n_mels: checkpoint {dims.n_mels} != {media.ASR_MEL.n_mels} "
                        f"({CONTRACT_SOURCE} ASR_MEL.n_mels)")
    if dims.n_audio_ctx != media.ASR_AUDIO_CTX:
        problems.append(f"n_audio_ctx: checkpoint {dims.n_audio_ctx} != {media.ASR_AUDIO_CTX} "
                        f"({CONTRACT_SOURCE} ASR_AUDIO_CTX, 30 s of audio)")
    if dims.n_text_ctx < need_ctx:
        problems.append(f"n_text_ctx: checkpoint {dims.n_text_ctx} < {need_ctx} (export/contract/spec.py asr_decoder "
                        f"past.max + tokens.max)")
    if problems:
        raise ContractError(f"{source}: Whisper checkpoint does not fit the ASR contract:\n  " + "\n  ".join(problems))
