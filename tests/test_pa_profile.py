"""perf_analyzer's profile export without a server: a full parse, an empty file, a cut export and the reruns."""
from __future__ import annotations

import json
import math
import sys

import pytest

from loadtests import pa_profile
from loadtests.perf_analyzer import run_level

T0 = 1_700_000_000_000_000_000


def _event(kind: str, **data) -> str:
    return json.dumps({"type": kind, "turn_id": "t", "t_ms": 1.0, **data}, separators=(",", ":"))


def _request(ts: int, kinds: list[str], step: int) -> dict:
    return {"timestamp": ts, "request_inputs": {"text": 'say "timestamp":1 "version":"x" and "event":"x"',
                                                "avatar_id": "a"},
            "response_timestamps": [ts + (k + 1) * step for k in range(len(kinds))],
            "response_outputs": [{"frame": list(range(50)) if k == "video" else 0,
                                  "event": _event(k, reply='he said "hi" \\ "type":"audio"') if k else "",
                                  "audio_chunk": [0.1, 0.2] if k == "audio" else 4.2e-22} for k in kinds]}


def _export() -> dict:
    return {"experiments": [
        {"experiment": {"mode": "concurrency", "value": 1},
         "requests": [_request(T0, ["text", "text", "audio", "video", "done", ""], 1_000_000),
                      _request(T0 + 10**9, ["transcript", "text", "audio", "audio", "video", "done", ""], 2_000_000)],
         "window_boundaries": [T0, T0 + 2 * 10**9]},
        {"experiment": {"mode": "concurrency", "value": 2},
         "requests": [_request(T0 + 3 * 10**9, ["text", "done", ""], 5_000_000)],
         "window_boundaries": [T0, T0 + 4 * 10**9]}],
        "version": "2.51.0", "service_kind": "triton", "endpoint": ""}


def _text(export: dict) -> str:
    return json.dumps(export, separators=(",", ":"))


def test_read_profile_matches_a_full_json_parse(tmp_path):
    export = _export()
    path = tmp_path / "profile.json"
    path.write_text(_text(export))
    profile = pa_profile.read_profile(path)
    assert profile.complete and profile.requests == 3 and profile.size == path.stat().st_size
    exps = profile.experiments
    assert [(e.mode, e.value, len(e.requests)) for e in exps] == [("concurrency", 1.0, 2), ("concurrency", 2.0, 1)]
    for e, raw in zip(exps, export["experiments"]):
        for r, want in zip(e.requests, raw["requests"]):
            assert r.sent_ns == want["timestamp"]
            assert r.responses_ns == want["response_timestamps"]
            assert r.events == [json.loads(o["event"])["type"] if o["event"] else "" for o in want["response_outputs"]]
    first = exps[0].requests[0]
    assert first.first_response_s == pytest.approx(0.001) and first.first_audio_s == pytest.approx(0.003)
    assert first.first_frame_s == pytest.approx(0.004) and first.last_response_s == pytest.approx(0.006)
    assert exps[0].requests[1].first_audio_s == pytest.approx(0.006)
    rows = pa_profile.summarize_profile(exps)
    assert rows[0]["answered"] == 2 and rows[0]["time_to_first_response_s"]["p50"] == pytest.approx(0.0015)
    assert rows[1]["time_to_first_audio_s"]["count"] == 0 and rows[1]["time_to_first_audio_s"]["p50"] is None
    assert math.isclose(rows[1]["time_to_last_response_s"]["p99"], 0.015)
    assert "first response" in pa_profile.format_profile_summary(rows)


def test_read_profile_of_an_empty_file(tmp_path):
    (tmp_path / "p.json").write_bytes(b"")
    profile = pa_profile.read_profile(tmp_path / "p.json")
    assert (profile.experiments, profile.complete, profile.requests) == ([], False, 0)
    assert profile.describe() == "an empty profile export, or none"


@pytest.mark.parametrize("request_index", [1, 2])
def test_a_cut_export_is_seen_and_the_request_being_written_dropped(tmp_path, request_index):
    """As perf_analyzer 2.51 leaves it when a garbage `audio_chunk` reads as NaN: mid-request, no closing keys."""
    text = _text(_export())
    starts = [i for i in range(len(text)) if text.startswith('{"timestamp":', i)]
    cut = text.index('"audio_chunk":', starts[request_index]) + len('"audio_chunk":')
    path = tmp_path / "profile.json"
    path.write_text(text[:cut])
    profile = pa_profile.read_profile(path)
    assert not profile.complete and profile.requests == request_index
    assert [r.sent_ns for e in profile.experiments for r in e.requests] == [T0, T0 + 10**9][:request_index]
    assert profile.experiments[0].requests[0].events == ["text", "text", "audio", "video", "done", ""]
    assert f"cut at byte {cut} ({request_index} whole requests before the cut)" in profile.describe()


STAND_IN = """import sys, pathlib
state, out, parts = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
tries = int(state.read_text()) if state.exists() else 0
state.write_text(str(tries + 1))
out.write_text(pathlib.Path(parts[min(tries, len(parts) - 1)]).read_text())
"""


def _stand_in(tmp_path, *exports: str) -> tuple[list[str], object]:
    """A stand-in for perf_analyzer that writes the given exports on its successive runs (its cut is not on call)."""
    script = tmp_path / "pa_stand_in.py"
    script.write_text(STAND_IN)
    files = []
    for i, text in enumerate(exports):
        files.append(tmp_path / f"export{i}.json")
        files[-1].write_text(text)
    profile_file = tmp_path / "profile.json"
    return [sys.executable, str(script), str(tmp_path / "tries"), str(profile_file), *map(str, files)], profile_file


def test_a_cut_export_is_run_again_until_whole(tmp_path, capsys):
    whole = _text(_export())
    cut = whole[:whole.index('"audio_chunk":', whole.index('{"timestamp":', 10)) + 5]
    cmd, profile_file = _stand_in(tmp_path, cut, whole)
    profile, codes = run_level(cmd, {}, profile_file, tmp_path / "pa.csv", retries=2, timeout=60, shown="pa")
    assert codes == [0, 0] and profile.complete and profile.requests == 3
    err = capsys.readouterr().err
    assert "exit code 0) wrote a profile export cut at byte" in err and "trying again" in err


def test_when_every_try_is_cut_the_whole_requests_are_returned(tmp_path, capsys):
    whole = _text(_export())
    cut = whole[:whole.index('"audio_chunk":', whole.rindex('{"timestamp":')) + 5]
    cmd, profile_file = _stand_in(tmp_path, cut)
    profile, codes = run_level(cmd, {}, profile_file, tmp_path / "pa.csv", retries=1, timeout=60, shown="pa")
    assert codes == [0, 0] and not profile.complete and profile.requests == 2
    assert capsys.readouterr().err.count("cut at byte") == 2
