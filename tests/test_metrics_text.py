"""deploy/metrics_text.py: the one reader of Prometheus text (the drain, the benchmarks and the tests use it against
the real server; here, its rules on a sample of what Triton and the orchestrator serve)."""
import pytest

from deploy import metrics_text

TEXT = '''# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{model="tts",version="1"} 12
nv_inference_count{model="vocoder",version="1"} 40
nv_inference_exec_count{model="tts",version="1"} 5
talking_head_turns_total{outcome="cancelled",model="talking_head"} 2
talking_head_turns_total{outcome="done",model="talking_head"} 7
talking_head_turns_total{outcome="cancelled",model="talking_head",instance="1"} 1
talking_head_active_sessions 3 1733300000000
talking_head_active_sessions_peak 9
odd_label{text="a \\"quoted\\", comma\\\\"} 1.5e3
'''


def test_samples_keep_their_names_labels_and_values():
    samples = metrics_text.parse(TEXT)
    assert len(samples) == 9
    assert samples[0] == metrics_text.Sample("nv_inference_count", {"model": "tts", "version": "1"}, 12.0)
    assert samples[6].labels == {} and samples[6].value == 3.0  # a timestamp after the value is not the value
    assert samples[8].labels == {"text": 'a "quoted", comma\\'} and samples[8].value == 1500.0


def test_total_sums_the_series_of_one_name_that_carry_the_labels():
    samples = metrics_text.parse(TEXT)
    assert metrics_text.total(samples, "talking_head_turns_total") == 10
    assert metrics_text.total(samples, "talking_head_turns_total", outcome="cancelled") == 3
    assert metrics_text.total(samples, "talking_head_active_sessions") == 3  # not the _peak series
    assert metrics_text.total(samples, "nv_inference_count", model="llm") == 0
    assert metrics_text.labels('outcome="cancelled"') == {"outcome": "cancelled"}


def test_a_line_that_is_not_a_sample_is_named():
    with pytest.raises(ValueError, match="not a Prometheus sample line: 'garbage here now'"):
        metrics_text.parse("ok 1\ngarbage here now\n")
    with pytest.raises(ValueError, match="not a Prometheus sample line: 'some_metric high'"):
        metrics_text.parse("some_metric high")
