"""The one I/O spec per model: the single source of truth for tensor names, dtypes and shapes.

ONNX dynamic axes (`onnx_dynamic_axes`), TensorRT optimization profiles
(`profile_shapes`), every Triton `config.pbtxt` (`render_config`) and the
client's tensor names are all derived from the `ModelSpec`s below.

Dims exclude the batch axis. A dim is an int (fixed by the audio/video
contract), the name of a dynamic axis (declared with its min/opt/max in
`ModelSpec.axes`), or the name of a preset parameter (resolved from
`export.presets` by `ModelSpec.preset_dims`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from export import contract
from export.presets import Preset, get_preset

# Triton data type names -> numpy dtype names (BYTES travels as numpy object arrays).
NUMPY_DTYPES = {"FP32": "float32", "FP16": "float16", "INT64": "int64", "INT32": "int32", "UINT8": "uint8",
                "BOOL": "bool", "BYTES": "object"}

BATCH_AXIS = "batch"


@dataclass(frozen=True)
class Axis:
    """A dynamic axis and the sizes TensorRT profiles and input validation use."""

    name: str
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton type name: FP32, INT64, UINT8, BYTES, ...
    dims: tuple[int | str, ...]  # without the batch axis
    optional: bool = False  # an input a request may leave out
    ragged: bool = False  # requests of different lengths share a batch; the runtime pads
    pad_value: float = 0.0  # what the runtime pads a ragged input with
    # For batched outputs with a dynamic axis: how long each request's slice is.
    # "output:<name>" = the value of that output; "input:<name>" = that ragged input's length.
    length_from: str | None = None
    length_scale: int = 1  # multiplies the length read from length_from

    @property
    def numpy_dtype(self) -> str:
        return NUMPY_DTYPES[self.dtype]


@dataclass(frozen=True)
class SessionState:
    """A model whose cache the GPU variant keeps on the GPU, keyed by session (export/llm_sessions.py).

    In the variants named here the config gains `inputs` (optional, SESSION_INPUTS), `state_input` and
    `prefill_inputs` become optional and the model runs one instance (the cache lives in its process). A
    request that carries a session id leaves `state_input` out: its tokens are appended to the session's
    cache (the first request, with the start flag, opens it), and `state_output` comes back as a small
    placeholder; a request with the release flag frees the session's cache (its tokens are not fed). A request with `state_input` and no session id is served as everywhere
    else. Sessions idle longer than `idle_timeout_s` (a turn that died without releasing) are evicted.
    """

    inputs: tuple[Tensor, ...]
    state_input: str
    state_output: str
    prefill_inputs: tuple[str, ...] = ()  # inputs only a session's first request carries (the model keeps them)
    variants: tuple[str, ...] = ("gpu",)
    slots: int = 160  # sessions cached at once (4 orchestrator instances x 32 turns, plus spare)
    idle_timeout_s: float = 60.0
    max_batch_size: int = 64  # decode steps of this many sessions run as one batch
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    max_queue_delay_us: int = 200
    placeholder_shape: tuple[int, ...] = (1, 1, 2, 1, 1, 1)  # `state_output` in session mode (a few bytes)

    @property
    def id_input(self) -> str:
        return self.inputs[0].name

    @property
    def start_input(self) -> str:
        return self.inputs[1].name

    @property
    def release_input(self) -> str:
        return self.inputs[2].name


# The inputs of a session-keyed model (SessionState.inputs): the caller's id for the session; true on the session's
# first request (a request without it for a session the model does not hold is an error: evicted, or the model
# restarted); true to free the session's cache.
SESSION_INPUTS = (Tensor("session_id", "INT64", (1,), optional=True),  # non-zero, chosen by the caller
                  Tensor("session_start", "BOOL", (1,), optional=True),
                  Tensor("session_end", "BOOL", (1,), optional=True))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    axes: tuple[Axis, ...] = ()
    max_batch_size: int = 0  # 0: the model takes no batch axis
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preset_dims: Callable[[Preset], dict[str, int]] = field(default=lambda p: {}, compare=False)
    gpu_instances: int = 1  # instances of the TensorRT plan / PyTorch model per GPU
    gpu_precision: str = "fp16"  # dtype of the PyTorch-on-CUDA variant (gpu): fp16, bf16 or fp32
    max_queue_size: int = 256  # requests waiting beyond this are refused (UNAVAILABLE)
    queue_timeout_us: int = 5_000_000  # a request waiting longer is refused
    parameters: tuple[tuple[str, str], ...] = ()  # config `parameters` the model reads at load time
    session: SessionState | None = None  # GPU variants that keep the cache server-side, keyed by session
    # gpu variant: CUDA graphs captured per batch bucket (1, 2, 4, ... max_batch_size) for these sizes of the
    # spec's one dynamic axis (None: a model without one); other shapes run eagerly. () = eager only.
    gpu_graphs: tuple[int | None, ...] = ()
    # False: no PyTorch module behind the graph (an ONNX graph from elsewhere): the gpu/gpu_naive variants run
    # it with the ort_cpu backend on gpu_instances CPU instances (per GPU of the host) instead of torch_gpu
    torch_module: bool = True

    def axis(self, name: str) -> Axis:
        for a in self.axes:
            if a.name == name:
                return a
        raise KeyError(f"{self.name}: no dynamic axis {name!r}")

    def input(self, name: str) -> Tensor:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> Tensor:
        return next(t for t in self.outputs if t.name == name)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def shape(self, tensor: Tensor, preset: Preset | None) -> list[int | str]:
        """Dims of `tensor` (batch excluded) with preset parameters resolved.

        Dynamic axes stay names; with preset=None, preset parameters stay names too.
        """
        params = self.preset_dims(preset) if preset is not None else {}
        return [params.get(d, d) if isinstance(d, str) else d for d in tensor.dims]


# ---------------------------------------------------------------- the models

def _asr_dims(p: Preset) -> dict[str, int]:
    a = p.asr
    return {"asr_state": a.n_audio_state, "asr_layers": a.n_text_layer, "asr_heads": a.n_text_head,
            "asr_head_dim": contract.exact_div(a.n_text_state, a.n_text_head), "asr_vocab": a.n_vocab}


def _llm_dims(p: Preset) -> dict[str, int]:
    c = p.llm
    return {"llm_layers": c.num_hidden_layers, "llm_kv_heads": c.num_key_value_heads,
            "llm_head_dim": c.head_dim, "llm_vocab": c.vocab_size}


ASR_ENCODER = ModelSpec(
    name="asr_encoder",
    inputs=(Tensor("mel", "FP32", (contract.ASR_MEL.n_mels, contract.ASR_N_FRAMES)),),
    outputs=(Tensor("audio_features", "FP32", (contract.ASR_AUDIO_CTX, "asr_state")),),
    max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=2000,
    preset_dims=_asr_dims, gpu_graphs=(None,),  # a fixed 30 s window
)

ASR_DECODER = ModelSpec(
    name="asr_decoder",
    inputs=(
        Tensor("tokens", "INT64", ("tokens",)),
        Tensor("audio_features", "FP32", (contract.ASR_AUDIO_CTX, "asr_state")),
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
    # self-attention cache stay on the GPU per session (export/asr_sessions.py)
    session=SessionState(
        inputs=SESSION_INPUTS, state_input="past_kv", state_output="present_kv", prefill_inputs=("audio_features",),
        slots=48, max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=200),
)

LLM = ModelSpec(
    name="llm",
    inputs=(
        Tensor("input_ids", "INT64", ("tokens",)),
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
    session=SessionState(inputs=SESSION_INPUTS, state_input="past_kv", state_output="present_kv"),
)

TTS = ModelSpec(
    name="tts",
    inputs=(
        Tensor("phonemes", "INT64", ("phonemes",), ragged=True, pad_value=0),
        Tensor("phoneme_lengths", "INT64", (1,)),
        Tensor("controls", "FP32", (3,)),  # pitch, energy and duration scales (1.0 = neutral)
    ),
    outputs=(
        Tensor("mel", "FP32", (contract.TTS_MEL.n_mels, "frames"), length_from="output:mel_lengths"),
        Tensor("mel_lengths", "INT64", (1,)),
    ),
    axes=(Axis("phonemes", 1, 64, 400),),
    max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=1000,
    gpu_precision="fp32",  # one call per sentence; its sinusoid tables and length regulator stay fp32
)

VOCODER = ModelSpec(
    name="vocoder",
    inputs=(Tensor("mel", "FP32", (contract.TTS_MEL.n_mels, "frames"), ragged=True,
                   pad_value=contract.LOG_MEL_FLOOR),),
    outputs=(Tensor("audio", "FP32", ("samples",), length_from="input:mel",
                    length_scale=contract.TTS_MEL.hop_length),),
    axes=(Axis("frames", 1, 64, 1024),),
    max_batch_size=16, preferred_batch_sizes=(4, 8, 16), max_queue_delay_us=1000, gpu_instances=2,
    # the streamed chunks: the first (32 core + 16 right-context frames) and every middle one (16 + 32 + 16);
    # ensemble.vocoder_stream's chunk_frames with ensemble.pipeline's VOCODER_CONTEXT_FRAMES (tests/test_stage_graphs.py)
    gpu_graphs=(48, 64),
)

LIPSYNC = ModelSpec(
    name="lipsync",
    inputs=(
        Tensor("mel", "FP32", (1, contract.LIPSYNC_MEL.n_mels, contract.LIPSYNC_MEL_STEP)),
        Tensor("faces", "FP32", (6, contract.FACE_SIZE, contract.FACE_SIZE)),  # masked target + reference, BGR 0..1
    ),
    outputs=(Tensor("frames", "FP32", (3, contract.FACE_SIZE, contract.FACE_SIZE)),),  # BGR 0..1
    max_batch_size=64, preferred_batch_sizes=(16, 32, 64), max_queue_delay_us=2000, gpu_instances=2,
    gpu_graphs=(None,),
)

STAGES: tuple[ModelSpec, ...] = (ASR_ENCODER, ASR_DECODER, LLM, TTS, VOCODER, LIPSYNC)

# Voice activity detection on streamed microphone input, before a turn (ensemble/vad.py): silero VAD's own
# ONNX graph (silero-vad wheel) in a batch-first wrapper with sr fixed at 16 kHz (export/vad.py), not a
# PyTorch graph. One call per 32 ms window and session; each row carries its stream's LSTM state, so the
# windows of many sessions batch together. A 1.3 MB LSTM at batch 64 takes well under a millisecond on one
# CPU core, less than a GPU launch round trip: the gpu variants (hosts without TensorRT) run it on ONNX Runtime
# on CPU instances (`torch_module=False`); production (tensorrt) builds a plan from the same ONNX, gpu_instances
# on every GPU of the host (export/placement.py does not place it).
VAD = ModelSpec(
    name="vad",
    inputs=(
        Tensor("audio", "FP32", (contract.VAD_INPUT,)),  # the last 64 samples before the window + the 512-sample window
        Tensor("state", "FP32", contract.VAD_STATE),  # the stream's LSTM state from its previous call (zeros first)
    ),
    outputs=(
        Tensor("probability", "FP32", (1,)),  # speech probability of the window
        Tensor("next_state", "FP32", contract.VAD_STATE),  # the state to send with the stream's next window
    ),
    max_batch_size=64, preferred_batch_sizes=(16, 32, 64), max_queue_delay_us=500,
    gpu_instances=2, gpu_precision="fp32", torch_module=False,
)

# Stages outside a turn's pipeline: they see the streamed input before ASR.
INPUT_STAGES: tuple[ModelSpec, ...] = (VAD,)

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
        Tensor("event", "BYTES", (1,)),  # JSON, see ensemble.events
        Tensor("audio_chunk", "FP32", (-1,)),  # PCM at OUTPUT_SAMPLE_RATE, in audio events
        Tensor("frame", "UINT8", (-1,)),  # JPEG bytes, in video events
    ),
    # max_sessions: turns served at once, more are refused (UNAVAILABLE); degrade: the load governor
    # (ensemble/governor.py) on/off; answer_cache_mb: the answer cache's bound (0: off), its phrases
    # default to ensemble.answer_cache.DEFAULT_PHRASES (an `answer_cache_phrases` parameter, "|"-separated,
    # replaces them). See ensemble.service.ServiceConfig.
    parameters=(("max_sessions", "32"), ("degrade", "on"), ("answer_cache_mb", "256")),
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
ALL: tuple[ModelSpec, ...] = STAGES + INPUT_STAGES + ORCHESTRATION
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


# ---------------------------------------------------------------- Triton configs

VARIANTS = ("tensorrt", "cpu", "gpu", "gpu_naive")
PRODUCTION_PRESET = "base"  # what config.pbtxt (TensorRT, GPU) is rendered for
CPU_BACKEND = "ort_cpu"  # the Python-based ONNX Runtime backend in deploy/backends/
GPU_BACKEND = "torch_gpu"  # the Python-based PyTorch-on-CUDA backend in deploy/backends/ (hosts without TensorRT)
# Scale-out: variant "<base>_x<N>" (configs/gpu_x2.pbtxt, ...) = <base> on N GPUs, instances placed by
# export/placement.py; `tritonserver --model-config-name=gpu_x2` selects them. The plain names are 1 GPU.
SCALABLE_VARIANTS = ("tensorrt", "gpu")
SCALE_OUT_GPUS = (2, 4)  # GPU counts with checked-in configs


def variant_name(variant: str, gpus: int = 1) -> str:
    """The config name of `variant` on `gpus` GPUs: gpu, gpu_x2, tensorrt_x4, ..."""
    return variant if gpus == 1 else f"{variant}_x{gpus}"


def parse_variant(name: str) -> tuple[str, int]:
    """`variant_name` inverted: "gpu_x2" -> ("gpu", 2), "gpu" -> ("gpu", 1)."""
    base, sep, n = name.rpartition("_x")
    if sep and base and n.isdigit() and int(n) >= 1:
        return base, int(n)
    return name, 1


def _tensor_config(msg, spec: ModelSpec, t: Tensor, preset: Preset | None, is_input: bool) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    dims = [d if isinstance(d, int) else -1 for d in spec.shape(t, preset)]
    entry = msg.add(name=t.name, data_type=mc.DataType.Value("TYPE_STRING" if t.dtype == "BYTES" else f"TYPE_{t.dtype}"), dims=dims)
    if is_input:
        entry.optional = t.optional
        entry.allow_ragged_batch = t.ragged


def render_config(spec: ModelSpec, variant: str, gpus: int = 1) -> str:
    """The Triton model configuration of `spec` for one runtime variant, as pbtxt text.

    gpus > 1 (or a variant named "<variant>_x<gpus>"): the tensorrt/gpu variant on that many GPUs, instance
    groups from export.placement (`count` instances on each GPU of `gpus: [...]`). gpus = 1 is unchanged:
    no `gpus:` list, i.e. `count` on every GPU Triton sees (one on the single-GPU host).
    """
    name = variant
    variant, named_gpus = parse_variant(variant)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")
    if named_gpus != 1 and gpus not in (1, named_gpus):
        raise ValueError(f"variant {name!r} is for {named_gpus} GPUs, not gpus={gpus}")
    gpus = named_gpus if named_gpus != 1 else gpus
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be a positive integer, not {gpus!r}")
    if gpus > 1 and variant not in SCALABLE_VARIANTS:
        raise ValueError(f"variant {variant!r} runs on one GPU or none; scale out one of {SCALABLE_VARIANTS}")
    # imported here: the server's Python stubs import this module for the specs, not for rendering
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    session = spec.session if spec.session is not None and gpus == 1 and variant in spec.session.variants else None
    cfg = mc.ModelConfig(name=spec.name, max_batch_size=session.max_batch_size if session else spec.max_batch_size)
    preset = get_preset(PRODUCTION_PRESET) if variant == "tensorrt" else None
    for t in session_inputs(spec) if session else spec.inputs:
        _tensor_config(cfg.input, spec, t, preset, is_input=True)
    for t in spec.outputs:
        _tensor_config(cfg.output, spec, t, preset, is_input=False)
    for key, value in spec.parameters:
        cfg.parameters[key].string_value = value
    placement = None
    if gpus > 1:
        from export.placement import place

        placement = place(gpus)
    if spec in ORCHESTRATION:
        cfg.backend = "python"
        count = ORCHESTRATOR_GPU_INSTANCES if variant == "gpu" else 1
        if placement is not None and spec.name in placement:
            count = placement[spec.name].total
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=count)
        cfg.model_transaction_policy.decoupled = spec is TALKING_HEAD
        return _header(spec, "python" if gpus == 1 else f"python, {variant_name(variant, gpus)}") + \
            text_format.MessageToString(cfg)
    if variant == "tensorrt":
        cfg.platform = "tensorrt_plan"
        cfg.default_model_filename = "model.plan"
        _gpu_instance_groups(cfg, spec, spec.gpu_instances, placement)
    elif variant == "cpu":
        cfg.backend = CPU_BACKEND
        cfg.default_model_filename = "model.onnx"
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    elif not spec.torch_module:  # gpu, gpu_naive without a PyTorch module: its ONNX graph on CPU instances
        naive = variant == "gpu_naive"
        cfg.backend = CPU_BACKEND
        cfg.default_model_filename = "model.onnx"
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1 if naive else spec.gpu_instances * gpus)
        if naive:
            return _header(spec, variant) + text_format.MessageToString(cfg)
    else:  # PyTorch on CUDA; gpu_naive = the benchmark's baseline: eager fp32, one request at a time
        naive = variant == "gpu_naive"
        cfg.backend = GPU_BACKEND
        # the session cache lives in one process: one instance serves every session
        _gpu_instance_groups(cfg, spec, 1 if naive or session else spec.gpu_instances, placement)
        cfg.parameters["precision"].string_value = "fp32" if naive else spec.gpu_precision
        if spec.gpu_graphs and not naive:
            cfg.parameters["cuda_graphs"].string_value = "true"
        if naive:
            return _header(spec, variant) + text_format.MessageToString(cfg)
    db = cfg.dynamic_batching
    db.preferred_batch_size.extend(session.preferred_batch_sizes if session else spec.preferred_batch_sizes)
    db.max_queue_delay_microseconds = session.max_queue_delay_us if session else spec.max_queue_delay_us
    db.default_queue_policy.max_queue_size = spec.max_queue_size
    db.default_queue_policy.default_timeout_microseconds = spec.queue_timeout_us
    db.default_queue_policy.timeout_action = mc.ModelQueuePolicy.REJECT
    return _header(spec, variant_name(variant, gpus)) + text_format.MessageToString(cfg)


def session_inputs(spec: ModelSpec) -> tuple[Tensor, ...]:
    """The inputs of `spec` in a variant with a session cache: the cache input optional, the session inputs added."""
    from dataclasses import replace

    s = spec.session
    later = {s.state_input, *s.prefill_inputs}
    return tuple(replace(t, optional=True) if t.name in later else t for t in spec.inputs) + s.inputs


def _gpu_instance_groups(cfg, spec: ModelSpec, count: int, placement) -> None:
    """One GPU: `count` instances, no `gpus:` list (as before). Several: the placement's groups, GPUs listed."""
    from tritonclient.grpc import model_config_pb2 as mc

    if placement is None or spec.name not in placement:  # one GPU, or a model not placed: `count` on every GPU
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=count)
        return
    for group in placement[spec.name].groups:
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=group.count, gpus=list(group.gpus))


def _header(spec: ModelSpec, variant: str) -> str:
    return (f"# Rendered from export/spec.py ({spec.name}, {variant}); do not edit by hand.\n"
            f"# Regenerate with: python -m export.render_configs\n")


# stub processes of the orchestrator on a GPU host: frames are composited and JPEG-encoded on CPUs, each process on
# one core (the GIL); at 32 text sessions 4 processes ran ~0.9 core each and delayed every BLS answer (BENCHMARKS.md)
ORCHESTRATOR_GPU_INSTANCES = 8


def config_paths(spec: ModelSpec) -> dict[str, str]:
    """Where each variant's config lives, relative to the model repository."""
    # scale-out configs (gpu_x2, tensorrt_x4, ...) for the stages and the orchestrator; avatar_registry has none:
    # Triton falls back to its config.pbtxt (one CPU instance) for any --model-config-name
    scaled = {(name := variant_name(v, n)): f"{spec.name}/configs/{name}.pbtxt"
              for v in SCALABLE_VARIANTS for n in SCALE_OUT_GPUS}
    if spec is TALKING_HEAD:
        return {"python": f"{spec.name}/config.pbtxt", "gpu": f"{spec.name}/configs/gpu.pbtxt", **scaled}
    if spec in ORCHESTRATION:
        return {"python": f"{spec.name}/config.pbtxt"}
    return {"tensorrt": f"{spec.name}/config.pbtxt", "cpu": f"{spec.name}/configs/cpu.pbtxt",
            "gpu": f"{spec.name}/configs/gpu.pbtxt", "gpu_naive": f"{spec.name}/configs/gpu_naive.pbtxt", **scaled}


def rendered_configs() -> dict[str, str]:
    """Every checked-in config file (relative path -> text) as the specs render it."""
    files = {}
    for spec in ALL:
        for variant, path in config_paths(spec).items():
            files[path] = render_config(spec, "cpu" if variant == "python" else variant)
    return files
