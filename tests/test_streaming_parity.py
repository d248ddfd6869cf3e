"""Streaming vocoding over overlapping chunks equals whole-utterance vocoding (real tiny HiFi-GAN)."""
import numpy as np
import pytest

from ensemble.pipeline import VOCODER_CONTEXT_FRAMES
from ensemble.vocoder_stream import VocoderStream
from export.contract import spec
from export.runtime.batching import onnx_runner

TOLERANCE = 1e-4  # max |streamed - whole| relative to the whole utterance's peak


@pytest.mark.parametrize("frames", [30, 75, 160])
def test_streamed_audio_equals_whole_utterance(exported_repository, frames):
    runner = onnx_runner(spec.VOCODER, exported_repository / "vocoder" / "1" / "model.onnx")

    def vocode(mel):
        return runner.run([{"mel": mel[None]}])[0]["audio"][0]

    mel = np.random.default_rng(frames).uniform(-8, 0, (80, frames)).astype(np.float32)
    whole = vocode(mel)
    stream = VocoderStream(vocode, context_frames=VOCODER_CONTEXT_FRAMES)
    chunks = stream.push(mel) + stream.finish()
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape
    err = np.max(np.abs(streamed - whole)) / np.max(np.abs(whole))
    print(f"{frames} frames in {len(chunks)} chunks: max relative error {err:.2e}")
    assert err <= TOLERANCE
