"""loadtests.bench_clients: level keys and capacity over repeats (pure), and sessions spread over client processes
against the real embedded server."""
import pytest

from loadtests.bench_clients import capacity, client_shares, concurrency_of, level_keys, run_level, summarize


def test_level_keys_mark_repeats_and_map_back_to_their_concurrency():
    keys = level_keys([48, 64, 48, 64, 48])
    assert keys == ["48", "64", "48#2", "64#2", "48#3"]
    assert [concurrency_of(k) for k in keys] == [48, 64, 48, 64, 48]
    assert concurrency_of(16) == 16


def test_capacity_needs_every_run_of_a_level_real_time():
    def level(ok, failed=0):
        return {"all_real_time": ok, "failed": failed}

    assert capacity({"16": level(True), "48": level(True), "48#2": level(True), "64": level(False)}) == 48
    assert capacity({"16": level(True), "48": level(True), "48#2": level(False)}) == 16  # one of two runs missed
    assert capacity({"16": level(True, failed=1)}) == 0


@pytest.mark.parametrize("concurrency, per_process, shares", [
    (48, 8, [8] * 6), (50, 8, [8, 7, 7, 7, 7, 7, 7]), (5, 8, [5]), (48, 0, [48]), (1, 8, [1]), (9, 4, [3, 3, 3]),
])
def test_client_shares_spread_sessions_evenly(concurrency, per_process, shares):
    assert client_shares(concurrency, per_process) == shares
    assert sum(shares) == concurrency and max(shares) <= (per_process or concurrency)


def test_sessions_spread_over_client_processes_all_run_their_turns(server, avatar):
    """3 sessions of 2 turns in 2 client processes (spawned, the real SDK in each): every turn comes back whole."""
    records = run_level(server.options.grpc_url, avatar.id, 3, 2, {"max_reply_tokens": 4}, per_process=2)
    assert len(records) == 6, records
    assert all(r.ok and r.ttfa_s is not None and r.frames > 0 and r.audio_s > 0 for r in records), records
    s = summarize(records)
    assert s["turns"] == 6 and s["failed"] == 0
    first = s["server_first_ms"]  # where the first audio went, from the done events
    assert set(first) == {"text", "piece", "audio", "video"}, first
    assert first["text"][0] <= first["piece"][0] <= first["audio"][0], first
    assert all(p50 <= p95 for p50, p95 in first.values()), first
    calls = s["first_calls_ms"]  # where the first audio waited: each stage's first call, sent and answered
    assert {"llm", "tts", "vocoder"} <= set(calls), calls
    for r in records:  # one turn's milestones in the order the pipeline makes them
        f, t = r.first_calls_ms, r.timings_ms
        assert (t["first_piece"] <= f["tts"][0] <= f["tts"][1] <= f["vocoder"][0] <= f["vocoder"][1]
                <= t["first_audio"]), (f, t)
        assert f["llm"][0] <= f["llm"][1] <= t["first_text"], (f, t)
    assert sorted(r.turn for r in records) == [0, 0, 0, 1, 1, 1]  # each session's turns, in order
    by_turn = s["ttfa_ms_by_turn"]
    assert len(by_turn) == 2 and all(0 < p50 <= p95 for p50, p95 in by_turn), by_turn
    firsts = sorted(1000 * r.ttfa_s for r in records if r.turn == 0)
    # the first turns' own TTFAs (the summary's are rounded to 0.1 ms: its median of 43.892 was 43.9)
    assert round(firsts[0], 1) <= by_turn[0][0] <= round(firsts[-1], 1)


def test_the_report_shows_where_the_first_audio_went():
    from loadtests.bench_report import markdown

    level = {"turns": 2, "failed": 0, "real_time_sessions": 2, "all_real_time": True, "ttfa_p50_s": 0.3,
             "ttfa_p95_s": 0.4, "ttff_p50_s": 0.3, "ttff_p95_s": 0.4, "total_p50_s": 2.0, "audio_s_p50": 5.8,
             "late_frames": 0, "audio_underruns": 0, "stage_ms_per_turn": {}, "errors": [],
             "server_first_ms": {"text": [120.5, 200.0], "piece": [180.0, 260.0], "audio": [250.0, 330.0]},
             "ttfa_ms_by_turn": [[300.0, 420.0], [280.5, 300.0]],
             "first_calls_ms": {"tts": {"sent": [181.0, 262.0], "answered": [230.0, 320.5]}}}
    run = {"config": "gpu", "options": {}, "server_start_s": 1.0, "peak_gpu_memory_mib": 1, "speech_c1": level,
           "levels": {"48": level, "48#2": level}}
    md = markdown({"date": "d", "preset": "base", "hardware": "h", "command": "c", "optimized": run,
                   "capacity": {"optimized": capacity(run["levels"])}})
    assert "| input | concurrency | text | piece | audio |" in md
    assert "| text | 48#2 | 120.5 / 200 | 180 / 260 | 250 / 330 |" in md
    assert "| input | concurrency | turn 1 | turn 2 |" in md
    assert "| input | concurrency | tts sent | tts answered |" in md
    assert "| text | 48#2 | 181 / 262 | 230 / 320.5 |" in md
    assert "| text | 48#2 | 300 / 420 | 280.5 / 300 |" in md


def test_gpu_memory_is_summed_per_model_and_reported_per_level():
    from loadtests.bench_gpu import mib_by_name
    from loadtests.bench_report import markdown

    apps = "101, 600\n202, 20480\n203, 20000\n[N/A], [N/A]\n404, 7\n"  # nvidia-smi --query-compute-apps=pid,used_memory
    held = mib_by_name(apps, {101: "tritonserver", 202: "lipsync_frames", 203: "lipsync_frames"})
    assert held == {"lipsync_frames": 40480, "tritonserver": 600, "other": 7}
    assert list(held) == ["lipsync_frames", "tritonserver", "other"]  # largest first
    assert mib_by_name("", {}) == {}

    level = {"turns": 2, "failed": 0, "real_time_sessions": 2, "all_real_time": True, "ttfa_p50_s": 0.3,
             "ttfa_p95_s": 0.4, "ttff_p50_s": 0.3, "ttff_p95_s": 0.4, "total_p50_s": 2.0, "audio_s_p50": 5.8,
             "late_frames": 0, "audio_underruns": 0, "stage_ms_per_turn": {}, "errors": []}
    run = {"config": "gpu", "options": {}, "server_start_s": 1.0, "peak_gpu_memory_mib": 1, "speech_c1": level,
           "gpu_mib_after_warmup": {"lipsync_frames": 9000, "llm": 3000},
           "levels": {"16": level, "48": level | {"gpu_mib_by_process": held}}}
    md = markdown({"date": "d", "preset": "base", "hardware": "h", "command": "c", "optimized": run,
                   "capacity": {"optimized": capacity(run["levels"])}})
    assert "| after | total | by process |" in md
    assert "| warm-up | 12000 | lipsync_frames 9000, llm 3000 |" in md
    assert "| 48 | 41087 | lipsync_frames 40480, tritonserver 600, other 7 |" in md
    assert "| 16 |" not in md.split("| after | total | by process |")[1]  # a level without the figure has no row
    no_figures = markdown({"date": "d", "preset": "base", "hardware": "h", "command": "c",
                           "optimized": run | {"levels": {"16": level}}, "capacity": {"optimized": capacity({"16": level})}})
    assert "by process" not in no_figures


def test_the_gpu_memory_peak_is_kept_per_phase_and_reported():
    from loadtests.bench_gpu import GpuMemory
    from loadtests.bench_report import markdown

    mem = GpuMemory()  # not entered: samples are fed by hand, as nvidia-smi's would be
    mem.record([500, 20], [0, 0])
    mem.record([41000, 30], [90, 0])  # a start-up transient
    mem.phase("levels")
    mem.record([24300, 30], [60, 5])
    assert (mem.before_mib, mem.peak_mib, mem.peak_per_gpu_mib) == (500, 41000, [41000, 30])
    assert mem.peak_by_phase_mib == {"start and warm-up": 41000, "levels": 24300}

    level = {"turns": 2, "failed": 0, "real_time_sessions": 2, "all_real_time": True, "ttfa_p50_s": 0.3,
             "ttfa_p95_s": 0.4, "ttff_p50_s": 0.3, "ttff_p95_s": 0.4, "total_p50_s": 2.0, "audio_s_p50": 5.8,
             "late_frames": 0, "audio_underruns": 0, "stage_ms_per_turn": {}, "errors": []}
    run = {"config": "gpu", "options": {}, "server_start_s": 1.0, "peak_gpu_memory_mib": mem.peak_mib,
           "peak_gpu_memory_mib_by_phase": mem.peak_by_phase_mib, "gpu_memory_before_start_mib": mem.before_mib,
           "speech_c1": level, "levels": {"16": level}}
    md = markdown({"date": "d", "preset": "base", "hardware": "h", "command": "c", "optimized": run,
                   "capacity": {"optimized": capacity(run["levels"])}})
    assert ("peak GPU memory (nvidia-smi): 41000 MiB (before the server started 500, start and warm-up 41000, "
            "levels 24300).") in md


def test_frames_dropped_late_are_counted_by_a_sessions_turn():
    from loadtests.bench_clients import TurnRecord
    from loadtests.bench_report import markdown

    records = [TurnRecord(ok=True, ttfa_s=0.2, turn=0, late_frames=3, late_dropped=3),
               TurnRecord(ok=True, ttfa_s=0.2, turn=0, late_frames=1, late_dropped=1),
               TurnRecord(ok=True, ttfa_s=0.1, turn=1),
               TurnRecord(ok=False, error="boom", turn=1, late_dropped=2)]  # a failed turn's drops count too
    level = summarize(records)
    assert level["dropped_by_turn"] == [4, 2]
    assert summarize([TurnRecord(ok=True, ttfa_s=0.1)])["dropped_by_turn"] == [0]
    clean = level | {"dropped_by_turn": [0, 0]}
    run = {"config": "gpu", "options": {}, "server_start_s": 1.0, "peak_gpu_memory_mib": 1, "speech_c1": clean,
           "levels": {"48": level, "48#2": clean}}
    md = markdown({"date": "d", "preset": "base", "hardware": "h", "command": "c", "optimized": run,
                   "capacity": {"optimized": capacity(run["levels"])}})
    table = md.split("Frames the server dropped late, by a session's turn")[1]
    assert "| text | 48 | 4 | 2 |" in table
    assert "| text | 48#2 |" not in table.split("\n\n")[1]  # a level with no drops has no row


def test_each_turn_with_drops_is_shown_beside_its_first_frame_stage_call():
    from loadtests.bench_clients import TurnRecord
    from loadtests.bench_report import markdown

    calls = {"llm": [1.0, 9.0], "lipsync_frames": [230.5, 512.25]}
    records = [TurnRecord(ok=True, ttfa_s=0.2, turn=0, late_frames=2, late_dropped=2, timings_ms={"first_audio": 241.0},
                          first_calls_ms=calls),
               TurnRecord(ok=True, ttfa_s=0.2, turn=1, late_frames=5, late_dropped=5),
               TurnRecord(ok=True, ttfa_s=0.1, turn=1, first_calls_ms=calls)]
    level = summarize(records)
    assert [(t["turn"], t["dropped"]) for t in level["dropped_turns"]] == [(1, 5), (0, 2)]  # the most drops first
    run = {"config": "gpu", "options": {}, "server_start_s": 1.0, "peak_gpu_memory_mib": 1, "speech_c1": level,
           "levels": {"48": level}}
    md = markdown({"date": "d", "preset": "base", "hardware": "h", "command": "c", "optimized": run,
                   "capacity": {"optimized": capacity(run["levels"])}})
    table = md.split("The turns with frames dropped late")[1]
    assert "| text | 48 | 1 | 2 | 241.0 | lipsync_frames | 230.5 | 512.2 |" in table
    assert "| text | 48 | 2 | 5 | — | — | — | — |" in table  # a turn without the server's figures
    clean = level | {"dropped_turns": []}
    assert "The turns with frames dropped late" not in markdown(
        {"date": "d", "preset": "base", "hardware": "h", "command": "c", "capacity": {"optimized": 0},
         "optimized": run | {"levels": {"48": clean}, "speech_c1": clean}})
