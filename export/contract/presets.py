"""Model dimensions of the two presets: `tiny` (CPU demo and CI) and `base` (real sizes).

Field names follow each family's own config so that, later, a real checkpoint's
config can fill the same dataclass: whisper's ModelDimensions, transformers'
Qwen2Config, FastSpeech2's model.yaml, HiFi-GAN's config.json, Wav2Lip's layers.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from export.contract import media


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int = media.ASR_MEL.n_mels  # mel bins of the front end
    n_audio_ctx: int = media.ASR_AUDIO_CTX  # encoder positions (30 s after the stride-2 conv)
    n_audio_state: int = 512  # encoder width
    n_audio_head: int = 8  # encoder attention heads
    n_audio_layer: int = 6  # encoder blocks
    n_vocab: int = 51865  # token vocabulary
    n_text_ctx: int = 448  # decoder positions
    n_text_state: int = 512  # decoder width
    n_text_head: int = 8  # decoder attention heads
    n_text_layer: int = 6  # decoder blocks


@dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int = 151936  # token vocabulary
    hidden_size: int = 896  # residual width
    intermediate_size: int = 4864  # SwiGLU width
    num_hidden_layers: int = 24  # decoder blocks
    num_attention_heads: int = 14  # query heads
    num_key_value_heads: int = 2  # key/value heads (grouped-query attention)
    rope_theta: float = 1_000_000.0  # rotary base
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    max_position_embeddings: int = 32768  # longest context the rotary table covers
    tie_word_embeddings: bool = True  # lm_head shares the embedding matrix
    attention_bias: bool = True  # q/k/v projections carry a bias (Qwen2: yes, LLaMA: no)

    @property
    def head_dim(self) -> int:
        return media.exact_div(self.hidden_size, self.num_attention_heads)


@dataclass(frozen=True)
class FastSpeech2Config:
    n_symbols: int = 361  # symbol table size (ming024 text/symbols.py with ARPAbet)
    encoder_layer: int = 4  # FFT blocks in the encoder
    encoder_head: int = 2
    encoder_hidden: int = 256
    decoder_layer: int = 6  # FFT blocks in the mel decoder
    decoder_head: int = 2
    decoder_hidden: int = 256
    conv_filter_size: int = 1024  # position-wise conv width in an FFT block
    conv_kernel_size: tuple[int, int] = (9, 1)
    variance_predictor_filter_size: int = 256
    variance_predictor_kernel_size: int = 3
    n_bins: int = 256  # pitch/energy quantization bins
    max_seq_len: int = 1000  # sinusoid table length (symbols and mel frames)
    n_mel_channels: int = media.TTS_MEL.n_mels
    postnet_embedding_dim: int = 512
    postnet_kernel_size: int = 5
    postnet_n_convolutions: int = 5


@dataclass(frozen=True)
class HiFiGANConfig:
    num_mels: int = media.TTS_MEL.n_mels
    upsample_rates: tuple[int, ...] = media.VOCODER_UPSAMPLE_RATES
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))


@dataclass(frozen=True)
class VitsConfig:
    """Architecture of a Piper VITS voice (piper_train __main__ / lightning.py hyper-parameters)."""

    n_vocab: int = 256  # phoneme ids (the json's num_symbols; rows of enc_p.emb)
    hidden_channels: int = 192  # text encoder width; also the flow's WN width and the duration predictor's
    inter_channels: int = 192  # latent channels C: prior mean/log-std, flow and decoder input
    filter_channels: int = 768  # text encoder FFN width
    n_heads: int = 2  # text encoder attention heads
    n_layers: int = 6  # text encoder blocks
    kernel_size: int = 3  # text encoder FFN kernel
    p_dropout: float = 0.1  # training only; unused at inference
    window_size: int = 4  # relative attention window (+-positions with their own embedding)
    dp_kernel_size: int = 3  # stochastic duration predictor DDSConv kernel
    dp_n_flows: int = 4  # its ConvFlows (the reverse pass uses n_flows - 1 of them)
    dp_num_bins: int = 10  # rational-quadratic spline bins per ConvFlow
    dp_tail_bound: float = 5.0  # spline interval [-tail_bound, tail_bound]; identity outside
    flow_kernel_size: int = 5  # ResidualCouplingBlock WN kernel
    flow_dilation_rate: int = 1  # WN dilation growth per layer
    flow_n_layers: int = 4  # WN layers per coupling layer
    flow_n_flows: int = 4  # coupling layers
    resblock: str = "2"  # decoder residual block type: "1" (high) or "2" (x-low, low, medium)
    resblock_kernel_sizes: tuple[int, ...] = (3, 5, 7)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 2), (2, 6), (3, 12))
    upsample_rates: tuple[int, ...] = (8, 8, 4)  # product = hop (256 samples per latent frame)
    upsample_initial_channel: int = 256
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8)
    n_speakers: int = 1  # only single-speaker voices are supported
    gin_channels: int = 0  # speaker embedding width (0: single speaker)
    sample_rate: int = 22050  # Hz of the output audio

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)

    @classmethod
    def quality(cls, name: str, n_vocab: int = 256) -> VitsConfig:
        """Piper's presets (piper_train/__main__.py --quality): x-low, medium (= low), high."""
        if name == "x-low":
            return cls(n_vocab=n_vocab, hidden_channels=96, inter_channels=96, filter_channels=384)
        if name in ("low", "medium"):
            return cls(n_vocab=n_vocab)
        if name == "high":
            return cls(n_vocab=n_vocab, resblock="1", resblock_kernel_sizes=(3, 7, 11),
                       resblock_dilation_sizes=((1, 3, 5),) * 3, upsample_rates=(8, 8, 2, 2),
                       upsample_initial_channel=512, upsample_kernel_sizes=(16, 16, 4, 4))
        raise ValueError(f"unknown Piper quality {name!r}: x-low, low, medium or high")


@dataclass(frozen=True)
class Wav2LipConfig:
    width: float = 1.0  # channel multiplier over the published layer widths (1.0 = Wav2Lip 96)
    face_size: int = media.FACE_SIZE
    mel_step: int = media.LIPSYNC_MEL_STEP
    n_mels: int = media.LIPSYNC_MEL.n_mels


@dataclass(frozen=True)
class Preset:
    name: str
    asr: WhisperDims
    llm: Qwen2Config
    vits: VitsConfig  # the `tts` and `vocoder` stages (speech family "vits": a Piper voice)
    fastspeech2: FastSpeech2Config  # the `fastspeech2` stage (speech family "fastspeech2")
    hifigan: HiFiGANConfig  # the `hifigan` stage: the fastspeech2 family's vocoder
    wav2lip: Wav2LipConfig  # the `wav2lip` stage (lip-sync family "wav2lip")
    speech: str = "vits"  # the speech family the orchestrator drives: "vits" or "fastspeech2" (SPEECH_FAMILY_NAMES; their stages: spec.SPEECH_FAMILIES)
    lipsync: str = "warp"  # the lip-sync family: "warp" (no weights) or "wav2lip" (LIPSYNC_FAMILY_NAMES)
    # decoding limits the orchestrator applies with this preset
    max_reply_tokens: int = 64
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.speech not in SPEECH_FAMILY_NAMES:
            raise ValueError(f"preset {self.name}: speech family {self.speech!r} is not one of {SPEECH_FAMILY_NAMES}")
        if self.lipsync not in LIPSYNC_FAMILY_NAMES:
            raise ValueError(f"preset {self.name}: lip-sync family {self.lipsync!r} is not one of {LIPSYNC_FAMILY_NAMES}")


SPEECH_FAMILY_NAMES = ("vits", "fastspeech2")
LIPSYNC_FAMILY_NAMES = ("warp", "wav2lip")
# Tiny vocabularies (export/contract/vocab.py builds the word-level tokenizer of this size).
TINY_VOCAB = 512

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        asr=WhisperDims(n_audio_state=64, n_audio_head=2, n_audio_layer=2, n_vocab=TINY_VOCAB,
                        n_text_state=64, n_text_head=2, n_text_layer=2),
        llm=Qwen2Config(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
        vits=VitsConfig(hidden_channels=32, inter_channels=32, filter_channels=64, n_layers=1, flow_n_layers=1,
                        flow_n_flows=1, dp_n_flows=2, upsample_initial_channel=32, resblock_kernel_sizes=(3,),
                        resblock_dilation_sizes=((1, 2),)),
        fastspeech2=FastSpeech2Config(encoder_layer=1, encoder_hidden=64, decoder_layer=1, decoder_hidden=64,
                                      conv_filter_size=128, variance_predictor_filter_size=64, n_bins=32,
                                      postnet_embedding_dim=64, postnet_n_convolutions=2),
        hifigan=HiFiGANConfig(upsample_initial_channel=32, resblock_kernel_sizes=(3, 7),
                              resblock_dilation_sizes=((1, 3, 5), (1, 3, 5))),
        wav2lip=Wav2LipConfig(width=0.125),
        max_reply_tokens=40,
        notes="seconds on 2 CPU cores; same code paths as base",
    ),
    "base": Preset(
        name="base",
        asr=WhisperDims(),  # whisper-base, ~74M parameters
        llm=Qwen2Config(),  # Qwen2.5-0.5B, ~494M parameters
        vits=VitsConfig(),  # Piper VITS "medium", ~15.7M parameters
        fastspeech2=FastSpeech2Config(),  # FastSpeech2 LJSpeech, ~35M parameters
        hifigan=HiFiGANConfig(),  # HiFi-GAN V1, ~14M parameters
        wav2lip=Wav2LipConfig(),  # Wav2Lip 96, ~36M parameters
        max_reply_tokens=128,
        notes="published model sizes",
    ),
}


PRODUCTION_PRESET = "base"  # the preset the checked-in TensorRT configs (config.pbtxt) and plans are for


def preset_with(family: str, config) -> Preset:
    """A preset carrying `config` for one family (e.g. "asr", WhisperDims), the others tiny: what a
    graph needs for export.contract.spec to resolve its preset-dependent dims."""
    return dataclasses.replace(PRESETS["tiny"], **{family: config})


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
