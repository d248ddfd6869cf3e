"""Which stage instances go on which GPU of an N-GPU host: pure, no GPU needed.

`place(n_gpus, gpu_memory_gib=None)` decides, per model, Triton instance groups
`(gpu_ids, count)`; as in Triton's `instance_group { count: K  gpus: [0, 1] }`,
`count` instances run on EACH listed GPU. `export.toolchain.configs.render_config(spec, variant,
gpus=N)` renders them into `configs/<variant>_x<N>.pbtxt`.

Nothing here moves tensors between GPUs (no NCCL): every stage call goes through the
orchestrator (`talking_head`, Python BLS on the CPU) and each instance computes on its
own GPU, so any instance of a stage can serve any session. Placing a stage on more GPUs
therefore only adds parallel capacity for it.

The rule (one decision per comment in `place`), N GPUs:
- N = 1 reproduces today's single-GPU counts exactly: every stage gets its spec's
  `gpu_instances` (llm 4, asr_decoder 2, vocoder 2, lipsync 2, asr_encoder 1, tts 1)
  and the orchestrator `ORCHESTRATOR_GPU_INSTANCES` (8) CPU instances.
- Every GPU is a full replica of that single-GPU set (LLM, vocoder, lipsync, and the light
  ASR/TTS stages), the orchestrator gets 4 x N CPU instances.
- With a per-GPU memory limit, a GPU that cannot hold its set sheds instances in
  `REDUCTION_ORDER`: first the light stages leave the GPUs other than GPU 0 (they then run
  on a subset, GPU 0), then LLM instances go from 4 to 2, ... ; the LLM keeps as many
  instances per GPU as its weights + KV cache budget allow.

Memory per instance is an upper estimate (`instance_memory_gib`): CUDA context + weights
(parameter count x bytes of the spec's GPU precision) + a working budget (the LLM's is
its KV cache in and out at the largest batch and context of its spec).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from export.contract import spec as specs
from export.contract.presets import PRODUCTION_PRESET, Preset, Qwen2Config, get_preset

GIB = 1024 ** 3
KIND_GPU, KIND_CPU = "KIND_GPU", "KIND_CPU"

# Each GPU instance of the Python-based torch_gpu backend is its own stub process with its own CUDA context,
# cuBLAS/cuDNN workspaces and PyTorch caching-allocator slack (TensorRT instances share a process: less).
CUDA_CONTEXT_GIB = 0.5
BYTES_PER_PARAM = {"fp16": 2, "bf16": 2, "fp32": 4}
# Fraction of a GPU's memory not handed out: Triton's CUDA memory pool, fragmentation, other processes.
MEMORY_HEADROOM = 0.10

# Parameters per instance, base preset, measured with export.toolchain.graphs.parameter_count (seeded random graphs of the
# published sizes). Both ASR graphs hold the whole Whisper model (encoder + decoder), so each instance loads 72M.
# The LLM's count is derived from the preset instead (llm_parameters): it is the one that matters.
BASE_PARAMETERS = {
    "asr_encoder": 71_825_920,  # whisper-base
    "asr_decoder": 71_825_920,
    "tts": 15_650_459,  # Piper VITS medium (the stage holds the whole voice module)
    "vocoder": 1_662_976,  # its decoder
    "fastspeech2": 34_646_339,  # FastSpeech2 LJSpeech
    "hifigan": 13_926_017,  # HiFi-GAN V1
    "wav2lip": 36_298_035,  # Wav2Lip 96
    "lipsync": 0,  # the mouth warp: constant buffers only (a few coordinate maps), no learned weights
}

# Working memory per instance at the spec's largest batch (activations, inputs and outputs on the GPU), GiB.
# The LLM's is computed (llm_kv_budget_gib) plus LLM_ACTIVATION_GIB.
WORKING_GIB = {
    "asr_encoder": 0.5,  # batch 8: one layer's attention scores 8 x 8 heads x 1500^2 x 2 B = 0.27 GiB
    "asr_decoder": 0.25,  # batch 8: past_kv in + present_kv out (fp32, 448 positions) 0.09 GiB + audio features
    "tts": 0.25,  # batch 8 of <= 512 phoneme ids, fp32: the flow over <= 8 x 192 x a few thousand latent frames
    "vocoder": 0.75,  # batch 16 x 1024 frames -> 4.2 M samples through 256 -> 64 -> 32 channels (upsampling 8, 8, 4)
    "fastspeech2": 0.25,  # batch 8 of <= 400 phonemes, <= 1000 mel frames, fp32
    "hifigan": 1.0,  # batch 16 x 1024 frames -> 4.2 M samples; the last upsampling stage alone holds
    #                  16 x 32 channels x 262144 samples x 2 B = 0.25 GiB per tensor, the resblocks keep several alive
    "wav2lip": 0.5,  # batch 64 faces (6 x 96 x 96) through the U-Net
    "lipsync": 0.25,  # batch 64 mouth crops (3 x 128 x 128 fp32, 196 kB) and ~20 crop-sized intermediates
}
LLM_ACTIVATION_GIB = 0.5  # prefill of 512 tokens at batch 16: one layer's scores 16 x 14 x 512 x 2048 x 2 B = 0.44 GiB

# stub processes of the orchestrator on a GPU host: frames are composited and JPEG-encoded on CPUs, each process on
# one core (the GIL); at 32 text sessions 4 processes ran ~0.9 core each and delayed every BLS answer (BENCHMARKS.md)
ORCHESTRATOR_GPU_INSTANCES = 8
# The orchestrator's CPU instances per GPU of the host (8 on one GPU = ORCHESTRATOR_GPU_INSTANCES): each stub process
# serves up to max_sessions turns and composites/JPEG-encodes their frames on the CPU, work that grows with the
# sessions the GPUs carry. The multi-GPU hosts have 16 CPU cores per GPU, as the single-GPU one.
ORCHESTRATOR_PER_GPU = ORCHESTRATOR_GPU_INSTANCES

# When a GPU's estimate exceeds its budget, one instance at a time is removed from it: the first step in this list
# whose model is still above its floor on that GPU. (model, floor on GPU 0, floor on the other GPUs):
REDUCTION_ORDER: tuple[tuple[str, int, int], ...] = (
    # 1. light stages (a few % of a turn's GPU time, BENCHMARKS.md) leave GPUs 1..N-1 first: they then run on a
    #    subset (GPU 0), and GPU 0's copies serve every session;
    ("tts", 1, 0), ("asr_decoder", 2, 0), ("asr_encoder", 1, 0),
    # 2. the LLM (the bottleneck) keeps at least 2 instances per GPU: one decode step at batch 1 is launch-bound,
    #    two instances still overlap launches;
    ("llm", 2, 2),
    # 3. vocoder and lipsync batch well (batch 16 / 64): one instance per GPU;
    ("vocoder", 1, 1), ("lipsync", 1, 1), ("wav2lip", 1, 1), ("asr_decoder", 1, 0),
    # 4. last, a single LLM instance per GPU. Below that the GPU cannot hold the pipeline: ValueError.
    ("llm", 1, 1),
)


class InstanceGroup(NamedTuple):
    """Triton's instance_group: `count` instances on EACH GPU of `gpus` (KIND_GPU), or `count` in all (KIND_CPU)."""

    gpus: tuple[int, ...]  # () for KIND_CPU
    count: int


@dataclass(frozen=True)
class ModelPlacement:
    model: str
    kind: str  # KIND_GPU or KIND_CPU
    groups: tuple[InstanceGroup, ...]

    def on_gpu(self, gpu: int) -> int:
        """Instances of this model on `gpu`."""
        return sum(g.count for g in self.groups if gpu in g.gpus)

    @property
    def total(self) -> int:
        return sum(g.count * max(len(g.gpus), 1) for g in self.groups)

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(sorted({i for g in self.groups for i in g.gpus}))


@dataclass(frozen=True)
class Placement:
    n_gpus: int
    models: tuple[ModelPlacement, ...]
    gpu_memory_gib: float | None = None
    preset: str = PRODUCTION_PRESET

    def __getitem__(self, model: str) -> ModelPlacement:
        for m in self.models:
            if m.model == model:
                return m
        raise KeyError(model)

    def __contains__(self, model: str) -> bool:
        return any(m.model == model for m in self.models)

    def per_gpu(self, gpu: int) -> dict[str, int]:
        """model -> instances on `gpu` (GPU models only, zeros left out)."""
        return {m.model: m.on_gpu(gpu) for m in self.models if m.kind == KIND_GPU and m.on_gpu(gpu)}

    def memory_gib(self, gpu: int) -> float:
        """Estimated peak memory of everything placed on `gpu`."""
        preset = get_preset(self.preset)
        return sum(n * instance_memory_gib(model, preset) for model, n in self.per_gpu(gpu).items())


# ---------------------------------------------------------------- memory estimates

def llm_parameters(c: Qwen2Config) -> int:
    """Qwen2 parameter count from its config (tied embedding counted once): 494,032,768 for Qwen2.5-0.5B."""
    h, kv = c.hidden_size, c.num_key_value_heads * c.head_dim
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q (bias), k and v (bias), o (no bias)
    mlp = 3 * h * c.intermediate_size  # gate, up, down
    layer = attention + mlp + 2 * h  # + two RMSNorms
    embeddings = c.vocab_size * h * (1 if c.tie_word_embeddings else 2)
    return embeddings + c.num_hidden_layers * layer + h  # + final norm


def llm_kv_budget_gib(preset: Preset) -> float:
    """The LLM instance's KV cache at its spec's largest batch and context, past_kv in + present_kv out (FP32)."""
    dims = specs.LLM.preset_dims(preset)
    per_token = dims["llm_layers"] * 2 * dims["llm_kv_heads"] * dims["llm_head_dim"] * 4  # FP32 per the spec
    context = specs.LLM.axis("past").max + specs.LLM.axis("tokens").max  # 1536 + 512 = 2048
    return 2 * specs.LLM.max_batch_size * context * per_token / GIB  # base: 2 x 16 x 2048 x 24 KiB = 1.5 GiB


def instance_memory_gib(model: str, preset: Preset | str = PRODUCTION_PRESET) -> float:
    """Upper estimate of one GPU instance's memory: CUDA context + weights + working budget.

    base preset: llm 3.42 (0.5 + 0.92 weights bf16 + 1.5 KV + 0.5), asr_encoder 1.13, asr_decoder 0.88,
    tts 0.81 (fp32 weights), vocoder 1.26, wav2lip 1.07 GiB (fastspeech2 0.88, hifigan 1.53); the single-GPU
    set is ~21 GiB.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    spec = specs.BY_NAME[model]
    per_param = BYTES_PER_PARAM[spec.gpu_precision]
    if model == "llm":
        weights = llm_parameters(preset.llm) * per_param / GIB
        return CUDA_CONTEXT_GIB + weights + llm_kv_budget_gib(preset) + LLM_ACTIVATION_GIB
    if preset.name != "base":
        raise ValueError(f"parameter counts are recorded for the base preset only, not {preset.name!r}")
    return CUDA_CONTEXT_GIB + BASE_PARAMETERS[model] * per_param / GIB + WORKING_GIB[model]


# ---------------------------------------------------------------- the rule

def single_gpu_counts(preset: Preset) -> dict[str, int]:
    """Today's instances on one GPU of the stages a turn uses with the preset's families, from the specs: what N = 1
    reproduces. (A stage of another family is rendered with its own single-GPU count on every GPU.)"""
    return {s.name: s.gpu_instances for s in specs.pipeline_stages(preset)}


def place(n_gpus: int, gpu_memory_gib: float | None = None, preset: str = PRODUCTION_PRESET) -> Placement:
    """Instance groups of every stage model and the orchestrator on a host with `n_gpus` identical GPUs.

    gpu_memory_gib: memory of each GPU; None = no limit (every GPU gets the full single-GPU set, as on the
    80 GB H100 / 141 GB H200, where the set needs ~23 GiB). Raises ValueError when a GPU cannot hold its floor.
    """
    if not isinstance(n_gpus, int) or n_gpus < 1:
        raise ValueError(f"n_gpus must be a positive integer, not {n_gpus!r}")
    # Decision 1: start every GPU from the single-GPU counts of the specs, so N = 1 is today's config exactly, and
    # every GPU is a replica: the LLM (the bottleneck at every concurrency, BENCHMARKS.md) gets 4 instances on each
    # GPU, 4 x N in all, and so do the session-proportional vocoder (2 per GPU) and lipsync (2 per GPU). More than
    # 4 LLM instances on one GPU would only share its SMs: the bound is per GPU, so the gain comes from more GPUs.
    # Decision 2: the light stages (ASR encoder/decoder, TTS) also go on every GPU when memory allows: they cost
    # ~3.8 GiB per GPU, and a copy per GPU keeps them from becoming the next bottleneck at N x the sessions.
    p = get_preset(preset)
    counts = [single_gpu_counts(p) for _ in range(n_gpus)]
    if gpu_memory_gib is not None:
        budget = gpu_memory_gib * (1 - MEMORY_HEADROOM)
        for gpu, plan in enumerate(counts):
            # Decision 3: a GPU over budget sheds instances in REDUCTION_ORDER (light stages to a subset first,
            # the LLM keeps as many instances as its weights + KV cache fit).
            _fit(plan, gpu, budget, p)
    groups = {}
    for s in specs.pipeline_stages(p):
        groups[s.name] = ModelPlacement(s.name, KIND_GPU, _groups([plan[s.name] for plan in counts]))
    # Decision 4: the orchestrator's CPU instances scale with N (4 per GPU), as the sessions it composites do.
    orchestrator = ModelPlacement(specs.TALKING_HEAD.name, KIND_CPU,
                                  (InstanceGroup((), ORCHESTRATOR_PER_GPU * n_gpus),))
    return Placement(n_gpus, tuple(groups.values()) + (orchestrator,), gpu_memory_gib, preset)


def _fit(plan: dict[str, int], gpu: int, budget: float, preset: Preset) -> None:
    def used() -> float:
        return sum(n * instance_memory_gib(m, preset) for m, n in plan.items())

    steps = iter(REDUCTION_ORDER)
    step = next(steps)
    while used() > budget:
        model, floor0, floor = step
        if plan.get(model, 0) > (floor0 if gpu == 0 else floor):  # a stage of another family is not in the plan
            plan[model] -= 1
            continue
        step = next(steps, None)
        if step is None:
            raise ValueError(f"GPU {gpu}: {used():.1f} GiB needed for {plan} at the least, "
                             f"{budget:.1f} GiB usable ({1 - MEMORY_HEADROOM:.0%} of the GPU's memory)")


def _groups(per_gpu: list[int]) -> tuple[InstanceGroup, ...]:
    """GPUs with the same count share one instance group; GPUs with none are left out."""
    by_count: dict[int, list[int]] = {}
    for gpu, n in enumerate(per_gpu):
        if n:
            by_count.setdefault(n, []).append(gpu)
    return tuple(sorted((InstanceGroup(tuple(g), n) for n, g in by_count.items()), key=lambda g: g.gpus[0]))


def describe(placement: Placement) -> str:
    """A table of the placement, one line per model, and estimated memory per GPU."""
    lines = []
    for m in placement.models:
        where = ", ".join(f"{g.count} on each of GPUs {list(g.gpus)}" if g.gpus else f"{g.count} on the CPU"
                          for g in m.groups)
        lines.append(f"{m.model:12s} {m.total:3d} ({where})")
    for gpu in range(placement.n_gpus):
        lines.append(f"GPU {gpu}: ~{placement.memory_gib(gpu):.1f} GiB estimated")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="print the placement for N GPUs")
    ap.add_argument("gpus", type=int)
    ap.add_argument("--gpu-memory-gib", type=float)
    a = ap.parse_args()
    print(describe(place(a.gpus, a.gpu_memory_gib)))
