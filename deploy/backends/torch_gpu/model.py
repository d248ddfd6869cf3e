"""Python-based Triton backend `torch_gpu`: a stage's PyTorch module on its instance's GPU (glue only).

The preset and seed come from the export manifest beside the orchestrator, so
every stage and the orchestrator agree on model sizes and tokenizers; a stage exported from real
weights has them in `1/weights.safetensors`.
"""
import torch

from deploy.stage_backend import make_model, parameter, version_dir
from export.contract.artifacts import STAGE_WEIGHTS, manifest_preset, read_manifest
from export.contract.spec import LIPSYNC, LIPSYNC_FRAMES
from export.runtime.batching import BatchRunner
from export.runtime.torch_runtime import graphed_module, load_graph, prefer_blocking_sync, torch_runner


def gpu_runner(spec, config, args):
    manifest = read_manifest(version_dir(args).parent.parent / "talking_head" / "1")
    device_id = int(args.get("model_instance_device_id", 0))
    device = f"cuda:{device_id}"
    prefer_blocking_sync(device_id)  # a waiting stub sleeps instead of spinning a core (BENCHMARKS.md, host load)
    torch.set_num_threads(2)  # the GPU does the work; no CPU thread pool spinning beside it
    if spec is LIPSYNC_FRAMES:
        return frames_runner(manifest, device, int(parameter(config, "jpeg_threads", spec.parameter("jpeg_threads"))))
    sessions = spec.session is not None and any(i["name"] == spec.session.id_input for i in config.get("input", []))
    weights = version_dir(args) / STAGE_WEIGHTS  # real weights, when the export saved them
    return torch_runner(spec, manifest_preset(manifest), int(manifest["seed"]), device,
                        parameter(config, "precision", spec.gpu_precision), sessions=sessions,
                        cuda_graphs=parameter(config, "cuda_graphs", "false") == "true",
                        weights=weights if weights.exists() else None, max_batch_size=int(config["max_batch_size"]))


def frames_runner(manifest, device, jpeg_threads: int):
    """lipsync_frames: the warp lip-sync (no weights) and the frame composer on the GPU, the avatars read from
    the store the avatar registry writes (ensemble/frames_torch.py)."""
    from ensemble.avatar import AvatarStore
    from ensemble.frames_torch import FrameComposer, FramesStage
    from ensemble.service import default_avatar_dir

    store = AvatarStore(default_avatar_dir())  # read only here: the registry writes and evicts
    preset = manifest_preset(manifest)
    graph = load_graph(LIPSYNC, preset, int(manifest["seed"]), device, LIPSYNC.gpu_precision)
    # CUDA graphs: the warp is many small kernels, each a host launch when run eagerly
    warp = graphed_module(LIPSYNC, graph, device, LIPSYNC.gpu_precision, LIPSYNC.preset_dims(preset))
    return BatchRunner(LIPSYNC_FRAMES, FramesStage(FrameComposer(warp, device, jpeg_threads=jpeg_threads),
                                                       store.load))


TritonPythonModel = make_model(gpu_runner)
