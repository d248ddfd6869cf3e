"""ONNX export (legacy exporter, opset 17, spec names and dynamic axes) and ONNX Runtime parity on
fresh inputs of other sizes than the export example, for the FASTSPEECH2, vocoder and lipsync graphs."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.contract.presets import get_preset
from export.contract.spec import FASTSPEECH2, HIFIGAN, WAV2LIP, ModelSpec, onnx_dynamic_axes
from export.toolchain.models import fastspeech2, hifigan, wav2lip

PRESET = get_preset("tiny")
RTOL = 1e-4


def export(graph: torch.nn.Module, spec: ModelSpec, path) -> ort.InferenceSession:
    example = graph.example_inputs(batch=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(graph, example, str(path), dynamo=False, opset_version=17,
                              input_names=[t.name for t in spec.inputs],
                              output_names=[t.name for t in spec.outputs],
                              dynamic_axes=onnx_dynamic_axes(spec))
    onnx.checker.check_model(str(path))
    assert not graph.training
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_both(graph, spec: ModelSpec, session, inputs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with torch.no_grad():
        ref = graph(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = session.run([t.name for t in spec.outputs], {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)})
    return {t.name: (r.numpy(), g) for t, r, g in zip(spec.outputs, ref, got)}


def rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    assert ref.shape == got.shape, f"ONNX shape {got.shape} != PyTorch {ref.shape}"
    scale = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(got.astype(np.float64) - ref))) / scale


def test_tts_onnx_parity_with_data_dependent_length(tmp_path):
    graph = fastspeech2.TtsGraph(fastspeech2.build(PRESET.fastspeech2, seed=0))
    session = export(graph, FASTSPEECH2, tmp_path / "tts.onnx")
    cases = [(3, 23, None), (1, 7, None), (4, 41, [1.2, 0.9, 1.7]), (2, 5, [1.0, 1.0, 0.0]), (1, 1, None)]
    for i, (batch, n, control) in enumerate(cases):
        inputs = graph.example_inputs(batch=batch, seed=10 + i, phonemes=n)  # padded: lengths vary per item
        if control is not None:
            inputs[2][-1] = torch.tensor(control)
        out = run_both(graph, FASTSPEECH2, session, inputs)
        ref_len, got_len = out["mel_lengths"]
        assert got_len.dtype == np.int64 and np.array_equal(ref_len, got_len), (ref_len.T, got_len.T)
        mel_ref, mel_got = out["mel"]
        assert mel_got.shape[2] == int(got_len.max()), "ONNX mel length must be the longest item's"
        for b in range(batch):
            assert not np.any(mel_got[b, :, int(got_len[b, 0]):]), "ONNX mel must be zero beyond its length"
        err = rel_error(mel_ref, mel_got)
        print(f"tts batch {batch} phonemes {n} lengths {ref_len[:, 0].tolist()}: max rel error {err:.2e}")
        assert err <= RTOL


def test_vocoder_onnx_parity(tmp_path):
    graph = hifigan.VocoderGraph(hifigan.build(PRESET.hifigan, seed=0))
    session = export(graph, HIFIGAN, tmp_path / "vocoder.onnx")
    for i, (batch, frames) in enumerate([(3, 37), (1, 5), (5, 1)]):
        inputs = graph.example_inputs(batch=batch, seed=20 + i, frames=frames)
        ref, got = run_both(graph, HIFIGAN, session, inputs)["audio"]
        assert got.shape == (batch, frames * 256)
        err = rel_error(ref, got)
        print(f"vocoder batch {batch} frames {frames}: max rel error {err:.2e}")
        assert err <= RTOL


def test_lipsync_onnx_parity(tmp_path):
    graph = wav2lip.LipsyncGraph(wav2lip.build(PRESET.wav2lip, seed=0))
    session = export(graph, WAV2LIP, tmp_path / "lipsync.onnx")
    for i, batch in enumerate([3, 1, 7]):
        inputs = graph.example_inputs(batch=batch, seed=30 + i)
        ref, got = run_both(graph, WAV2LIP, session, inputs)["frames"]
        err = rel_error(ref, got)
        print(f"lipsync batch {batch}: max rel error {err:.2e}")
        assert err <= RTOL
