"""Exported ONNX graphs (opset 17, dynamic batch / phonemes / frames) equal PyTorch on ONNX Runtime."""
import onnx
import pytest

from export.contract.spec import TTS as VITS_TTS
from export.contract.spec import VOCODER as VITS_VOCODER
from export.toolchain.onnx_export import PARITY_RTOL, parity


@pytest.mark.parametrize("phonemes", [5, 37, 90])
def test_tts_onnx_equals_pytorch(graphs, exported, phonemes):
    report = parity(graphs[0], VITS_TTS, exported["tts"], seed=phonemes, phonemes=phonemes)
    assert report.ok, report.line()
    assert report.max_rel_error["durations"] == 0 and report.max_rel_error["latent_lengths"] == 0


@pytest.mark.parametrize("frames", [1, 44, 200])
def test_vocoder_onnx_equals_pytorch(graphs, exported, frames):
    report = parity(graphs[1], VITS_VOCODER, exported["vocoder"], seed=frames, frames=frames)
    assert report.ok, report.line()


def test_graph_io_and_no_random_ops(exported):
    for spec in (VITS_TTS, VITS_VOCODER):
        g = onnx.load(str(exported[spec.name])).graph
        assert [i.name for i in g.input] == [t.name for t in spec.inputs]
        assert [o.name for o in g.output] == [t.name for t in spec.outputs]
        ops = {n.op_type for n in g.node}
        assert not ops & {"RandomNormal", "RandomNormalLike", "NonZero", "ScatterND", "Loop", "If"}, ops
    assert PARITY_RTOL == 1e-4
