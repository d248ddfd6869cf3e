"""Load tests against the session's real tritonserver: a short headless locust run and a perf_analyzer run.

Both reuse tests/conftest.py's `server` (on free ports); the whole file takes about
40-60 s on 2 cores (locust 20 s plus start-up and the last turns; perf_analyzer ~5 s).
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from loadtests import perf_analyzer as pa
from loadtests import run, stats

pytestmark = pytest.mark.server

USERS = 4


def test_locust_conversations_complete_without_failures(server, tmp_path, capsys):
    out = tmp_path / "load"
    code = run.main(["--host", server.options.grpc_url, "--users", str(USERS), "--spawn-rate", str(USERS),
                     "--duration", "20s", "--turns", "2", "--speech-ratio", "0.5", "--think", "0.2,0.5",
                     "--turn-timeout", "60", "--stop-timeout", "60", "--out", str(out), "--fail-on-error"])
    printed = capsys.readouterr().out
    assert code == 0, printed

    summary = json.loads(stats.summary_json_path(out).read_text())
    assert summary["failed"] == 0, summary["failures"]
    assert set(summary["failures"]) == set(stats.FAILURE_CLASSES)
    assert summary["completed"] >= USERS
    assert len(summary["users"]) == USERS
    assert all(u["completed"] >= 1 for u in summary["users"].values()), summary["users"]
    for name, _ in stats.METRICS:
        m = summary["metrics"][name]
        assert m["count"] >= 1 and 0 <= m["p50"] <= m["p95"] <= m["p99"] <= m["max"], (name, m)
    assert summary["metrics"]["time_to_first_audio_s"]["p50"] <= summary["metrics"]["total_s"]["p50"]
    assert summary["by_kind"]["speech"]["turns"] + summary["by_kind"]["text"]["turns"] == summary["turns"]

    with open(stats.turns_csv_path(out), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["turns"]
    assert set(stats.TURN_FIELDS) <= set(rows[0])
    for row in rows:
        assert row["ok"] == "1" and row["failure_class"] == "" and row["kind"] in stats.TURN_KINDS
        assert float(row["time_to_first_text_s"]) <= float(row["total_s"])
        assert float(row["time_to_first_audio_s"]) > 0 and float(row["time_to_first_frame_s"]) > 0
        assert row["max_audio_gap_s"] != "" and row["underrun"] in ("0", "1")

    # locust's own reports, beside ours
    assert (tmp_path / "load.html").stat().st_size > 0
    with open(tmp_path / "load_stats.csv", newline="") as f:
        locust_rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    turns = sum(int(r["Request Count"]) for (t, _), r in locust_rows.items() if t == "turn")
    assert turns == summary["turns"]
    # time to first audio / first frame are rows of their own (web UI, CSV, HTML), one per completed turn
    for kind, metric in (("TTFA", "time_to_first_audio_s"), ("TTFF", "time_to_first_frame_s")):
        rows_of = {n: r for (t, n), r in locust_rows.items() if t == kind}
        assert set(rows_of) and set(rows_of) <= set(stats.TURN_KINDS), locust_rows.keys()
        assert sum(int(r["Request Count"]) for r in rows_of.values()) == summary["metrics"][metric]["count"]
        assert all(0 < float(r["Median Response Time"]) <= float(r["Max Response Time"]) for r in rows_of.values())
    assert all(int(r["Failure Count"]) == 0 for r in locust_rows.values())
    assert "first audio chunk (TTFA)" in printed and "0 failed" in printed


def test_perf_analyzer_refuses_to_start_without_the_admin_key(server):
    with pytest.raises(SystemExit, match="needs the server's admin key"):
        pa.check_admin_access(server.options.grpc_url, None)
    with pytest.raises(SystemExit, match="the key given was refused"):
        pa.check_admin_access(server.options.grpc_url, "not-the-key-0123456789")
    pa.check_admin_access(server.options.grpc_url, server.options.admin_key)


def test_perf_analyzer_time_to_first_response(server, avatar, tmp_path, monkeypatch):
    try:
        pa.perf_analyzer_env(pa.find_perf_analyzer(), tmp_path / "libs")
    except pa.PerfAnalyzerUnavailable as e:
        pytest.skip(f"perf_analyzer cannot run here: {e}")
    out = tmp_path / "perf"
    monkeypatch.setenv("PA_ADMIN_KEY", server.options.admin_key)  # perf_analyzer reads the model config
    code = pa.main(["--host", server.options.grpc_url, "--avatar", avatar.id, "--concurrency-range", "1",
                    "--request-count", "3", "--out", str(out), "--timeout", "120", "--admin-key-env", "PA_ADMIN_KEY"])
    assert code == 0
    summary = json.loads((tmp_path / "perf_pa_summary.json").read_text())
    (row,) = summary["experiments"]
    assert (row["mode"], row["value"], row["answered"]) == ("concurrency", 1.0, 3)
    ttfr = row["time_to_first_response_s"]
    assert ttfr["count"] == 3 and 0 < ttfr["p50"] <= ttfr["p95"] <= row["time_to_last_response_s"]["p50"] * 3
    assert row["time_to_first_audio_s"]["count"] == 3 and row["time_to_first_audio_s"]["p50"] >= ttfr["p50"]
    assert row["responses_per_request"]["min"] > 3  # text, audio, video ... done, empty final
    assert (tmp_path / "perf_pa.csv").exists()
    assert not (tmp_path / "perf_profile.json").exists()  # large; kept only with --keep-profile


def test_a_profile_export_cut_short_is_never_taken_for_a_result(server, avatar, tmp_path, monkeypatch, capsys):
    """perf_analyzer 2.51 stops writing its export where a response's absent FP32 output reads as NaN, and exits 0.

    Forced here: tests/pa_nan_new.c makes every such read NaN (loadtests/pa_profile.py tells the whole story).
    """
    try:
        pa.perf_analyzer_env(pa.find_perf_analyzer(), tmp_path / "libs")
    except pa.PerfAnalyzerUnavailable as e:
        pytest.skip(f"perf_analyzer cannot run here: {e}")
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for tests/pa_nan_new.c")
    shim = tmp_path / "libpa_nan_new.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(shim), str(Path(__file__).with_name("pa_nan_new.c"))],
                   check=True)
    monkeypatch.setenv("PA_ADMIN_KEY", server.options.admin_key)
    monkeypatch.setenv("LD_PRELOAD", str(shim))
    code = pa.main(["--host", server.options.grpc_url, "--avatar", avatar.id, "--concurrency-range", "1",
                    "--request-count", "1", "--retries", "1", "--out", str(tmp_path / "perf"), "--timeout", "120",
                    "--admin-key-env", "PA_ADMIN_KEY"])
    err = capsys.readouterr().err
    assert code != 0, err
    assert err.count("perf_analyzer (exit code 0) wrote an empty profile export, or none") == 2, err
    assert "trying again" in err and not (tmp_path / "perf_pa_summary.json").exists()
