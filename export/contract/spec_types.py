"""The types of the I/O spec (export/contract/spec.py has one `ModelSpec` per model): axes, tensors, session
state, the spec itself and a stage's outputs. Dims exclude the batch axis; a dim is an int, the name of a dynamic
axis (`ModelSpec.axes`) or the name of a preset parameter (`ModelSpec.preset_dims`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from export.contract.presets import Preset

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
    # Inputs: the values a request may hold, checked by the serving runtime before the request joins a batch (one
    # request's bad ids must not fail the batch, one request's controls must not allocate without bound): (lo, hi)
    # for every element, or one (lo, hi) per column of the last axis. A str hi names a preset dim: ids below it.
    values: tuple | None = None

    @property
    def numpy_dtype(self) -> str:
        return NUMPY_DTYPES[self.dtype]


@dataclass(frozen=True)
class SessionState:
    """A model whose cache the GPU variant keeps on the GPU, keyed by session (export/runtime/llm_sessions.py).

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
    # what a session request is answered with instead of the spec's outputs (`state_output` comes back as the
    # placeholder either way); () = the spec's outputs
    outputs: tuple[Tensor, ...] = ()
    # Whole greedy decoding in one request: a session request carrying these inputs (the most new tokens, the end
    # id, the ids never to pick) opens the session as a first request does, is decoded in the model to the end id
    # or the limit (no round trip a token) and answered with `greedy_outputs` (the new tokens, the end id not
    # among them); the request frees the session itself. () = not served.
    greedy_inputs: tuple[Tensor, ...] = ()
    greedy_outputs: tuple[Tensor, ...] = ()
    # Sampled chunks: a session request carrying these inputs (the most tokens to sample, the temperature, top-k /
    # seed / vocabulary size, the stop ids, the banned ids) samples up to that many tokens in the model with the
    # session's seeded generator (export/contract/sampling.py, the orchestrator's rule), one decode step for each
    # but the last, and is answered with `chunk_outputs` (the tokens; fewer than asked = a stop id came, not among
    # them). The first request opens the session with the prompt and seeds its generator; each later one carries
    # the previous chunk's last token. The session stays open. () = not served.
    chunk_inputs: tuple[Tensor, ...] = ()
    chunk_outputs: tuple[Tensor, ...] = ()

    def greedy_request(self, names) -> bool:
        """Whether a request with these inputs (names) is a whole greedy decode (it carries the greedy inputs)."""
        return bool(self.greedy_inputs) and self.greedy_inputs[0].name in names

    def chunk_request(self, names) -> bool:
        """Whether a request with these inputs (names) samples a chunk of tokens (it carries the chunk inputs)."""
        return bool(self.chunk_inputs) and self.chunk_inputs[0].name in names

    @property
    def extra_inputs(self) -> tuple[Tensor, ...]:
        """The inputs beyond the session's own that its requests may carry (greedy decodes, sampled chunks)."""
        return self.greedy_inputs + self.chunk_inputs

    @property
    def extra_outputs(self) -> tuple[Tensor, ...]:
        return self.greedy_outputs + self.chunk_outputs

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
    # spec's one dynamic axis (None: a model without one); other shapes run eagerly. () = eager only. tts: buckets
    # its phonemes are padded up to (export/runtime/tts_graphs.py)
    gpu_graphs: tuple[int | None, ...] = ()
    # True: an output's length depends on the input's values (tts: the predicted durations), known only after a
    # host sync mid-model; the gpu variant captures graphs on each side of it (export/runtime/tts_graphs.py)
    length_from_values: bool = False
    # False: no PyTorch module behind the graph (an ONNX graph from elsewhere): the gpu/gpu_naive variants run
    # it with the ort_cpu backend on gpu_instances CPU instances (per GPU of the host) instead of torch_gpu
    torch_module: bool = True

    def axis(self, name: str) -> Axis:
        for a in self.axes:
            if a.name == name:
                return a
        raise KeyError(f"{self.name}: no dynamic axis {name!r}")

    def parameter(self, key: str) -> str:
        """The default of one config `parameters` entry the model reads at load time."""
        try:
            return dict(self.parameters)[key]
        except KeyError:
            raise KeyError(f"{self.name}: no parameter {key!r}") from None

    def request(self, **arrays):
        """One call's inputs by this spec's names: a name the spec does not declare is an error here, not a
        Triton error later."""
        s = self.session
        names = [t.name for t in self.inputs + ((s.inputs + s.extra_inputs) if s else ())]
        unknown = sorted(set(arrays) - set(names))
        if unknown:
            raise KeyError(f"{self.name} has no input {unknown}; its inputs: {names}")
        return arrays

    def answer(self, inputs=()) -> tuple[Tensor, ...]:
        """The outputs a call with these inputs (names) reads: a whole greedy decode (it carries the SessionState's
        greedy inputs) its greedy outputs; a session request (it carries the session id) to a model whose
        SessionState names outputs those; every other request the spec's."""
        s = self.session
        if s is not None and s.greedy_request(inputs):
            return s.greedy_outputs
        if s is not None and s.chunk_request(inputs):
            return s.chunk_outputs
        return s.outputs if s is not None and s.outputs and s.id_input in inputs else self.outputs

    def response(self, outputs) -> "Outputs":
        """One call's outputs, read by this spec's names (see Outputs)."""
        return Outputs(self, outputs)

    async def call(self, infer, **arrays) -> "Outputs":
        """One call through `infer(model name, inputs) -> outputs` (a BLS call in Triton, ONNX Runtime in the tests),
        inputs and outputs by this spec's names."""
        return self.response(await infer(self.name, self.request(**arrays)))

    def input(self, name: str) -> Tensor:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> Tensor:
        return next(t for t in self.outputs if t.name == name)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input_bounds(self, preset: Preset) -> dict[str, list]:
        """Each bounded input's values with the preset's dims resolved: name -> [lo, hi] or [[lo, hi], ...] per
        column (what the export writes beside the graph for the serving runtime, export/runtime/batching.py)."""
        dims = self.preset_dims(preset)

        def resolve(bound):
            lo, hi = bound
            return [lo, dims[hi] - 1 if isinstance(hi, str) else hi]

        return {t.name: ([resolve(b) for b in t.values] if isinstance(t.values[0], tuple) else resolve(t.values))
                for t in self.inputs if t.values is not None}

    def shape(self, tensor: Tensor, preset: Preset | None) -> list[int | str]:
        """Dims of `tensor` (batch excluded) with preset parameters resolved.

        Dynamic axes stay names; with preset=None, preset parameters stay names too.
        """
        params = self.preset_dims(preset) if preset is not None else {}
        return [params.get(d, d) if isinstance(d, str) else d for d in tensor.dims]


class Outputs(dict):
    """A stage's outputs: reading a name the spec does not declare, or one the stage did not return, says so."""

    def __init__(self, spec: ModelSpec, outputs):
        super().__init__(outputs)
        self.spec = spec

    def __missing__(self, name: str):
        s = self.spec.session
        declared = [t.name for t in self.spec.outputs + ((s.outputs + s.greedy_outputs) if s else ())]
        if name in declared:
            raise KeyError(f"{self.spec.name} returned no {name!r} (it returned {sorted(self)})")
        raise KeyError(f"{self.spec.name} has no output {name!r}; its outputs: {declared}")
