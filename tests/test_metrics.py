"""The orchestrator's metrics (ensemble/metrics.py): Prometheus naming, series that exist from the start, canary turns
kept out of the user latency histograms; in process, on the exported tiny graphs (no Triton)."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from ensemble import metrics
from ensemble.errors import InputError
from ensemble.options import Limits, TurnOptions


def test_names_follow_prometheus_conventions():
    for m in metrics.ALL:
        assert m.name.startswith("talking_head_"), m.name
        if m.kind == "histogram":
            assert m.name.endswith("_seconds") and m.buckets == metrics.LATENCY_BUCKETS_S, m.name
            assert "(seconds)" in m.help, m.help
        if m.kind == "counter":
            assert m.name.endswith("_total"), m.name
    assert metrics.LATENCY_BUCKETS_S == tuple(sorted(metrics.LATENCY_BUCKETS_S)) and metrics.LATENCY_BUCKETS_S[-1] <= 60


def test_counters_and_gauges_of_known_labels_start_at_zero():
    rec = metrics.MemoryRecorder()  # create_children ran in its constructor, as in model.py's TritonMetrics
    for reason in ("invalid_input", "overloaded", "draining"):
        assert (metrics.REJECTED.name, (("reason", reason),)) in rec.totals
    for m in (metrics.CACHE_HITS, metrics.CACHE_LOOKUPS, metrics.FRAMES_LATE, metrics.ACTIVE_SESSIONS, metrics.DEGRADED):
        assert rec.totals[(m.name, ())] == 0.0
    for reason in ("barge_in", "cancel"):
        assert rec.totals[(metrics.INTERRUPTIONS.name, (("reason", reason),))] == 0.0
    assert all(v == 0.0 for v in rec.totals.values())
    assert not rec.values  # histograms start at their first observation
    counted = {(name, labels) for name, labels in rec.totals}
    assert {m.name for m in metrics.ALL if m.kind != "histogram"} == {name for name, _ in counted}


class Calls:
    """A Recorder that logs its calls (what Triton's MetricFamily children would receive)."""

    def __init__(self):
        self.calls = []

    def observe(self, metric, value, **labels):
        self.calls.append(("observe", metric.name, value, labels))

    def inc(self, metric, by=1.0, **labels):
        self.calls.append(("inc", metric.name, by, labels))

    def set(self, metric, value, **labels):
        self.calls.append(("set", metric.name, value, labels))


def test_create_children_touches_each_series_once_without_changing_it():
    rec = Calls()
    metrics.create_children(rec)
    assert all(value == 0.0 for _, _, value, _ in rec.calls)
    assert {(kind, name) for kind, name, _, _ in rec.calls} == \
        {("inc" if m.kind == "counter" else "set", m.name) for m in metrics.ALL if m.kind != "histogram"}
    assert len(rec.calls) == len({(name, tuple(labels.items())) for _, name, _, labels in rec.calls})


def test_the_canary_option():
    limits = Limits()
    assert TurnOptions.parse(b'{"canary": true}', limits).canary is True
    assert TurnOptions.parse(b"{}", limits).canary is False
    with pytest.raises(InputError, match="canary"):
        TurnOptions.parse(b'{"canary": "yes"}', limits)
    from deploy import canary

    assert canary.SPOKEN["canary"] is True and canary.TEXT["canary"] is True


def test_a_canary_turn_records_no_user_latency():
    rec = metrics.MemoryRecorder()
    canary = metrics.for_turn(rec, TurnOptions(canary=True))
    canary.observe(metrics.TTFA, 0.5)
    canary.observe(metrics.TTFF, 0.6)
    canary.observe(metrics.STAGE_LATENCY, 0.01, stage="llm")
    canary.inc(metrics.TURNS, outcome="ok")
    assert (metrics.TTFA.name, ()) not in rec.values and (metrics.TTFF.name, ()) not in rec.values
    assert rec.values[(metrics.STAGE_LATENCY.name, (("stage", "llm"),))] == [0.01]
    assert rec.totals[(metrics.TURNS.name, (("outcome", "ok"),))] == 1
    assert metrics.for_turn(rec, TurnOptions()) is rec


# ------------------------------------------------------------------ through the orchestrator (ensemble.service)

@pytest.fixture
def service(exported_repository, tmp_path, demo_avatar):
    from ensemble.service import Service, ServiceConfig

    svc = Service.load(exported_repository / "talking_head" / "1", avatar_dir=tmp_path,
                       config=ServiceConfig(limits=Limits(max_sessions=4)))
    svc.avatars.save(demo_avatar)
    svc.avatar_id = demo_avatar.id
    return svc


def _turn(service, stage_runners, **options):
    async def infer(model, inputs, timeout_s=None):
        result = stage_runners[model].run([inputs])[0]
        if isinstance(result, Exception):
            raise result
        return result

    inputs = {"avatar_id": np.array([service.avatar_id.encode()], dtype=object),
              "text": np.array([b"Tell me about the sea."], dtype=object),
              "options": np.array([json.dumps({"max_reply_tokens": 8, **options}).encode()], dtype=object)}
    events = []
    asyncio.run(service.handle(inputs, infer, events.append))
    return events


def test_user_turns_observe_seconds_and_canary_turns_stay_out(service, stage_runners):
    """Needs ensemble/pipeline.py and ensemble/service.py to observe seconds and to record a turn through
    metrics.for_turn (the lead's part of issue #16, /work/scratch/newcomer/lead-metrics.patch)."""
    rec = service.recorder
    _turn(service, stage_runners, canary=True)
    assert not rec.values[(metrics.TTFA.name, ())] and not rec.values[(metrics.TTFF.name, ())]
    assert rec.values[(metrics.STAGE_LATENCY.name, (("stage", "llm"),))], "the canary's stage calls still count"
    assert rec.totals[(metrics.TURNS.name, (("outcome", "ok"),))] == 1

    events = _turn(service, stage_runners)
    (ttfa,) = rec.values[(metrics.TTFA.name, ())]
    done = [e for e in events if e.type == "done"][-1].data
    assert ttfa == pytest.approx(done["timings_ms"]["first_audio"] / 1000.0)  # seconds, as the name says
    assert all(v < 60 for v in rec.values[(metrics.STAGE_LATENCY.name, (("stage", "llm"),))])
