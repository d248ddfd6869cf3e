"""Loading Piper voice files: the real en_US-joe-medium, Piper-layout graphs of other qualities, and bad files."""
import json
import shutil

import pytest
import torch

from export.toolchain.checkpoints.common import CheckpointError
from export.toolchain.checkpoints.contract_check import ContractError
from export.toolchain.checkpoints.piper import load_piper_voice, locate_piper
from export.toolchain.models.vits import VitsConfig, VitsModel


def test_joe_medium_loads_with_piper_medium_architecture(model):
    assert model.config == VitsConfig.quality("medium")
    assert sum(p.numel() for p in model.parameters()) == 15_650_459
    v = model.voice
    assert (v.sample_rate, v.espeak_voice, v.num_speakers) == (22050, "en-us", 1)
    assert (v.noise_scale, v.length_scale, v.noise_w) == (0.667, 1.0, 0.8)
    # exp(-logs) was folded in the graph; logs is recovered
    assert torch.allclose(torch.exp(-model.dp.flows["0"].logs).reshape(-1), torch.tensor([0.9785079, 1.051145]))


def _piper_like_onnx(model: VitsModel, path):
    """A graph with Piper's interface (input, input_lengths, scales) and state-dict initializer names."""

    class PiperLike(VitsModel):  # piper_train/export_onnx.py replaces model_g.forward: no name prefix
        def forward(self, ids, lengths, scales):
            return super().forward(ids, lengths, 0.0, 1.0, 0.0)[:, None, None]

    like = PiperLike(model.config).eval()
    like.load_state_dict(model.state_dict())
    ids = torch.randint(4, model.config.n_vocab, (1, 20))
    with torch.inference_mode():
        torch.onnx.export(like, (ids, torch.tensor([20]), torch.tensor([0.0, 1.0, 0.0])), str(path),
                          dynamo=False, opset_version=15, input_names=["input", "input_lengths", "scales"],
                          output_names=["output"], do_constant_folding=False,
                          dynamic_axes={"input": {0: "b", 1: "t"}, "input_lengths": {0: "b"}, "output": {0: "b", 3: "s"}})


@pytest.mark.parametrize("quality", ["x-low", "high"])
def test_other_qualities_load_the_same_way(voice_path, tmp_path, quality):
    torch.manual_seed(0)
    cfg = VitsConfig.quality(quality)
    src = VitsModel(cfg).eval()
    for p in src.parameters():
        p.data.normal_(0, 0.05)
    onnx_path = tmp_path / f"en_US-test-{quality}.onnx"
    _piper_like_onnx(src, onnx_path)
    meta = json.loads(voice_path.with_name(voice_path.name + ".json").read_text())
    meta["audio"]["quality"] = quality.replace("-", "_")
    onnx_path.with_name(onnx_path.name + ".json").write_text(json.dumps(meta))
    loaded = load_piper_voice(tmp_path)  # the folder form
    assert loaded.config == cfg
    want = src.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.allclose(v, want[k], atol=1e-6), k
    ids = torch.randint(4, 256, (1, 15))
    with torch.inference_mode():
        assert torch.allclose(loaded(ids, torch.tensor([15]), 0.0, 1.0, 0.0), src(ids, torch.tensor([15]), 0.0, 1.0, 0.0))


@pytest.fixture
def voice_copy(voice_path, tmp_path):
    """The voice's json copied to tmp_path for editing (the 63 MB graph stays where it is)."""
    meta = json.loads(voice_path.with_name(voice_path.name + ".json").read_text())

    def write(**changes):
        m = json.loads(json.dumps(meta))
        for path, value in changes.items():
            node = m
            keys = path.split("__")
            for k in keys[:-1]:
                node = node[k]
            if value is None:
                del node[keys[-1]]
            else:
                node[keys[-1]] = value
        cfg = tmp_path / "voice.onnx.json"
        cfg.write_text(json.dumps(m))
        return cfg

    return write


def test_sample_rate_off_contract(voice_path, voice_copy):
    with pytest.raises(ContractError, match="16000 Hz.*22050"):
        load_piper_voice(voice_path, config=voice_copy(audio__sample_rate=16000))
    assert load_piper_voice(voice_path, config=voice_copy(audio__sample_rate=16000), check=False).voice.sample_rate == 16000


def test_multi_speaker_refused(voice_path, voice_copy):
    with pytest.raises(CheckpointError, match="multi-speaker"):
        load_piper_voice(voice_path, config=voice_copy(num_speakers=4))


def test_config_of_another_voice(voice_path, voice_copy):
    with pytest.raises(CheckpointError, match="num_symbols 300"):
        load_piper_voice(voice_path, config=voice_copy(num_symbols=300))
    with pytest.raises(CheckpointError, match="phoneme_id_map"):
        load_piper_voice(voice_path, config=voice_copy(phoneme_id_map=None))


def test_missing_and_unreadable_files(voice_path, tmp_path):
    lone = tmp_path / "lone.onnx"
    shutil.copy(voice_path.with_name(voice_path.name + ".json"), tmp_path / "other.json")
    lone.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match=r"no lone.onnx.json"):
        locate_piper(lone)
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        load_piper_voice(lone, config=tmp_path / "other.json")
    with pytest.raises(CheckpointError, match="no such file"):
        load_piper_voice(tmp_path / "absent.onnx")


def test_an_onnx_that_is_not_vits(voice_path, tmp_path):
    conv = tmp_path / "conv.onnx"
    torch.onnx.export(torch.nn.Conv1d(4, 4, 3), (torch.zeros(1, 4, 9),), str(conv), dynamo=False, opset_version=15,
                      input_names=["input"])
    shutil.copy(voice_path.with_name(voice_path.name + ".json"), tmp_path / "conv.onnx.json")
    with pytest.raises(CheckpointError, match="not a Piper VITS"):
        load_piper_voice(conv)
