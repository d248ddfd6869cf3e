"""Triton model configurations rendered from the specs (`python -m export.render_configs` writes them).

`render_config(spec, variant)` is the only place a config.pbtxt is made: the checked-in files under
model_repository/ are its output, and tests/test_spec_configs.py fails when one differs.
Variants: `tensorrt` (config.pbtxt, the production TensorRT plan), `cpu` (ONNX Runtime, the embedded
default), `gpu` (PyTorch on CUDA with session caches and CUDA graphs), `gpu_naive` (the benchmark's
baseline), and `<variant>_x<N>` for N GPUs (instances placed by export/toolchain/placement.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from export.contract.layout import MODEL_REPOSITORY
from export.contract.presets import PRODUCTION_PRESET, get_preset
from export.contract.spec import (
    ALL,
    LIPSYNC,
    ORCHESTRATION,
    STAGES,
    TALKING_HEAD,
    VARIANT_MODELS,
    ModelSpec,
    Preset,
    SessionState,
    Tensor,
    variant_models,
)
from export.toolchain.placement import ORCHESTRATOR_GPU_INSTANCES

VARIANTS = ("tensorrt", "cpu", "gpu", "gpu_naive")
CPU_BACKEND = "ort_cpu"  # the Python-based ONNX Runtime backend in deploy/backends/
GPU_FRAME_LEAD_S = "1.0"  # talking_head frame_lead_s on GPU hosts (export/contract/spec.py TALKING_HEAD)
# talking_head audio_lead_s on GPU hosts: a turn's speech is made at most 2 s ahead of its playback, so the 48 turns
# that start together do not also ask for all their later speech at once (BENCHMARKS.md, "Speech made as it is
# needed"); more than frame_lead_s, so an utterance's timing is known before its frames are due
GPU_AUDIO_LEAD_S = "2.0"
# talking_head first_frames on GPU hosts: a turn's first lip-sync call carries the frames due in its first 320 ms, so
# none of them waits on a second round trip (at 48 sessions on an H100: 84-94 of 96 turns real time against 24-35
# with 1, BENCHMARKS.md "The first lip-sync call")
GPU_FIRST_FRAMES = "8"
GPU_BACKEND = "torch_gpu"  # the Python-based PyTorch-on-CUDA backend in deploy/backends/ (hosts without TensorRT)
# Scale-out: variant "<base>_x<N>" (configs/gpu_x2.pbtxt, ...) = <base> on N GPUs, instances placed by
# export/toolchain/placement.py; `tritonserver --model-config-name=gpu_x2` selects them. The plain names are 1 GPU.
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
    groups from export.toolchain.placement (`count` instances on each GPU of `gpus: [...]`). gpus = 1 is unchanged:
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

    session = served_session(spec, variant, gpus)
    cfg = mc.ModelConfig(name=spec.name, max_batch_size=session.max_batch_size if session else spec.max_batch_size)
    preset = get_preset(PRODUCTION_PRESET) if variant == "tensorrt" else None
    for t in session_inputs(spec) if session else spec.inputs:
        _tensor_config(cfg.input, spec, t, preset, is_input=True)
    for t in spec.outputs + ((session.outputs + session.extra_outputs) if session else ()):
        _tensor_config(cfg.output, spec, t, preset, is_input=False)
    for key, value in spec.parameters:
        cfg.parameters[key].string_value = value
    placement = None
    if gpus > 1:
        from export.toolchain.placement import place

        placement = place(gpus)
    if spec in ORCHESTRATION:
        cfg.backend = "python"
        count = ORCHESTRATOR_GPU_INSTANCES if variant == "gpu" else 1
        if placement is not None and spec.name in placement:
            count = placement[spec.name].total
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=count)
        cfg.model_transaction_policy.decoupled = spec is TALKING_HEAD
        if spec is TALKING_HEAD:  # which stages keep their decoding cache server-side in this variant
            cfg.parameters["session_stages"].string_value = ",".join(
                s.name for s in STAGES if served_session(s, variant, gpus) is not None)
            cfg.parameters["frame_stage"].string_value = ",".join(
                s.name for s in variant_models(variant_name(variant, gpus), {LIPSYNC.name}))
            cfg.parameters["frame_lead_s"].string_value = "0" if variant == "cpu" else GPU_FRAME_LEAD_S
            cfg.parameters["first_frames"].string_value = "1" if variant == "cpu" else GPU_FIRST_FRAMES
            cfg.parameters["audio_lead_s"].string_value = "0" if variant == "cpu" else GPU_AUDIO_LEAD_S
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


def served_session(spec: ModelSpec, variant: str, gpus: int = 1) -> SessionState | None:
    """The session cache `spec` keeps in this variant (on one GPU, in the variants its SessionState names), or None."""
    s = spec.session
    return s if s is not None and gpus == 1 and variant in s.variants else None


def session_inputs(spec: ModelSpec) -> tuple[Tensor, ...]:
    """The inputs of `spec` in a variant with a session cache: the cache input optional, the session inputs added."""
    from dataclasses import replace

    s = spec.session
    later = {s.state_input, *s.prefill_inputs}
    return tuple(replace(t, optional=True) if t.name in later else t for t in spec.inputs) + s.inputs + s.extra_inputs


def _gpu_instance_groups(cfg, spec: ModelSpec, count: int, placement) -> None:
    """One GPU: `count` instances, no `gpus:` list (as before). Several: the placement's groups, GPUs listed."""
    from tritonclient.grpc import model_config_pb2 as mc

    if placement is None or spec.name not in placement:  # one GPU, or a model not placed: `count` on every GPU
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=count)
        return
    for group in placement[spec.name].groups:
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=group.count, gpus=list(group.gpus))


def _header(spec: ModelSpec, variant: str) -> str:
    return (f"# Rendered by export/toolchain/configs.py from export/contract/spec.py ({spec.name}, {variant}); do not edit by hand.\n"
            f"# Regenerate with: python -m export.render_configs\n")




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
    if spec in VARIANT_MODELS:  # served by the gpu variant only (spec.variant_models)
        return {"gpu": f"{spec.name}/configs/gpu.pbtxt"}
    return {"tensorrt": f"{spec.name}/config.pbtxt", "cpu": f"{spec.name}/configs/cpu.pbtxt",
            "gpu": f"{spec.name}/configs/gpu.pbtxt", "gpu_naive": f"{spec.name}/configs/gpu_naive.pbtxt", **scaled}


def rendered_configs() -> dict[str, str]:
    """Every checked-in config file (relative path -> text) as the specs render it."""
    files = {}
    for spec in ALL:
        for variant, path in config_paths(spec).items():
            files[path] = render_config(spec, "cpu" if variant == "python" else variant)
    return files


def ensure_repository(dest: Path, source: Path = MODEL_REPOSITORY) -> int:
    """Give `dest` the checked-in configs and model.py files of `source` (none of its exported graphs, weights or
    manifests): files that are missing or differ are copied. Returns how many. `python -m export --repository DIR`
    calls it, so a second repository (real weights beside the tiny test graphs, a benchmark's) stays in step with
    the configs rendered from the specs."""
    dest, source = Path(dest), Path(source)
    if dest.resolve() == source.resolve():
        return 0
    copied = 0
    for f in sorted(source.rglob("*")):
        rel = f.relative_to(source)
        if not f.is_file() or "__pycache__" in rel.parts or not (f.suffix in (".pbtxt", ".py") or f.name == ".gitkeep"):
            continue
        target = dest / rel
        if not target.exists() or target.read_bytes() != f.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            copied += 1
    return copied
