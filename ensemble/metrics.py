"""The orchestrator's Prometheus metrics: names, kinds and buckets, once.

Triton exports them on its metrics port (8002) next to its own `nv_*` metrics;
the Grafana dashboard, the HPA rule, the PrometheusRule alerts and the tests read
these names. The orchestrator records through a `Recorder`; model.py binds it to
`pb_utils.MetricFamily`, tests use `MemoryRecorder`.

Conventions (Prometheus): latencies are histograms in seconds (`_seconds`, observed
in seconds); counters end in `_total`. Every counter and gauge series whose label
values are known (`Metric.known`) exists at 0 from the start (`create_children`), so
that `rate()` and alerts see a first increment and a dashboard shows 0, not "no data".
Canary turns (option `canary`) are kept out of the user latency histograms
(`for_turn`).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.16, 0.25, 0.4, 0.65, 1.0, 1.5, 2.5, 4.0, 6.5, 10.0)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "histogram" | "gauge" | "counter"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    known: tuple[str, ...] = ()  # the values of its one label, each a series at 0 from the start (create_children)


TTFA = Metric("talking_head_ttfa_seconds", "histogram",
              "Time from request to first audio chunk sent (seconds); canary turns excluded", buckets=LATENCY_BUCKETS_S)
TTFF = Metric("talking_head_ttff_seconds", "histogram",
              "Time from request to first video frame sent (seconds); canary turns excluded", buckets=LATENCY_BUCKETS_S)
ACTIVE_SESSIONS = Metric("talking_head_active_sessions", "gauge", "Turns being served now")
STAGE_LATENCY = Metric("talking_head_stage_latency_seconds", "histogram", "Latency of one stage model call (seconds)",
                       labels=("stage",), buckets=LATENCY_BUCKETS_S)
FRAMES_DROPPED = Metric("talking_head_frames_dropped_total", "counter",
                        "Video frame slots not made: late (would miss their display time) or stride (lowered rate)",
                        labels=("reason",), known=("late", "stride"))
FRAMES_LATE = Metric("talking_head_frames_late_total", "counter",
                     "Video frames sent more than LATE_FRAME_S after their display time (first audio chunk = time 0)")
LATE_FRAME_S = 0.040
REJECTED = Metric("talking_head_rejected_total", "counter", "Turns refused or failed before completion",
                  labels=("reason",),
                  known=("invalid_input", "overloaded", "draining", "sessions_full"))
TURNS = Metric("talking_head_turns_total", "counter", "Turns finished", labels=("outcome",),
               known=("ok", "interrupted", "cancelled", "error"))
CACHE_HITS = Metric("talking_head_cache_hits_total", "counter", "Turns served from the answer cache")
CACHE_LOOKUPS = Metric("talking_head_cache_lookups_total", "counter",
                       "Turns whose text is a cached exchange (hit rate = hits / lookups)")
INTERRUPTIONS = Metric("talking_head_interruptions_total", "counter", "Replies stopped early", labels=("reason",),
                       known=("barge_in", "cancel"))
DEGRADED = Metric("talking_head_degraded", "gauge", "Load governor level: 0 normal, 1 lighter settings for new turns")
DEGRADE_SWITCHES = Metric("talking_head_degrade_switches_total", "counter", "Load governor switches",
                          labels=("to",), known=("degraded", "normal"))

ALL = (TTFA, TTFF, ACTIVE_SESSIONS, STAGE_LATENCY, FRAMES_DROPPED, FRAMES_LATE, REJECTED, TURNS, CACHE_HITS,
       CACHE_LOOKUPS, INTERRUPTIONS, DEGRADED, DEGRADE_SWITCHES)
USER_LATENCY = (TTFA, TTFF)  # what a canary turn does not count in


def initial_series(metric: Metric) -> list[dict[str, str]]:
    """The label sets of `metric` that exist at 0 from the start: every known value of its label, or the one
    series of a metric without labels. Histograms and labels of open-ended values (a stage) start at first use."""
    if metric.kind == "histogram":
        return []
    if not metric.labels:
        return [{}]
    assert len(metric.labels) == 1 or not metric.known, f"{metric.name}: `known` lists values of one label only"
    return [{metric.labels[0]: v} for v in metric.known]


class Recorder(Protocol):
    def observe(self, metric: Metric, value: float, **labels: str) -> None: ...
    def inc(self, metric: Metric, by: float = 1.0, **labels: str) -> None: ...
    def set(self, metric: Metric, value: float, **labels: str) -> None: ...


class MemoryRecorder:
    """Keeps every value in memory (tests, and when no metrics server exists)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple], list[float]] = defaultdict(list)
        self.totals: dict[tuple[str, tuple], float] = defaultdict(float)
        create_children(self)

    def observe(self, metric: Metric, value: float, **labels: str) -> None:
        self.values[(metric.name, tuple(sorted(labels.items())))].append(value)

    def inc(self, metric: Metric, by: float = 1.0, **labels: str) -> None:
        self.totals[(metric.name, tuple(sorted(labels.items())))] += by

    def set(self, metric: Metric, value: float, **labels: str) -> None:
        self.totals[(metric.name, tuple(sorted(labels.items())))] = value


def create_children(recorder: Recorder) -> None:
    """Create every counter and gauge series with known label values at 0 (call once, at start)."""
    for m in ALL:
        for labels in initial_series(m):
            if m.kind == "counter":
                recorder.inc(m, 0.0, **labels)
            else:
                recorder.set(m, 0.0, **labels)


class _WithoutUserLatency:
    """A turn's recorder that drops the user latency histograms (TTFA, TTFF) and passes everything else."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def observe(self, metric: Metric, value: float, **labels: str) -> None:
        if metric not in USER_LATENCY:
            self.recorder.observe(metric, value, **labels)

    def inc(self, metric: Metric, by: float = 1.0, **labels: str) -> None:
        self.recorder.inc(metric, by, **labels)

    def set(self, metric: Metric, value: float, **labels: str) -> None:
        self.recorder.set(metric, value, **labels)


def for_turn(recorder: Recorder, options) -> Recorder:
    """The recorder a turn with these options (ensemble.options.TurnOptions) records through: a canary turn
    (`"canary": true`, deploy/canary.py) is not a user's and stays out of TTFA/TTFF."""
    return _WithoutUserLatency(recorder) if getattr(options, "canary", False) else recorder
