"""Dynamic batching on the real exported graphs: a padded batch equals single runs."""
import numpy as np
import pytest

from export.contract import media, spec
from export.runtime.batching import check_request, onnx_runner


@pytest.fixture(scope="module")
def runners(exported_repository):
    return {s.name: onnx_runner(s, exported_repository / s.name / "1" / "model.onnx") for s in spec.STAGES}


def test_ragged_vocoder_batch_matches_single_runs(runners):
    rng = np.random.default_rng(3)
    requests = [{"mel": rng.uniform(-11, 1, (1, 80, n)).astype(np.float32)} for n in (7, 20, 13)]
    batched = runners["vocoder"].run(requests)
    for req, out in zip(requests, batched):
        single = runners["vocoder"].run([req])[0]
        assert out["audio"].shape == (1, req["mel"].shape[2] * media.TTS_MEL.hop_length)
        # right-padding only disturbs samples within the receptive field of the padded end
        n = out["audio"].shape[1] - 20 * media.TTS_MEL.hop_length
        if n > 0:
            np.testing.assert_allclose(out["audio"][:, :n], single["audio"][:, :n], atol=1e-5)


def test_ragged_tts_batch_matches_single_runs(runners):
    rng = np.random.default_rng(4)
    requests = []
    for n in (5, 17, 9):
        requests.append({"phonemes": rng.integers(1, 100, (1, n)).astype(np.int64),
                         "phoneme_lengths": np.array([[n]], np.int64),
                         "controls": np.ones((1, 3), np.float32)})
    batched = runners["tts"].run(requests)
    for req, out in zip(requests, batched):
        single = runners["tts"].run([req])[0]
        assert out["mel"].shape == single["mel"].shape
        assert int(out["mel_lengths"][0, 0]) == out["mel"].shape[2]
        np.testing.assert_allclose(out["mel"], single["mel"], atol=1e-4)


def test_a_bad_request_fails_alone(runners):
    good = {"mel": np.zeros((1, 80, 10), np.float32)}
    bad = {"mel": np.zeros((1, 79, 10), np.float32)}
    too_long = {"mel": np.zeros((1, 80, spec.VOCODER.axis("frames").max + 1), np.float32)}
    results = runners["vocoder"].run([good, bad, too_long])
    assert isinstance(results[0], dict)
    assert isinstance(results[1], ValueError) and "dim 0 is 79, expected 80" in str(results[1])
    assert isinstance(results[2], ValueError) and "allowed 1..1024" in str(results[2])


def test_check_request_names_dtype_problems():
    with pytest.raises(ValueError, match="is float64, expected float32"):
        check_request(spec.LIPSYNC, {"mel": np.zeros((1, 1, 80, 16)), "faces": np.zeros((1, 6, 96, 96), np.float32)})
