"""The load governor (ensemble/governor.py) on a stand-in clock: when new turns get lighter settings, and when not."""
from __future__ import annotations

from ensemble import metrics
from ensemble.governor import GovernorSettings, LoadGovernor
from ensemble.options import TurnOptions


def test_governor_degrades_new_turns_under_load_with_hysteresis():
    now = {"t": 0.0}
    lines = []
    rec = metrics.MemoryRecorder()
    gov = LoadGovernor(GovernorSettings(enter_sessions=8, exit_sessions=4, min_hold_s=5.0), rec, lines.append,
                       clock=lambda: now["t"])
    assert gov.update(7) == 0 and gov.apply(TurnOptions()) == TurnOptions()
    assert gov.update(8) == 1
    light = gov.apply(TurnOptions())
    assert light.frame_stride == 2 and light.max_reply_tokens == 24 and light.jpeg_quality == 60
    assert gov.apply(TurnOptions(max_reply_tokens=10)).max_reply_tokens == 10  # a lighter client choice stays
    assert gov.update(5) == 1  # between the thresholds: stays
    assert gov.update(3) == 1  # below exit, but held only 0 s
    now["t"] = 6.0
    assert gov.update(3) == 1  # below exit for a moment: the smoothed count is still above it
    for _ in range(10):
        level = gov.update(2)
    assert level == 0
    gov.turn_ended(frames_dropped_late=50, frame_slots=50, active=1)  # video lag alone degrades
    assert gov.level == 1
    assert rec.totals[(metrics.DEGRADE_SWITCHES.name, (("to", "degraded"),))] == 2
    assert rec.totals[(metrics.DEGRADE_SWITCHES.name, (("to", "normal"),))] == 1
    assert len(lines) == 3 and "degrading new turns" in lines[0]


def burst(clock: dict) -> LoadGovernor:
    """A governor left degraded by a burst: 8 turns in flight, each ending with 30 of its 50 frame slots dropped."""
    gov = LoadGovernor(GovernorSettings(enter_sessions=6, exit_sessions=3), metrics.MemoryRecorder(),
                       clock=lambda: clock["t"])
    for active in range(1, 9):
        gov.update(active)
    for active in range(7, -1, -1):
        clock["t"] += 0.5
        gov.turn_ended(frames_dropped_late=30, frame_slots=50, active=active)
    assert gov.level == 1 and gov.lag > 0.5
    return gov


def test_a_quiet_server_gives_its_next_user_full_settings():
    """With nothing in flight for 30 s the next turn gets full settings. Until 2026-12-07 both signals moved only
    when turns started and ended: after any quiet the next user's first turns were degraded (4 of 4 in
    `python -m loadtests.keepers`, RELIABILITY.md "An eleventh pass")."""
    clock = {"t": 0.0}
    gov = burst(clock)
    clock["t"] += 30
    assert gov.update(1) == 0 and gov.apply(TurnOptions()) == TurnOptions()


def test_a_short_pause_or_a_long_busy_stretch_does_not_count_as_quiet():
    clock = {"t": 0.0}
    gov = burst(clock)
    clock["t"] += 1  # a moment between two bursts
    assert gov.update(1) == 1
    gov.update(8)
    clock["t"] += 60  # a minute with 8 turns in flight and none starting or ending: busy, not quiet
    assert gov.update(8) == 1 and gov.lag > 0.3


def test_the_quiet_after_a_cached_answer_counts_too(exported_repository, tmp_path, demo_avatar, stage_runners):
    """A replayed answer's start is a reading (one turn in flight) and so is its end, as a rendered turn's: until
    then the quiet after a replay, even of a degraded answer, counted as a turn in flight and relaxed nothing."""
    import asyncio

    from test_conversation import Log, Stages, make_service, request

    svc = make_service(exported_repository, tmp_path, demo_avatar)
    clock = {"t": 0.0}
    gov = svc.governor
    gov.clock = lambda: clock["t"]
    gov.lag = 0.6
    assert gov.update(0) == 1  # left degraded by recent late frames
    for text in ("Hello!", "hello"):  # rendered degraded and cached, then replayed from the cache
        asyncio.run(svc.handle(request(svc, text), Stages(stage_runners), Log()))
    assert svc.recorder.totals[(metrics.CACHE_HITS.name, ())] == 1 and gov.level == 1
    clock["t"] += 30
    assert gov.update(1) == 0
