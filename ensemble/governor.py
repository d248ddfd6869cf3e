"""Load-aware degradation: under load, new turns get lighter settings; with hysteresis.

Two signals, read when a turn starts and when one ends:
  - active sessions (turns in flight), against `enter_sessions` / `exit_sessions`;
  - video lag: the share of frame slots recent turns dropped because Wav2Lip could not make
    them before their display time (queueing in the stage models shows up here first), an
    exponential average over turns, against `enter_lag` / `exit_lag`.
Level 1 (degraded) starts when either signal passes its enter threshold, and ends only
when both are below their exit thresholds — the session count smoothed over recent turn
starts and ends, so a moment between two turns does not count as quiet — and the level
has held for `min_hold_s`, so it does not flap. Time with no turn in flight counts too: it
halves the smoothed count and the lag every `idle_half_life_s` (until 2026-12-07 both moved
only when turns started and ended, so a server left degraded by a burst stayed so through
any quiet and degraded its next user's first turns). Degraded turns stream video at a lower
frame rate (`frame_stride`), cap the reply length and lower the JPEG quality; turns in
flight keep their settings. Every switch is logged (the `log` callable) and counted
(metrics.DEGRADE_SWITCHES, metrics.DEGRADED).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ensemble import metrics
from ensemble.options import TurnOptions


@dataclass(frozen=True)
class GovernorSettings:
    enabled: bool = True
    enter_sessions: int = 24  # degrade when this many turns are in flight ...
    exit_sessions: int = 12  # ... and recover at or below this many
    enter_lag: float = 0.25  # degrade when recent turns dropped this share of frame slots as late ...
    exit_lag: float = 0.05  # ... and recover at or below this share
    lag_weight: float = 0.3  # weight of the newest turn in the lag average
    load_weight: float = 0.2  # weight of the newest reading in the smoothed session count (recovery only)
    min_hold_s: float = 5.0  # a level holds at least this long before switching back
    idle_half_life_s: float = 5.0  # with no turn in flight, the smoothed count and the lag halve this often
    frame_stride: int = 2  # degraded: 12.5 fps
    max_reply_tokens: int = 24  # degraded: shorter replies
    jpeg_quality: int = 60  # degraded: smaller frames

    @classmethod
    def for_capacity(cls, max_sessions: int, **overrides) -> "GovernorSettings":
        """Thresholds at 3/4 (enter) and 3/8 (exit) of the session cap."""
        enter = max(2, (3 * max_sessions) // 4)
        return cls(**{"enter_sessions": enter, "exit_sessions": max(1, (3 * max_sessions) // 8), **overrides})


class LoadGovernor:
    def __init__(self, settings: GovernorSettings, recorder: metrics.Recorder,
                 log: Callable[[str], None] = lambda line: None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.recorder = recorder
        self.log = log
        self.clock = clock
        self.level = 0
        self.lag = 0.0
        self.load: float | None = None  # smoothed turns in flight
        self.switched_at = -float("inf")
        self.read_at: float | None = None  # when the last reading came ...
        self.active_then = 0  # ... and how many turns were in flight from then on
        recorder.set(metrics.DEGRADED, 0)

    def turn_ended(self, frames_dropped_late: int, frame_slots: int, active: int) -> None:
        self._idle(self.clock())
        if frame_slots:
            w = self.settings.lag_weight
            self.lag = (1 - w) * self.lag + w * frames_dropped_late / frame_slots
        self.update(active)

    def update(self, active: int) -> int:
        s = self.settings
        if not s.enabled:
            return 0
        now = self.clock()
        self._idle(now)
        self.load = active if self.load is None else (1 - s.load_weight) * self.load + s.load_weight * active
        self.active_then = active
        if self.level == 0 and (active >= s.enter_sessions or self.lag >= s.enter_lag):
            self._switch(1, f"{active} turns in flight (enter at {s.enter_sessions}), video lag {self.lag:.2f}"
                            f" (enter at {s.enter_lag})", now)
        elif (self.level == 1 and max(active, self.load) <= s.exit_sessions and self.lag <= s.exit_lag
              and now - self.switched_at >= s.min_hold_s):
            self._switch(0, f"{self.load:.1f} turns in flight on average (exit at {s.exit_sessions}), video lag"
                            f" {self.lag:.2f}"
                            f" (exit at {s.exit_lag})", now)
        return self.level

    def _idle(self, now: float) -> None:
        """Time since the last reading with no turn in flight: the smoothed count and the lag decay."""
        if self.read_at is not None and self.active_then == 0:
            quiet = 0.5 ** ((now - self.read_at) / self.settings.idle_half_life_s)
            self.lag *= quiet
            self.load = None if self.load is None else self.load * quiet
        self.read_at = now

    def _switch(self, level: int, why: str, now: float) -> None:
        self.level, self.switched_at = level, now
        self.recorder.inc(metrics.DEGRADE_SWITCHES, to="degraded" if level else "normal")
        self.recorder.set(metrics.DEGRADED, level)
        self.log(f"load governor: {'degrading new turns' if level else 'back to full settings'}: {why}")

    def apply(self, options: TurnOptions) -> TurnOptions:
        """The settings a new turn gets at the current level (a client's lighter choice is kept)."""
        if self.level == 0:
            return options
        s = self.settings
        cap = s.max_reply_tokens if options.max_reply_tokens is None else min(options.max_reply_tokens, s.max_reply_tokens)
        return replace(options, frame_stride=max(options.frame_stride, s.frame_stride), max_reply_tokens=cap,
                       jpeg_quality=min(options.jpeg_quality, s.jpeg_quality))
