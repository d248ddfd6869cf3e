"""Vocoding VITS latents chunk by chunk (ensemble/vocoder_stream.py) equals whole-utterance vocoding."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from piper_ref import SENTENCES

from ensemble.vocoder_stream import VocoderStream, VocoderStreamOptions
from export.contract.spec import SPEECH_FAMILIES
from export.toolchain.models.vits import stream_context_frames

TOLERANCE = 1e-4  # max |streamed - whole| / peak |whole|


@pytest.fixture(scope="module")
def latents(graphs):
    tts, _ = graphs
    ids = SENTENCES[1] + SENTENCES[2][1:]  # ~270 frames: several chunks
    with torch.inference_mode():
        z, _, _ = tts(torch.tensor([ids]), torch.tensor([[len(ids)]]), torch.tensor([[0.667, 1.0, 0.8]]),
                      torch.tensor([[5]]))
    return z[0].numpy()


@pytest.fixture(scope="module")
def vocode(exported):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    session = ort.InferenceSession(str(exported["vocoder"]), so, providers=["CPUExecutionProvider"])
    return lambda z: session.run(None, {"latents": z[None]})[0][0]


def stream_error(vocode, z, context, chunk=32):
    whole = vocode(z)
    stream = VocoderStream(vocode, options=VocoderStreamOptions(chunk_frames=chunk, context_frames=context,
                                                                crossfade_frames=2, n_mels=z.shape[0]))
    out = np.concatenate(stream.push(z) + stream.finish())
    assert out.shape == whole.shape
    return float(np.abs(out - whole).max() / np.abs(whole).max())


@pytest.mark.parametrize("chunk", [16, 32])
def test_streamed_equals_whole(vocode, latents, chunk):
    assert stream_error(vocode, latents, SPEECH_FAMILIES["vits"].context_frames, chunk) <= TOLERANCE


def test_too_little_context_is_audible(vocode, latents):
    assert stream_error(vocode, latents, 6) > 1e-3  # the check above can fail


def test_context_frames_is_the_measured_receptive_field(model):
    assert stream_context_frames(model.dec, model.config.inter_channels, model.config.hop_length) \
        == SPEECH_FAMILIES["vits"].context_frames
