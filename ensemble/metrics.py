"""The orchestrator's Prometheus metrics: names, kinds and buckets, once.

Triton exports them on its metrics port (8002) next to its own `nv_*` metrics;
the Grafana dashboard, the HPA rule and the tests read these names. The
orchestrator records through a `Recorder`; model.py binds it to
`pb_utils.MetricFamily`, tests use `MemoryRecorder`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

LATENCY_BUCKETS_MS = (10, 25, 50, 100, 160, 250, 400, 650, 1000, 1500, 2500, 4000, 6500, 10000)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "histogram" | "gauge" | "counter"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


TTFA = Metric("talking_head_ttfa_ms", "histogram", "Time from request to first audio chunk sent (ms)",
              buckets=LATENCY_BUCKETS_MS)
TTFF = Metric("talking_head_ttff_ms", "histogram", "Time from request to first video frame sent (ms)",
              buckets=LATENCY_BUCKETS_MS)
ACTIVE_SESSIONS = Metric("talking_head_active_sessions", "gauge", "Turns being served now")
STAGE_LATENCY = Metric("talking_head_stage_latency_ms", "histogram", "Latency of one stage model call (ms)",
                       labels=("stage",), buckets=LATENCY_BUCKETS_MS)
FRAMES_DROPPED = Metric("talking_head_frames_dropped_total", "counter",
                        "Video frame slots not made: late (would miss their display time) or stride (lowered rate)",
                        labels=("reason",))
FRAMES_LATE = Metric("talking_head_frames_late_total", "counter",
                     "Video frames sent more than LATE_FRAME_S after their display time (first audio chunk = time 0)")
LATE_FRAME_S = 0.040
REJECTED = Metric("talking_head_rejected_total", "counter", "Turns refused or failed before completion",
                  labels=("reason",))
TURNS = Metric("talking_head_turns_total", "counter", "Turns finished", labels=("outcome",))
CACHE_HITS = Metric("talking_head_cache_hits_total", "counter", "Turns served from the answer cache")
CACHE_LOOKUPS = Metric("talking_head_cache_lookups_total", "counter",
                       "Turns whose text is a cached exchange (hit rate = hits / lookups)")
INTERRUPTIONS = Metric("talking_head_interruptions_total", "counter", "Replies stopped early", labels=("reason",))
DEGRADED = Metric("talking_head_degraded", "gauge", "Load governor level: 0 normal, 1 lighter settings for new turns")
DEGRADE_SWITCHES = Metric("talking_head_degrade_switches_total", "counter", "Load governor switches",
                          labels=("to",))

ALL = (TTFA, TTFF, ACTIVE_SESSIONS, STAGE_LATENCY, FRAMES_DROPPED, FRAMES_LATE, REJECTED, TURNS, CACHE_HITS,
       CACHE_LOOKUPS, INTERRUPTIONS, DEGRADED, DEGRADE_SWITCHES)


class Recorder(Protocol):
    def observe(self, metric: Metric, value: float, **labels: str) -> None: ...
    def inc(self, metric: Metric, by: float = 1.0, **labels: str) -> None: ...
    def set(self, metric: Metric, value: float, **labels: str) -> None: ...


class MemoryRecorder:
    """Keeps every value in memory (tests, and when no metrics server exists)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple], list[float]] = defaultdict(list)
        self.totals: dict[tuple[str, tuple], float] = defaultdict(float)

    def observe(self, metric: Metric, value: float, **labels: str) -> None:
        self.values[(metric.name, tuple(sorted(labels.items())))].append(value)

    def inc(self, metric: Metric, by: float = 1.0, **labels: str) -> None:
        self.totals[(metric.name, tuple(sorted(labels.items())))] += by

    def set(self, metric: Metric, value: float, **labels: str) -> None:
        self.totals[(metric.name, tuple(sorted(labels.items())))] = value
