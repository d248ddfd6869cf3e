"""Dynamic batching on the real exported graphs: a padded batch equals single runs."""
import numpy as np
import pytest

from export.contract import media, spec
from export.contract.presets import get_preset
from export.runtime.batching import BatchRunner, check_request

CHANNELS = get_preset("tiny").vits.inter_channels  # the tiny voice's latent channels


def test_ragged_vocoder_batch_matches_single_runs(stage_runners):
    rng = np.random.default_rng(3)
    requests = [{"latents": rng.normal(0, 1, (1, CHANNELS, n)).astype(np.float32)} for n in (7, 30, 13)]
    batched = stage_runners["vocoder"].run(requests)
    for req, out in zip(requests, batched):
        single = stage_runners["vocoder"].run([req])[0]
        assert out["audio"].shape == (1, req["latents"].shape[2] * media.TTS_MEL.hop_length)
        # right-padding only disturbs samples within the receptive field of the padded end
        n = out["audio"].shape[1] - spec.SPEECH_FAMILIES["vits"].context_frames * media.TTS_MEL.hop_length
        if n > 0:
            np.testing.assert_allclose(out["audio"][:, :n], single["audio"][:, :n], atol=1e-5)


def test_ragged_tts_batch_matches_single_runs(stage_runners):
    rng = np.random.default_rng(4)
    requests = []
    for k, n in enumerate((5, 17, 9)):
        requests.append({"phonemes": rng.integers(1, 100, (1, n)).astype(np.int64),
                         "phoneme_lengths": np.array([[n]], np.int64),
                         "scales": np.array([[0.667, 1.0, 0.8]], np.float32), "seed": np.array([[k]], np.int64)})
    batched = stage_runners["tts"].run(requests)
    for req, out in zip(requests, batched):
        single = stage_runners["tts"].run([req])[0]
        assert out["latents"].shape == single["latents"].shape
        assert int(out["latent_lengths"][0, 0]) == out["latents"].shape[2] == out["durations"].sum()
        np.testing.assert_array_equal(out["durations"], single["durations"])
        np.testing.assert_allclose(out["latents"], single["latents"], atol=1e-4)


def test_the_served_config_sets_the_rows_a_graph_call_takes(stage_runners):
    vocoder = stage_runners["vocoder"]
    rows = []

    def counting(feeds):
        rows.append(feeds["latents"].shape[0])
        return vocoder.run_graph(feeds)

    requests = [{"latents": np.full((1, CHANNELS, 9), k / 10, np.float32)} for k in range(5)]
    expected = vocoder.run(requests)
    for max_batch_size, calls in ((None, [5]), (2, [2, 2, 1]), (4, [4, 1])):
        rows.clear()
        out = BatchRunner(spec.VOCODER, counting, vocoder.dims, max_batch_size=max_batch_size).run(requests)
        assert rows == calls, max_batch_size  # None: the spec's 16
        for a, b in zip(out, expected):
            np.testing.assert_allclose(a["audio"], b["audio"], atol=1e-5)


def test_a_bad_request_fails_alone(stage_runners):
    good = {"latents": np.zeros((1, CHANNELS, 10), np.float32)}
    bad = {"latents": np.zeros((1, CHANNELS - 1, 10), np.float32)}
    too_long = {"latents": np.zeros((1, CHANNELS, spec.VOCODER.axis("frames").max + 1), np.float32)}
    results = stage_runners["vocoder"].run([good, bad, too_long])
    assert isinstance(results[0], dict)
    assert isinstance(results[1], ValueError) and f"dim 0 is {CHANNELS - 1}, expected {CHANNELS}" in str(results[1])
    assert isinstance(results[2], ValueError) and "allowed 1..1024" in str(results[2])


def test_check_request_names_dtype_problems():
    with pytest.raises(ValueError, match="is float64, expected float32"):
        check_request(spec.WAV2LIP, {"mel": np.zeros((1, 1, 80, 16)), "faces": np.zeros((1, 6, 96, 96), np.float32)})


def _tts_request(ids, scales=(0.667, 1.0, 0.8)):
    ids = np.asarray([ids], np.int64)
    return {"phonemes": ids, "phoneme_lengths": np.array([[ids.shape[1]]], np.int64),
            "scales": np.array([scales], np.float32), "seed": np.array([[0]], np.int64)}


def test_ids_and_controls_out_of_their_bounds_are_refused_before_the_batch(stage_runners, exported_repository):
    """The export writes each stage's input bounds beside its graph; the runtime checks them per request, so one
    request's ids past the vocabulary or unbounded durations never reach the batch the others share."""
    import json

    from export.runtime.batching import BatchRunner

    bounds = json.loads((exported_repository / "tts" / "1" / "export.json").read_text())["input_bounds"]
    assert bounds["phonemes"] == [0, get_preset("tiny").vits.n_vocab - 1]
    runner = BatchRunner(spec.TTS, stage_runners["tts"].run_graph, stage_runners["tts"].dims, bounds)
    good, far_id, long_noise = _tts_request([1, 5, 9]), _tts_request([1, 9999, 2]), _tts_request([1, 2], (0.7, 1, 50))
    nan = _tts_request([1, 2], (float("nan"), 1, 0.8))
    results = runner.run([good, far_id, long_noise, nan])
    assert isinstance(results[0], dict)
    assert "input 'phonemes' holds values 1..9999, allowed 0..255" in str(results[1])
    assert "input 'scales' column 2 holds values" in str(results[2]) and "allowed 0.0..2.0" in str(results[2])
    assert "NaN or infinite" in str(results[3])


def test_a_graph_failure_fails_only_the_request_that_caused_it(stage_runners):
    """No bounds here: the ONNX graph itself fails on an id past its embedding; the batch is re-run one request at a
    time, so the good requests still get their answers and only the bad one hears the graph's error."""
    runner = stage_runners["tts"]
    out = runner.run([_tts_request([1, 5, 9]), _tts_request([1, 10_000, 2]), _tts_request([3, 4])])
    assert isinstance(out[0], dict) and isinstance(out[2], dict)
    assert isinstance(out[1], RuntimeError) and str(out[1]).startswith("tts: ")


def test_a_float_input_without_bounds_still_refuses_nan_and_infinity(stage_runners):
    """The vocoder's latents have no value bounds, yet NaN or infinite latents are refused per request (the
    adversarial re-run found NaN latents answered), and a good request beside them gets its audio."""
    runner = stage_runners["vocoder"]
    channels = runner.dims["latent_channels"]
    good = {"latents": np.zeros((1, channels, 8), np.float32)}
    out = runner.run([good, {"latents": np.full((1, channels, 8), np.nan, np.float32)},
                      {"latents": np.full((1, channels, 8), np.inf, np.float32)}])
    assert isinstance(out[0], dict) and out[0]["audio"].size > 0
    assert all("vocoder: input 'latents' holds NaN or infinite values" in str(e) for e in out[1:])


class _Tracked(np.ndarray):
    """An input array whose lifetime a weak reference can watch (a plain ndarray takes no weak references)."""


def test_a_refused_request_lets_go_of_its_inputs_at_once(stage_runners):
    """A refused request's inputs are freed when the caller drops them, not when the cycle collector runs: in the
    server they are views of the Python backend's shared memory, and a stream of refused 4 MB vocoder requests held
    ~100 MiB of it until a collection (loadtests.adversarial, RELIABILITY.md)."""
    import gc
    import weakref

    runner = stage_runners["vocoder"]
    too_long = np.zeros((1, CHANNELS, spec.VOCODER.axis("frames").max + 1), np.float32).view(_Tracked)
    nan = np.full((1, CHANNELS, 8), np.nan, np.float32).view(_Tracked)
    watched = [weakref.ref(too_long), weakref.ref(nan)]
    gc.disable()
    try:
        results = runner.run([{"latents": too_long}, {"latents": nan}])
        assert all(isinstance(r, ValueError) for r in results), results
        del too_long, nan
        assert [w() is None for w in watched] == [True, True], "a refusal keeps its request's inputs alive"
    finally:
        gc.enable()
