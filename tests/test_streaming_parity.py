"""Streaming vocoding over overlapping chunks equals whole-utterance vocoding, for each speech family's vocoder
with the context frames the spec gives it (tiny seeded graphs: the receptive field is the architecture's)."""
import numpy as np
import pytest
import torch

from ensemble.vocoder_stream import VocoderStream, VocoderStreamOptions
from export.contract import spec
from export.contract.presets import get_preset
from export.toolchain.graphs import build_graphs

TOLERANCE = 1e-4  # max |streamed - whole| relative to the whole utterance's peak
FEATURES = {  # what each family's acoustic model hands its vocoder: random stand-ins of its range
    "vits": lambda rng, c, n: rng.normal(0, 1, (c, n)),
    "fastspeech2": lambda rng, c, n: rng.uniform(-8, 0, (c, n)),
}


@pytest.mark.parametrize("family", sorted(spec.SPEECH_FAMILIES))
@pytest.mark.parametrize("frames", [30, 75, 160])
def test_streamed_audio_equals_whole_utterance(family, frames):
    stages = spec.SPEECH_FAMILIES[family]
    graph = build_graphs(get_preset("tiny"), 0, [stages.vocoder.name])[stages.vocoder.name]
    channels = spec.sample_shape(stages.vocoder, get_preset("tiny"))[stages.features][1]

    @torch.no_grad()
    def vocode(features):
        return graph(torch.from_numpy(features[None]))[0].numpy()

    features = FEATURES[family](np.random.default_rng(frames), channels, frames).astype(np.float32)
    whole = vocode(features)
    stream = VocoderStream(vocode, options=VocoderStreamOptions(context_frames=stages.context_frames,
                                                                 n_mels=channels))
    chunks = stream.push(features) + stream.finish()
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape
    err = np.max(np.abs(streamed - whole)) / np.max(np.abs(whole))
    print(f"{family}, {frames} frames in {len(chunks)} chunks: max relative error {err:.2e}")
    assert err <= TOLERANCE
