"""The checked-in Triton configs are exactly what export/contract/spec.py renders."""

import numpy as np
import pytest

from export.contract import spec
from export.contract.layout import MODEL_REPOSITORY
from export.contract.presets import get_preset
from export.render_configs import main as render_main
from export.toolchain import configs


@pytest.mark.parametrize("rel", sorted(configs.rendered_configs()))
def test_checked_in_config_matches_spec(rel):
    path = MODEL_REPOSITORY / rel
    assert path.exists(), f"{rel} is missing: run `python -m export.render_configs`"
    assert path.read_text() == configs.rendered_configs()[rel], f"{rel} differs from export/contract/spec.py"


def test_check_mode_fails_on_a_drifted_config(tmp_path):
    assert render_main(["--repository", str(tmp_path)]) == 0
    target = tmp_path / "vocoder" / "configs" / "cpu.pbtxt"
    target.write_text(target.read_text().replace("max_batch_size: 16", "max_batch_size: 4"))
    assert render_main(["--repository", str(tmp_path), "--check"]) == 1


def test_production_configs_are_tensorrt_on_gpu_and_cpu_variants_use_onnxruntime():
    for s in spec.STAGES:
        trt = configs.render_config(s, "tensorrt")
        cpu = configs.render_config(s, "cpu")
        assert 'platform: "tensorrt_plan"' in trt and "KIND_GPU" in trt and "dynamic_batching" in trt
        assert f'backend: "{configs.CPU_BACKEND}"' in cpu and "KIND_CPU" in cpu and "dynamic_batching" in cpu


def test_profiles_cover_the_opt_shapes_and_resolve_preset_dims():
    base = get_preset("base")
    shapes = spec.profile_shapes(spec.LLM, base)
    lo, opt, hi = shapes["past_kv"]
    assert lo == (1, 24, 2, 2, 0, 64) and hi == (16, 24, 2, 2, 1536, 64)
    assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
    assert spec.onnx_dynamic_axes(spec.HIFIGAN) == {"mel": {0: "batch", 2: "frames"}, "audio": {0: "batch", 1: "samples"}}
    assert spec.onnx_dynamic_axes(spec.VOCODER) == {"latents": {0: "batch", 2: "frames"},
                                                    "audio": {0: "batch", 1: "samples"}}


def test_client_tensor_names_come_from_the_spec():
    from client import sdk

    names = {t.name for t in spec.TALKING_HEAD.inputs + spec.TALKING_HEAD.outputs}
    used = {v.name for k, v in vars(sdk).items() if k.startswith("TH_")}
    assert used and used <= names


def test_orchestrator_config_names_the_session_keyed_stages():
    """The orchestrator reads which stages keep a turn's cache server-side from its rendered config."""
    from ensemble.service import ServiceConfig

    def settings(variant: str) -> ServiceConfig:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        cfg = text_format.Parse(configs.render_config(spec.TALKING_HEAD, variant), mc.ModelConfig())
        return ServiceConfig.from_parameters({k: v.string_value for k, v in cfg.parameters.items()})

    assert settings("gpu").session_stages == {"asr_decoder", "llm"}
    assert {settings(v).session_stages for v in ("cpu", "gpu_x2", "tensorrt")} == {frozenset()}
    with pytest.raises(ValueError, match="session_stages"):
        ServiceConfig.from_parameters({"session_stages": "tts"})


def test_the_gpu_variant_composes_warp_frames_beside_the_lipsync():
    """Only the one-GPU PyTorch variant serves lipsync_frames (with the warp family) and tells the orchestrator."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from ensemble.service import ServiceConfig

    def frame_stage(variant: str) -> str:
        cfg = text_format.Parse(configs.render_config(spec.TALKING_HEAD, variant), mc.ModelConfig())
        return ServiceConfig.from_parameters({k: v.string_value for k, v in cfg.parameters.items()}).frame_stage

    assert frame_stage("gpu") == "lipsync_frames"
    rendered = {v: ServiceConfig.from_parameters({k: x.string_value for k, x in text_format.Parse(
        configs.render_config(spec.TALKING_HEAD, v), mc.ModelConfig()).parameters.items()})
        for v in ("cpu", "gpu", "gpu_x2", "tensorrt_x2")}
    # the rendered GPU configs pace a turn's frames and make its first 8 in one call; config.pbtxt (CPU, and one-GPU
    # TensorRT) does neither
    assert {v: c.frame_lead_s for v, c in rendered.items()} == {"cpu": 0.0, "gpu": 1.0, "gpu_x2": 1.0, "tensorrt_x2": 1.0}
    assert {v: c.first_frames for v, c in rendered.items()} == {"cpu": 1, "gpu": 8, "gpu_x2": 8, "tensorrt_x2": 8}
    # ... and pace a turn's speech, further ahead than its frames (an utterance's timing comes before its frames)
    assert {v: c.audio_lead_s for v, c in rendered.items()} == {"cpu": 0.0, "gpu": 2.0, "gpu_x2": 2.0, "tensorrt_x2": 2.0}
    assert all(c.audio_lead_s > c.frame_lead_s for v, c in rendered.items() if v != "cpu")
    for key in ("frame_lead_s", "audio_lead_s"):
        with pytest.raises(ValueError, match=f"{key}='soon' must be seconds"):
            ServiceConfig.from_parameters({key: "soon"})
        with pytest.raises(ValueError, match=f"{key}='11' must be seconds in 0..10"):
            ServiceConfig.from_parameters({key: "11"})
    assert {frame_stage(v) for v in ("cpu", "gpu_naive", "gpu_x2", "tensorrt")} == {""}
    assert spec.variant_models("gpu", ["tts", "lipsync"]) == (spec.LIPSYNC_FRAMES,)
    assert spec.variant_models("gpu", ["wav2lip"]) == spec.variant_models("cpu", ["lipsync"]) == ()
    assert configs.config_paths(spec.LIPSYNC_FRAMES) == {"gpu": "lipsync_frames/configs/gpu.pbtxt"}
    with pytest.raises(ValueError, match="frame_stage"):
        ServiceConfig.from_parameters({"frame_stage": "wav2lip"})


def test_a_stage_call_names_its_inputs_and_outputs_by_the_spec():
    """ModelSpec.call: a misspelled input fails before any request is sent; outputs are read by the spec's names,
    a name the stage does not declare (or did not return) says which."""
    import asyncio

    sent = []

    async def infer(model, inputs):
        sent.append((model, sorted(inputs)))
        return {"audio": np.zeros((1, 4), np.float32)}

    with pytest.raises(KeyError, match=r"vocoder has no input \['mels'\]"):
        asyncio.run(spec.VOCODER.call(infer, mels=np.zeros((1, 80, 8), np.float32)))
    assert sent == []
    name = spec.VOCODER.inputs[0].name
    out = asyncio.run(spec.VOCODER.call(infer, **{name: np.zeros((1, 80, 8), np.float32)}))
    assert sent == [("vocoder", [name])] and out["audio"].shape == (1, 4)
    with pytest.raises(KeyError, match="vocoder has no output 'wave'"):
        out["wave"]
