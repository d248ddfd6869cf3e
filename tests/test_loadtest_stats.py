"""Load-test statistics without a server: exact percentiles, failure classes, reports, perf_analyzer runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from client.sdk import ConnectionFailed, ProtocolError, ServerError, TurnTimeout
from loadtests import perf_analyzer as pa
from loadtests import stats

# ---------------------------------------------------------------- percentiles

def test_percentiles_are_exact_linear_interpolation():
    p = stats.percentiles(range(1, 11))  # 1..10
    assert p["count"] == 10
    assert p["p50"] == pytest.approx(5.5)  # (n-1)*q = 4.5 -> between 5 and 6
    assert p["p95"] == pytest.approx(9.55)  # 8.55 -> 9 + 0.55
    assert p["p99"] == pytest.approx(9.91)
    assert (p["min"], p["max"], p["mean"]) == (1.0, 10.0, 5.5)


def test_percentiles_of_one_value_and_unsorted_input():
    assert stats.percentiles([0.25]) | {} == {"count": 1, "p50": 0.25, "p95": 0.25, "p99": 0.25,
                                             "min": 0.25, "max": 0.25, "mean": 0.25}
    data = [3.0, 0.1, 2.0, 0.4, 1.0]
    p = stats.percentiles(data)
    assert p["p50"] == 1.0
    assert p["p95"] == pytest.approx(2.0 + 0.8 * (3.0 - 2.0))  # rank 3.8
    for q in (50, 95, 99):
        assert p[f"p{q}"] == pytest.approx(float(np.percentile(data, q)))


def test_percentiles_skip_missing_values_and_handle_none_at_all():
    p = stats.percentiles([None, 1.0, float("nan"), 3.0])
    assert p["count"] == 2 and p["p50"] == 2.0
    empty = stats.percentiles([None, None])
    assert empty["count"] == 0 and empty["p50"] is None and empty["p99"] is None and empty["max"] is None


# ---------------------------------------------------------------- failure classes

@pytest.mark.parametrize("message, status, expected", [
    ("invalid input: unknown avatar id 'x'", None, "invalid_input"),
    ("invalid input: audio is 31.0 s long; the limit is 30 s", "StatusCode.INVALID_ARGUMENT", "invalid_input"),
    ("server busy: 32 turns in flight (limit 32); retry later", None, "overloaded"),
    ("server busy: 32 turns in flight (limit 32); retry later", "StatusCode.UNAVAILABLE", "overloaded"),
    ("Exceeds maximum queue size", "StatusCode.UNAVAILABLE", "overloaded"),
    ("something the server would not say", "StatusCode.UNAVAILABLE", "overloaded"),
    ("turn cancelled by the client", None, "cancelled"),
    ("Locally cancelled by application!", "StatusCode.CANCELLED", "cancelled"),
    ("internal error: StageError: llm: out of memory", None, "internal"),
    ("internal error: RuntimeError: boom", "StatusCode.INTERNAL", "internal"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused",
     "StatusCode.UNAVAILABLE", "transport"),
    ("Socket closed", "StatusCode.UNAVAILABLE", "transport"),
    ("Stream removed (recvmsg:Connection reset by peer (104))", None, "transport"),
    ("The stream is no longer in valid state, the error detail is reported through provided callback.", None,
     "transport"),
    ("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", "timeout"),
    ("Request for unknown model: 'talking_head' is not found", None, "other"),
    ("", None, "other"),
])
def test_classify_message(message, status, expected):
    assert stats.classify_message(message, status) == expected


def test_classify_message_prefers_the_orchestrator_prefix_over_the_status():
    # "invalid input:" decides even if a proxy rewrote the status
    assert stats.classify_message("invalid input: text is empty", "StatusCode.UNAVAILABLE") == "invalid_input"
    assert stats.classify_message("internal error: x", "UNAVAILABLE") == "internal"


def test_classify_exceptions():
    assert stats.classify(TurnTimeout("turn did not finish within 1 s")) == "timeout"
    assert stats.classify(ConnectionFailed("localhost:1", "connection refused")) == "transport"
    assert stats.classify(ProtocolError("turn ended without a 'done' event")) == "protocol"
    assert stats.classify(ServerError("invalid input: bad", status=None)) == "invalid_input"
    assert stats.classify(ServerError("anything", status="StatusCode.UNAVAILABLE")) == "overloaded"
    assert stats.classify(ServerError("turn cancelled by the client")) == "cancelled"
    assert stats.classify(InferenceServerException("internal error: E", status="StatusCode.INTERNAL")) == "internal"
    assert stats.classify(ConnectionResetError("reset")) == "transport"
    assert stats.classify(TimeoutError()) == "timeout"
    assert stats.classify(KeyError("x")) == "other"


def test_parse_think():
    assert stats.parse_think("1,3") == (1.0, 3.0)
    assert stats.parse_think("0.5") == (0.5, 0.5)
    assert stats.parse_think("0:2") == (0.0, 2.0)
    for bad in ("3,1", "-1,2", "a,b", "1,2,3", ""):
        with pytest.raises(ValueError):
            stats.parse_think(bad)


# ---------------------------------------------------------------- summary and files

def _sample(i: int, *, ok: bool = True, kind: str = "text", user: int = 0, **kw) -> stats.TurnSample:
    base = dict(started_at=1000.0 + i, user=user, session=0, turn=i, kind=kind, ok=ok, request_id=f"r{i}")
    if ok:
        base.update(time_to_first_text_s=0.01 * (i + 1), time_to_first_audio_s=0.1 * (i + 1),
                    time_to_first_frame_s=0.2 * (i + 1), max_audio_gap_s=0.05, total_s=1.0 + i, audio_s=5.0,
                    frames=125, real_time_factor=(1.0 + i) / 5.0)
    base.update(kw)
    return stats.TurnSample(**base)


def test_summarize_counts_failures_by_class_and_uses_completed_turns_only():
    samples = [_sample(i, kind="speech" if i % 2 else "text", user=i % 2) for i in range(4)]
    samples += [stats.TurnSample.failed(ServerError("server busy: 32 turns"), started_at=2000.0, user=1, session=1,
                                        turn=0, kind="text", total_s=0.002),
                stats.TurnSample.failed(TurnTimeout("slow"), started_at=2001.0, user=2, session=0, turn=0,
                                        kind="speech", total_s=120.0),
                stats.TurnSample.failed("invalid input: no", started_at=2002.0, user=2, session=0, turn=1,
                                        kind="text")]
    samples[1].underrun, samples[1].underrun_count = True, 2
    s = stats.summarize(samples, users=3)
    assert (s["turns"], s["completed"], s["failed"]) == (7, 4, 3)
    assert set(s["failures"]) == set(stats.FAILURE_CLASSES)
    assert {k: v for k, v in s["failures"].items() if v} == {"overloaded": 1, "timeout": 1, "invalid_input": 1}
    assert s["underrun_turns"] == 1
    total = s["metrics"]["total_s"]
    assert total["count"] == 4 and total["max"] == 4.0  # the 120 s timeout is not a latency
    assert total["p50"] == pytest.approx(2.5)
    assert s["metrics"]["time_to_first_audio_s"]["p95"] == pytest.approx(float(np.percentile([.1, .2, .3, .4], 95)))
    assert s["by_kind"]["speech"]["completed"] == 2 and s["by_kind"]["speech"]["failures"]["timeout"] == 1
    assert s["by_kind"]["text"]["failed"] == 2
    assert s["users"] == {"0": {"turns": 2, "completed": 2, "failed": 0},
                          "1": {"turns": 3, "completed": 2, "failed": 1},
                          "2": {"turns": 2, "completed": 0, "failed": 2}}
    assert s["run"] == {"users": 3}
    table = stats.format_summary(s)
    assert "first audio chunk (TTFA)" in table and "overloaded 1" in table and "7 sent, 4 completed" in table


def test_summary_of_nothing():
    s = stats.summarize([])
    assert (s["turns"], s["completed"], s["failed"]) == (0, 0, 0)
    assert s["metrics"]["total_s"]["p50"] is None
    assert "0 sent" in stats.format_summary(s)


def test_reports_round_trip(tmp_path):
    samples = [_sample(0), _sample(1, kind="speech", underrun=True, underrun_count=1, stall_s=0.25),
               stats.TurnSample.failed(ConnectionFailed("h:1", "Connection refused"), started_at=999.0, user=3,
                                       session=2, turn=1, kind="speech", total_s=0.5)]
    summary = stats.write_reports(tmp_path / "run", samples)
    csv_path, json_path = tmp_path / "run_turns.csv", tmp_path / "run_summary.json"
    assert csv_path.exists() and json_path.exists()
    assert json.loads(json_path.read_text())["failures"]["transport"] == 1 == summary["failures"]["transport"]
    header = csv_path.read_text().splitlines()[0].split(",")
    assert tuple(header) == stats.TURN_FIELDS
    for name in ("time_to_first_text_s", "time_to_first_audio_s", "time_to_first_frame_s", "max_audio_gap_s",
                 "underrun", "total_s", "failure_class"):
        assert name in header
    back = stats.read_turns_csv(csv_path)
    assert [s.request_id for s in back] == ["", "r0", "r1"]  # sorted by start time
    failed, first, second = back
    assert not failed.ok and failed.failure_class == "transport" and failed.time_to_first_audio_s is None
    assert first.ok and first.time_to_first_audio_s == pytest.approx(0.1) and first.underrun is False
    assert second.underrun is True and second.underrun_count == 1 and second.stall_s == pytest.approx(0.25)
    assert stats.sample_from_dict(stats.sample_to_dict(second)) == second


# ---------------------------------------------------------------- perf_analyzer helpers

def test_perf_analyzer_input_data():
    d = pa.input_data("00112233aabbccdd", texts=["Hi"], speech=[np.array([0.0, 0.5, -0.5], np.float32)],
                      options='{"video": false}')
    assert d["data"][0] == {"text": ["Hi"], "avatar_id": ["00112233aabbccdd"], "options": ['{"video": false}']}
    speech = d["data"][1]
    assert speech["audio"] == {"content": [0.0, 0.5, -0.5], "shape": [3]}
    assert speech["sample_rate"] == [16000] and speech["avatar_id"] == ["00112233aabbccdd"]


def test_concurrency_levels_and_command():
    assert pa.concurrency_levels("1:4") == [1, 2, 3, 4]
    assert pa.concurrency_levels("2:8:3") == [2, 5, 8]
    assert pa.concurrency_levels("3") == [3]
    with pytest.raises(ValueError):
        pa.concurrency_levels("4:1")
    from pathlib import Path

    cmd = pa.perf_analyzer_command(Path("/x/perf_analyzer"), host="h:1", input_file=Path("i.json"),
                                   csv_file=Path("o.csv"), profile_file=Path("p.json"), concurrency_range="1:1",
                                   request_count=3)
    assert cmd[:8] == ["/x/perf_analyzer", "-m", "talking_head", "-i", "grpc", "--streaming", "-u", "h:1"]
    assert "--profile-export-file" in cmd and cmd[cmd.index("--request-count") + 1] == "3"
    assert "--measurement-interval" not in cmd


def test_locust_command_is_an_argument_list(tmp_path):
    from loadtests import run

    args = run.parse_args(["--users", "3", "--spawn-rate", "1.5", "--duration", "20s", "--turns", "2",
                           "--think", "0.5,1", "--out", str(tmp_path / "load"), "--avatar", "00112233aabbccdd"])
    cmd = run.locust_command(args, "localhost:18001")
    assert cmd[1:4] == ["-m", "locust", "-f"] and "--headless" in cmd
    pairs = dict(zip(cmd, cmd[1:]))
    assert pairs["-u"] == "3" and pairs["-r"] == "1.5" and pairs["-t"] == "20s" and pairs["--host"] == "localhost:18001"
    assert pairs["--csv"] == str(tmp_path / "load") and pairs["--html"] == str(tmp_path / "load") + ".html"
    assert pairs["--turns"] == "2" and pairs["--think"] == "0.5,1" and pairs["--avatar"] == "00112233aabbccdd"
    with pytest.raises(SystemExit):
        run.parse_args(["--think", "3,1"])


def test_perf_analyzer_output_is_bounded():
    # 400 MB a level, 100 MB a turn: 10 requests become 4; 5 sessions would need 500 MB: not run
    assert pa.requests_that_fit(10, 1, 400.0, 100.0) == 4
    assert pa.requests_that_fit(10, 4, 400.0, 100.0) == 4
    assert pa.requests_that_fit(10, 5, 400.0, 100.0) == 0
    assert pa.requests_that_fit(10, 1, 400.0, 2.0) == 10
    assert pa.requests_that_fit(10, 4, 0, 1e9) == 10  # 0: no cap
    with pytest.raises(SystemExit):  # time windows send an unbounded number of requests
        pa.parse_args(["--request-count", "0"])
    assert pa.parse_args(["--request-count", "0", "--max-profile-mb", "0"]).max_profile_mb == 0


def test_perf_analyzer_finds_the_admin_key(tmp_path, monkeypatch):
    monkeypatch.setattr(pa, "LOCAL_ADMIN_KEY", tmp_path / "none")
    monkeypatch.delenv("TRITON_ADMIN_KEY", raising=False)
    assert pa.resolve_admin_key(pa.parse_args([])) is None
    monkeypatch.setenv("TRITON_ADMIN_KEY", "from-the-env-0123456789")  # the deployments' variable is the default
    assert pa.resolve_admin_key(pa.parse_args([])) == "from-the-env-0123456789"
    (tmp_path / "key").write_text("from-a-file-0123456789\n")
    assert pa.resolve_admin_key(pa.parse_args(["--admin-key-file", str(tmp_path / "key")])) == "from-a-file-0123456789"
    monkeypatch.delenv("TRITON_ADMIN_KEY")
    monkeypatch.setattr(pa, "LOCAL_ADMIN_KEY", tmp_path / "key")  # the local server's build/triton/admin-key
    assert pa.resolve_admin_key(pa.parse_args([])) == "from-a-file-0123456789"
