"""Raw per-turn samples of a load test, their exact percentiles, and failure classes.

Locust's own statistics bucket response times (rounded to 2 significant digits
above 100 ms) and know only one number per request. A talking-head turn has
several that matter, so the locustfile records one `TurnSample` per turn and
this module computes exact percentiles from them (`numpy.percentile`, linear
interpolation) and writes two reports beside locust's `--csv`/`--html` ones:

    <prefix>_turns.csv       one row per turn (TURN_FIELDS)
    <prefix>_summary.json    p50/p95/p99 per metric, overall and per turn kind
                             (speech / text), failures by class, turns per user

Latency percentiles count completed turns only; a failed turn's partial
figures stay in the CSV. Failure classes (FAILURE_CLASSES):

    overloaded     refused because of load: "server busy ..." (the orchestrator's
                   session limit) or Triton's queue limit, gRPC UNAVAILABLE
    invalid_input  "invalid input: ..." (INVALID_ARGUMENT)
    cancelled      "turn cancelled ..." (CANCELLED)
    internal       "internal error: ..." (INTERNAL)
    transport      the connection failed or broke (refused, reset, socket closed)
    timeout        the turn did not finish in time (client timeout, DEADLINE_EXCEEDED)
    protocol       a response that breaks the event protocol (export.contract.events)
    other          anything else (the message is kept in the CSV)
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

FAILURE_CLASSES = ("overloaded", "invalid_input", "cancelled", "internal", "transport", "timeout", "protocol",
                   "other")
TURN_KINDS = ("speech", "text")
# (field of TurnSample, label in the printed table)
METRICS: tuple[tuple[str, str], ...] = (
    ("time_to_first_text_s", "time to first text"),
    ("time_to_first_audio_s", "first audio chunk (TTFA)"),
    ("time_to_first_frame_s", "first video frame (TTFF)"),
    ("max_audio_gap_s", "largest audio gap"),
    ("total_s", "turn total"),
)
PERCENTILES = (50, 95, 99)

_CONNECTION_HINTS = ("failed to connect", "connection refused", "connection reset", "socket closed", "broken pipe",
                     "dns resolution failed", "name resolution", "no route to host", "network is unreachable",
                     "connections to all backends failing", "handshake failed", "goaway", "stream removed",
                     "rst_stream", "end of tcp stream", "keepalive", "no longer in valid state",
                     "cannot reach triton")
_OVERLOAD_HINTS = ("server busy", "exceeds maximum queue size", "max queue size", "too many requests",
                   "resource exhausted", "rate limit")


# ---------------------------------------------------------------- one turn

@dataclass
class TurnSample:
    """One user turn as the load generator saw it (seconds, client clock, from just before sending)."""

    started_at: float  # wall clock (epoch seconds) when the turn was sent
    user: int  # locust user number (0, 1, ...)
    session: int  # conversation number of that user
    turn: int  # turn number in the conversation (0, 1, ...)
    kind: str  # "speech" or "text"
    ok: bool
    failure_class: str = ""  # one of FAILURE_CLASSES when not ok
    error: str = ""  # the error message, verbatim (first 500 characters)
    request_id: str = ""
    time_to_first_text_s: float | None = None
    time_to_first_audio_s: float | None = None  # TTFA
    time_to_first_frame_s: float | None = None  # TTFF
    max_audio_gap_s: float | None = None  # largest time between two audio chunks' arrivals
    underrun: bool = False  # playback started at the first chunk would stall
    underrun_count: int = 0
    stall_s: float = 0.0
    total_s: float | None = None  # to the done event; for a failed turn: to the failure
    audio_s: float | None = None  # reply audio, seconds
    frames: int = 0
    real_time_factor: float | None = None  # total_s / audio_s

    @classmethod
    def from_result(cls, result: Any, *, started_at: float, user: int, session: int, turn: int,
                    kind: str) -> "TurnSample":
        """A completed turn from a `client.turns.TurnResult`."""
        return cls(started_at=started_at, user=user, session=session, turn=turn, kind=kind, ok=True,
                   request_id=result.request_id, time_to_first_text_s=result.time_to_first_text_s,
                   time_to_first_audio_s=result.time_to_first_audio_s,
                   time_to_first_frame_s=result.time_to_first_frame_s, max_audio_gap_s=result.max_audio_gap_s,
                   underrun=result.underrun, underrun_count=result.underrun_count, stall_s=result.stall_s,
                   total_s=result.total_s, audio_s=result.audio_s, frames=len(result.frames),
                   real_time_factor=result.real_time_factor)

    @classmethod
    def failed(cls, exc: BaseException | str, *, started_at: float, user: int, session: int, turn: int,
               kind: str, total_s: float | None = None, partial: Any = None, request_id: str = "") -> "TurnSample":
        """A failed turn; `partial` (a TurnResult of the events received before the failure) fills what it can."""
        failure = classify(exc) if isinstance(exc, BaseException) else classify_message(exc)
        s = cls(started_at=started_at, user=user, session=session, turn=turn, kind=kind, ok=False,
                failure_class=failure, error=str(exc)[:500], request_id=request_id, total_s=total_s)
        if partial is not None:
            s.time_to_first_text_s = partial.time_to_first_text_s
            s.time_to_first_audio_s = partial.time_to_first_audio_s
            s.time_to_first_frame_s = partial.time_to_first_frame_s
            s.max_audio_gap_s = partial.max_audio_gap_s
            s.underrun, s.underrun_count, s.stall_s = partial.underrun, partial.underrun_count, partial.stall_s
            s.audio_s, s.frames = partial.audio_s, len(partial.frames)
        return s


TURN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TurnSample))
_FIELD_TYPES = {f.name: f.type for f in fields(TurnSample)}


def rounded(obj: Any, digits: int = 4) -> Any:
    """obj (dicts, lists, numbers) with every float rounded: for result files, where digits below
    0.1 ms are noise."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def parse_think(value: str) -> tuple[float, float]:
    """Think time "MIN,MAX" seconds: "1,3" -> (1.0, 3.0); "2" -> (2.0, 2.0)."""
    try:
        parts = [float(p) for p in str(value).replace(":", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or parts[0] < 0 or parts[1] < parts[0]:
        raise ValueError(f"think time wants MIN,MAX seconds with 0 <= MIN <= MAX, got {value!r}")
    return parts[0], parts[1]


# ---------------------------------------------------------------- failure classes

def _status_name(status: Any) -> str:
    """"StatusCode.UNAVAILABLE", "UNAVAILABLE", grpc.StatusCode.UNAVAILABLE -> "UNAVAILABLE"."""
    if status is None:
        return ""
    name = getattr(status, "name", None) or str(status)
    return name.rsplit(".", 1)[-1].strip().upper()


def classify_message(message: str | None, status: Any = None) -> str:
    """The failure class of a server/transport error from its message and (when known) gRPC status.

    On a gRPC stream opened without the `triton_grpc_error` header Triton reports a
    request's error as a message only (no status), so the orchestrator's message
    prefixes decide first; the status decides when the message is not ours.
    """
    msg = (message or "").strip().lower()
    st = _status_name(status)
    if msg.startswith("invalid input:"):
        return "invalid_input"
    if any(h in msg for h in _OVERLOAD_HINTS):
        return "overloaded"
    if msg.startswith("turn cancelled"):
        return "cancelled"
    if msg.startswith("internal error:"):
        return "internal"
    if st == "INVALID_ARGUMENT":
        return "invalid_input"
    if st == "DEADLINE_EXCEEDED" or "deadline exceeded" in msg or "timed out" in msg:
        return "timeout"
    if any(h in msg for h in _CONNECTION_HINTS):
        return "transport"
    if st in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"):
        return "overloaded"
    if st == "CANCELLED":
        return "cancelled"
    if st == "INTERNAL":
        return "internal"
    return "other"


def classify(exc: BaseException) -> str:
    """The failure class of an exception raised by a turn (client.sdk errors, tritonclient, OS errors)."""
    from client.sdk import ConnectionFailed, ProtocolError, ServerError, TurnTimeout

    if isinstance(exc, (TurnTimeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionFailed):
        return "transport"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, ServerError):
        return classify_message(exc.message, exc.status)
    try:
        from tritonclient.utils import InferenceServerException
    except ImportError:  # pragma: no cover - tritonclient is a hard dependency
        InferenceServerException = ()  # type: ignore[assignment]
    if InferenceServerException and isinstance(exc, InferenceServerException):
        return classify_message(exc.message(), exc.status())
    if isinstance(exc, (ConnectionError, EOFError)):
        return "transport"
    return "other"


# ---------------------------------------------------------------- percentiles

def percentiles(values: Iterable[float | None], qs: Sequence[float] = PERCENTILES) -> dict[str, float | int | None]:
    """Exact percentiles (linear interpolation between closest ranks), plus count/min/max/mean.

    None and NaN are left out; with no value left every figure is None (count 0).
    """
    a = np.asarray([float(v) for v in values if v is not None and not math.isnan(float(v))], dtype=np.float64)
    out: dict[str, float | int | None] = {"count": int(a.size)}
    if a.size == 0:
        out.update({f"p{q:g}": None for q in qs})
        out.update(min=None, max=None, mean=None)
        return out
    for q, v in zip(qs, np.percentile(a, list(qs), method="linear")):
        out[f"p{q:g}"] = float(v)
    out.update(min=float(a.min()), max=float(a.max()), mean=float(a.mean()))
    return out


def _group(samples: Sequence[TurnSample]) -> dict[str, Any]:
    done = [s for s in samples if s.ok]
    failures = {c: 0 for c in FAILURE_CLASSES}
    for s in samples:
        if not s.ok:
            failures[s.failure_class if s.failure_class in failures else "other"] += 1
    return {
        "turns": len(samples),
        "completed": len(done),
        "failed": len(samples) - len(done),
        "failures": failures,
        "underrun_turns": sum(1 for s in done if s.underrun),
        "metrics": {name: percentiles(getattr(s, name) for s in done) for name, _ in METRICS}
        | {"real_time_factor": percentiles(s.real_time_factor for s in done)},
    }


def summarize(samples: Sequence[TurnSample], **extra: Any) -> dict[str, Any]:
    """Everything `<prefix>_summary.json` holds; `extra` (e.g. users, duration) is stored under "run"."""
    summary = _group(samples)
    summary["by_kind"] = {k: _group([s for s in samples if s.kind == k]) for k in TURN_KINDS}
    users: dict[str, dict[str, int]] = {}
    for s in sorted(samples, key=lambda s: s.user):
        u = users.setdefault(str(s.user), {"turns": 0, "completed": 0, "failed": 0})
        u["turns"] += 1
        u["completed" if s.ok else "failed"] += 1
    summary["users"] = users
    if samples:
        t0 = min(s.started_at for s in samples)
        t1 = max(s.started_at + (s.total_s or 0.0) for s in samples)
        summary["window_s"] = t1 - t0
        summary["completed_turns_per_s"] = summary["completed"] / (t1 - t0) if t1 > t0 else None
    else:
        summary["window_s"] = None
        summary["completed_turns_per_s"] = None
    summary["percentile_method"] = "numpy.percentile, linear interpolation, completed turns only"
    summary["generated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if extra:
        summary["run"] = dict(extra)
    return summary


# ---------------------------------------------------------------- files

def turns_csv_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}_turns.csv")


def summary_json_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}_summary.json")


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return f"{v:.6f}"
    return v


def write_reports(prefix: str | os.PathLike, samples: Sequence[TurnSample], **extra: Any) -> dict[str, Any]:
    """Write `<prefix>_turns.csv` and `<prefix>_summary.json`; return the summary."""
    csv_path, json_path = turns_csv_path(prefix), summary_json_path(prefix)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TURN_FIELDS)
        for s in sorted(samples, key=lambda s: s.started_at):
            d = asdict(s)
            w.writerow([_cell(d[k]) for k in TURN_FIELDS])
    summary = summarize(samples, **extra)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _parse(name: str, raw: str) -> Any:
    typ = str(_FIELD_TYPES[name])
    if raw == "":
        return "" if typ == "str" else (False if typ == "bool" else (0 if typ == "int" else None))
    if typ == "bool":
        return raw not in ("0", "False", "false")
    if typ == "int":
        return int(raw)
    if typ == "str":
        return raw
    return float(raw)


def read_turns_csv(path: str | os.PathLike) -> list[TurnSample]:
    """The samples of a `<prefix>_turns.csv` (what `write_reports` wrote)."""
    with open(path, newline="") as f:
        return [TurnSample(**{k: _parse(k, row[k]) for k in TURN_FIELDS if k in row}) for row in csv.DictReader(f)]


def sample_to_dict(s: TurnSample) -> dict[str, Any]:
    return asdict(s)


def sample_from_dict(d: Mapping[str, Any]) -> TurnSample:
    return TurnSample(**{k: d[k] for k in TURN_FIELDS if k in d})


# ---------------------------------------------------------------- the printed table

def _s(v: float | None) -> str:
    return "       -" if v is None else f"{v:8.3f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a table: p50/p95/p99 (seconds) of each metric, turns, failures by class."""
    lines = [f"{'completed turns, seconds':<26}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'n':>6}"]
    for name, label in METRICS:
        m = summary["metrics"][name]
        lines.append(f"{label:<26} {_s(m['p50'])} {_s(m['p95'])} {_s(m['p99'])} {_s(m['max'])}{m['count']:>6}")
    for kind in TURN_KINDS:
        g = summary.get("by_kind", {}).get(kind)
        if not g or not g["turns"]:
            continue
        for name, label in (("time_to_first_audio_s", "TTFA"), ("total_s", "total")):
            m = g["metrics"][name]
            lines.append(f"{f'  {kind}: {label}':<26} {_s(m['p50'])} {_s(m['p95'])} {_s(m['p99'])} {_s(m['max'])}"
                         f"{m['count']:>6}")
    failures = ", ".join(f"{c} {n}" for c, n in summary["failures"].items() if n) or "none"
    lines.append(f"turns: {summary['turns']} sent, {summary['completed']} completed, {summary['failed']} failed"
                 f" ({failures})")
    lines.append(f"playback would underrun in {summary['underrun_turns']} of {summary['completed']} completed turns")
    users = summary.get("users") or {}
    if users:
        lines.append("completed per user: " + ", ".join(f"{u}: {v['completed']}" for u, v in users.items()))
    rate = summary.get("completed_turns_per_s")
    if rate is not None:
        lines.append(f"throughput: {rate:.2f} completed turns/s over {summary['window_s']:.1f} s")
    return "\n".join(lines)
