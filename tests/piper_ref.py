"""The original Piper voice graph on ONNX Runtime, as the reference for tests and measurements (prototype helper).

`piper_session(path)` runs the voice as published. `piper_session(path, noise_inputs=True)` removes its two
RandomNormalLike nodes and makes their outputs graph inputs, so the reference can be fed the very noise the split
graphs draw from their NoiseTable:

    dp_noise     [B, 2, T]  (Piper: torch.randn(B, 2, T), then * noise_w)           -> model.noise.durations(seed, T)
    prior_noise  [B, C, F]  (Piper: torch.randn_like(m_p), then * exp(logs_p) * noise_scale) -> model.noise.prior(seed, F)
"""
from __future__ import annotations

import numpy as np


def _surgery(path: str):
    import onnx

    model = onnx.load(path)
    g = model.graph
    rnd = [n for n in g.node if n.op_type == "RandomNormalLike"]
    if len(rnd) != 2:
        raise ValueError(f"{path}: expected 2 RandomNormalLike nodes (duration and prior noise), found {len(rnd)}")
    names = {}
    for n in rnd:
        role = "dp_noise" if n.name.startswith("/dp/") else "prior_noise"
        names[n.output[0]] = role
        g.node.remove(n)
    for n in g.node:  # rename the consumers' inputs to the new graph inputs
        for i, x in enumerate(n.input):
            if x in names:
                n.input[i] = names[x]
    for role, dims in (("dp_noise", ["batch_size", 2, "phonemes"]), ("prior_noise", ["batch_size", "channels", "frames"])):
        g.input.append(onnx.helper.make_tensor_value_info(role, onnx.TensorProto.FLOAT, dims))
    return model


def piper_session(path: str, noise_inputs: bool = False, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    source = _surgery(path).SerializeToString() if noise_inputs else path
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def piper_audio(session, ids: list[int], scales=(0.0, 1.0, 0.0), dp_noise=None, prior_noise=None) -> np.ndarray:
    """Audio [S] of one sentence's ids through the Piper graph (noise arrays only for a noise_inputs session)."""
    feeds = {"input": np.asarray([ids], np.int64), "input_lengths": np.asarray([len(ids)], np.int64),
             "scales": np.asarray(scales, np.float32)}
    if dp_noise is not None:
        feeds["dp_noise"] = np.asarray(dp_noise, np.float32)
        feeds["prior_noise"] = np.asarray(prior_noise, np.float32)
    return session.run(None, feeds)[0].reshape(-1)


# Phoneme ids of the three sentences of "Hello! I am a digital human. The capital of France is Paris." for
# en_US-joe-medium (piper_phonemize 1.2.1 espeak-ng en-us; Piper's ^ _ p _ ... $ layout), fixed here so the
# model tests need no phonemizer.
SENTENCES = [
    [1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 4, 0, 2],
    [1, 0, 14, 0, 74, 0, 50, 0, 25, 0, 3, 0, 50, 0, 3, 0, 17, 0, 120, 0, 74, 0, 17, 0, 108, 0, 74, 0, 92, 0, 59,
     0, 24, 0, 3, 0, 20, 0, 22, 0, 120, 0, 33, 0, 122, 0, 25, 0, 59, 0, 26, 0, 10, 0, 2],
    [1, 0, 41, 0, 59, 0, 3, 0, 23, 0, 120, 0, 39, 0, 28, 0, 74, 0, 92, 0, 59, 0, 24, 0, 3, 0, 102, 0, 34, 0, 3,
     0, 19, 0, 88, 0, 120, 0, 39, 0, 26, 0, 31, 0, 3, 0, 74, 0, 38, 0, 3, 0, 28, 0, 120, 0, 39, 0, 88, 0, 74, 0,
     31, 0, 10, 0, 2],
]
TEXT = "Hello! I am a digital human. The capital of France is Paris."
