"""perf_analyzer's profile export: per-request timestamps and event types, read from files of any size.

perf_analyzer 2.51 writes, per experiment, {"experiment": {"mode", "value"}, "requests": [{"timestamp",
"request_inputs", "response_timestamps": [...], "response_outputs": [{"event": "<JSON>", ...}, ...]}],
"window_boundaries"}, then the top-level "version", "service_kind" and "endpoint". Every response's outputs are
in it, JPEG frames as JSON number lists (~100 MB per turn with video on), so it is scanned with a regular
expression over a memory map rather than parsed whole. Inside a JSON string every quote is escaped, so neither
event texts nor request inputs can fake a key.

A cut export. perf_analyzer 2.51 records an output that a response does not carry (`audio_chunk` in a text or
video event) as an empty buffer, then exports it by reading one value from that buffer anyway: heap bytes. When
those four bytes spell NaN or Inf, rapidjson's writer refuses the number and stops: the file ends there, mid-
request, and perf_analyzer still exits 0 (a few runs in a hundred here, each doing ~1700 such reads). The
closing "version" key is then missing: `Profile.complete` is False, and the request that was being written is
dropped, since its later responses' events are not in the file. The writer flushes 64 KiB at a time, so a cut in
the first 64 KiB leaves an empty file. Forced on demand by preloading tests/pa_nan_new.c (zero-size arrays filled
with 0xff: every such read is NaN): perf_analyzer exits 0 with an empty export
(`tests/test_loadtest_live.py::test_a_profile_export_cut_short_is_never_taken_for_a_result`).
"""
from __future__ import annotations

import mmap
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtests import stats


@dataclass
class RequestRecord:
    sent_ns: int
    responses_ns: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # each response's event type ("" for the empty final one)

    def _first(self, kind: str) -> float | None:
        for t, e in zip(self.responses_ns, self.events):
            if e == kind:
                return (t - self.sent_ns) / 1e9
        return None

    @property
    def first_response_s(self) -> float | None:
        return (self.responses_ns[0] - self.sent_ns) / 1e9 if self.responses_ns else None

    @property
    def last_response_s(self) -> float | None:
        return (self.responses_ns[-1] - self.sent_ns) / 1e9 if self.responses_ns else None

    @property
    def first_audio_s(self) -> float | None:
        return self._first("audio")

    @property
    def first_frame_s(self) -> float | None:
        return self._first("video")


@dataclass
class Experiment:
    mode: str  # "concurrency" or "request_rate"
    value: float
    requests: list[RequestRecord] = field(default_factory=list)


@dataclass
class Profile:
    """What a profile export holds; `complete` is False when the file stops before its closing keys."""
    experiments: list[Experiment] = field(default_factory=list)
    complete: bool = False
    size: int = 0

    @property
    def requests(self) -> int:
        return sum(len(e.requests) for e in self.experiments)

    def describe(self) -> str:
        """One line on an export that cannot be used as it is (empty, or cut)."""
        if not self.size:
            return "an empty profile export, or none"
        if not self.complete:
            return (f"a profile export cut at byte {self.size} ({self.requests} whole requests before the cut): "
                    "perf_analyzer 2.51 exports an output a response lacks by reading past an empty buffer, and "
                    "stops writing where those bytes spell NaN or Inf")
        return f"a {self.size}-byte profile export without requests"


_PROFILE_TOKENS = re.compile(
    rb'"experiment":\{"mode":"(?P<mode>[^"]*)","value":(?P<value>[-+\d.eE]+)\}'
    rb'|"timestamp":(?P<ts>\d+)'
    rb'|"response_timestamps":\[(?P<rts>[\d,\s]*)\]'
    rb'|"event":"(?P<ev>(?:[^"\\]|\\.)*)"'
    rb'|(?P<version>"version":")')
_EVENT_TYPE = re.compile(rb'\\"type\\":\s*\\"(\w+)\\"|"type":\s*"(\w+)"')


def read_profile(path: str | os.PathLike) -> Profile:
    """Experiments and per-request timestamps of a perf_analyzer profile export (any size; a cut one too)."""
    profile = Profile()
    with open(path, "rb") as f:
        profile.size = os.fstat(f.fileno()).st_size
        if profile.size == 0:
            return profile
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            current: RequestRecord | None = None
            for tok in _PROFILE_TOKENS.finditer(m):
                if tok.group("mode") is not None:
                    profile.experiments.append(Experiment(tok.group("mode").decode(), float(tok.group("value"))))
                elif tok.group("ts") is not None:
                    if not profile.experiments:
                        profile.experiments.append(Experiment("unknown", 0.0))
                    current = RequestRecord(int(tok.group("ts")))
                    profile.experiments[-1].requests.append(current)
                elif tok.group("rts") is not None and current is not None:
                    current.responses_ns = [int(x) for x in tok.group("rts").split(b",") if x.strip()]
                elif tok.group("ev") is not None and current is not None:
                    t = _EVENT_TYPE.search(tok.group("ev"))
                    current.events.append((t.group(1) or t.group(2)).decode() if t else "")
                elif tok.group("version") is not None:
                    profile.complete = True
    if not profile.complete and profile.experiments and profile.experiments[-1].requests:
        profile.experiments[-1].requests.pop()  # the one being written when the file stopped
    return profile


def summarize_profile(experiments: Sequence[Experiment]) -> list[dict[str, Any]]:
    """Per experiment: requests, and p50/p95/p99 (seconds) of first response, first audio, first frame, last."""
    out = []
    for e in experiments:
        rs = [r for r in e.requests if r.responses_ns]
        out.append({
            "mode": e.mode, "value": e.value, "requests": len(e.requests), "answered": len(rs),
            "responses_per_request": stats.percentiles(len(r.responses_ns) for r in rs),
            "time_to_first_response_s": stats.percentiles(r.first_response_s for r in rs),
            "time_to_first_audio_s": stats.percentiles(r.first_audio_s for r in rs),
            "time_to_first_frame_s": stats.percentiles(r.first_frame_s for r in rs),
            "time_to_last_response_s": stats.percentiles(r.last_response_s for r in rs),
        })
    return out


def format_profile_summary(rows: Sequence[dict[str, Any]]) -> str:
    def s(v: float | None) -> str:
        return "       -" if v is None else f"{v:8.3f}"

    lines = [f"{'seconds':<30}{'p50':>9}{'p95':>9}{'p99':>9}{'n':>6}"]
    for row in rows:
        lines.append(f"{row['mode']} {row['value']:g}: {row['answered']} of {row['requests']} requests answered")
        for key, label in (("time_to_first_response_s", "first response"),
                           ("time_to_first_audio_s", "first audio"),
                           ("time_to_first_frame_s", "first video frame"),
                           ("time_to_last_response_s", "last response")):
            m = row[key]
            lines.append(f"  {label:<28}{s(m['p50'])} {s(m['p95'])} {s(m['p99'])}{m['count']:>6}")
    return "\n".join(lines)
