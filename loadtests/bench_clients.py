"""The bench's clients: sessions of turns against a running server, their per-turn records and a level's summary.

`run_level` drives `concurrency` sessions at once, spread over client processes (loadtests.bench_gpu
`--sessions-per-process`); `summarize` turns the records into one level's figures. A level's key in a run's
`levels` is its concurrency, with `#k` on its k-th repeat in the same run (`level_keys`).
"""
from __future__ import annotations

import multiprocessing
import queue
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from client.sdk import ClientError, TalkingHeadClient
from client.turns import TurnCollector
from export.contract import events as ev
from export.contract import media

START_TIMEOUT_S = 120.0  # the client processes' imports, on a busy host


FRAME_SLACK_S = 0.040  # a frame counts as late when it arrives more than this after its display time
TEXT = "Please tell me about the weather today and what I should wear."


@dataclass
class TurnRecord:
    ok: bool
    error: str = ""
    ttfa_s: float | None = None
    ttff_s: float | None = None
    total_s: float | None = None
    audio_s: float = 0.0
    frames: int = 0
    audio_underruns: int = 0
    late_frames: int = 0  # received late, or dropped by the server because they would have been
    late_dropped: int = 0  # of those, dropped by the server (its `done` event's frames_dropped_late)
    late_dropped_first_s: int = 0  # of those dropped, frames due in the turn's first second of video
    late_in_first_s: int = 0  # of those received late, frames due in the turn's first second of video
    late_max_ms: float = 0.0  # the latest frame's lateness beyond its display time
    frames_skipped: int = 0  # frame slots the load governor skipped on purpose (a lowered frame rate)
    stage_ms: dict | None = None  # server time inside each stage model (BLS call to answer), from the done event
    timings_ms: dict | None = None  # ms from the turn's start on the server to its first event of each type (done)
    first_calls_ms: dict | None = None  # stage -> [ms sent, ms answered] of the turn's first call to it (done)
    turn: int = 0  # its place in its session (0: the first, which every session of a level starts at once)

    @property
    def real_time(self) -> bool:
        return self.ok and self.audio_underruns == 0 and self.late_frames == 0 and self.frames_skipped == 0


def speech_utterance(seconds: float = 5.0) -> np.ndarray:
    """A speech-like 16 kHz signal (voiced harmonics with a syllable envelope); content does not change the cost."""
    t = np.arange(int(seconds * media.INPUT_SAMPLE_RATE)) / media.INPUT_SAMPLE_RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / media.INPUT_SAMPLE_RATE) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) * 0.2
    return (voice * envelope).astype(np.float32)


def one_turn(client: TalkingHeadClient, avatar_id: str, options: dict, audio: np.ndarray | None) -> TurnRecord:
    turn = TurnCollector(clock=client.clock)
    frame_arrivals: list[tuple[float, float]] = []  # (received at, pts)
    try:
        kwargs = {"audio": audio} if audio is not None else {"text": TEXT}
        for event in client.ask(avatar_id=avatar_id, options=options, **kwargs):
            turn.add(event)
            if event.type == ev.VIDEO:
                frame_arrivals.append((event.received_at, event.data["pts"]))
        r = turn.result()
    except ClientError as e:
        return TurnRecord(ok=False, error=str(e)[:200])
    # a frame's lateness: its arrival after its display time (its pts), the video clock starting at the first
    # frame; a slot the server skipped or dropped does not move the later frames' display times
    t0, pts0 = frame_arrivals[0] if frame_arrivals else (0.0, 0.0)
    lateness = [(t - t0) - (pts - pts0) for t, pts in frame_arrivals]
    late = [pts for (_, pts), s in zip(frame_arrivals, lateness) if s > FRAME_SLACK_S]
    done = r.done or {}
    dropped_late = int(done.get("frames_dropped_late", 0))
    return TurnRecord(ok=r.done is not None, ttfa_s=r.time_to_first_audio_s, ttff_s=r.time_to_first_frame_s,
                      total_s=r.total_s, audio_s=r.audio_s, frames=len(r.frames), audio_underruns=r.underrun_count,
                      late_frames=len(late) + dropped_late, late_dropped=dropped_late,
                      late_dropped_first_s=int(done.get("frames_dropped_late_first_s", 0)),
                      late_in_first_s=sum(pts < 1.0 for pts in late),
                      late_max_ms=1000 * max(lateness, default=0.0),
                      frames_skipped=int(done.get("frames_dropped", 0)) - dropped_late, stage_ms=done.get("stage_ms"),
                      timings_ms=done.get("timings_ms"), first_calls_ms=done.get("first_calls_ms"))


def sessions(url: str, avatar_id: str, concurrency: int, turns: int, options: dict,
             audio: np.ndarray | None = None) -> list[TurnRecord]:
    """`concurrency` sessions at once in this process (a thread each), each `turns` turns back to back."""
    with TalkingHeadClient(url, turn_timeout_s=300) as client:
        def session(_):
            return [replace(one_turn(client, avatar_id, options, audio), turn=k) for k in range(turns)]
        with ThreadPoolExecutor(concurrency) as pool:
            return [r for rs in pool.map(session, range(concurrency)) for r in rs]


def _client_process(results, start, url: str, avatar_id: str, concurrency: int, turns: int, options: dict,
                    audio: np.ndarray | None) -> None:
    """One client process of run_level: waits for the others, runs its sessions, puts (records, error)."""
    try:
        start.wait(timeout=START_TIMEOUT_S)
        results.put((sessions(url, avatar_id, concurrency, turns, options, audio), ""))
    except Exception as e:  # noqa: BLE001 - reported by the parent with the level it broke
        results.put(([], f"{type(e).__name__}: {e}"))


def client_shares(concurrency: int, per_process: int) -> list[int]:
    """Sessions per client process: `concurrency` spread evenly over ceil(concurrency / per_process) processes
    (one process when per_process is 0 or covers them all)."""
    n = 1 if per_process <= 0 else -(-concurrency // per_process)
    return [len(part) for part in np.array_split(np.arange(concurrency), n)]


def run_level(url: str, avatar_id: str, concurrency: int, turns: int, options: dict,
              audio: np.ndarray | None = None, per_process: int = 0) -> list[TurnRecord]:
    """`concurrency` sessions at once, each `turns` turns back to back, spread over client processes of at most
    `per_process` sessions each (0: all in this process). One Python process receiving dozens of streams of
    frames is bound by its GIL and stamps arrivals late; users are separate processes. The processes start
    their sessions together (a barrier after their imports)."""
    shares = client_shares(concurrency, per_process)
    if len(shares) == 1:
        return sessions(url, avatar_id, concurrency, turns, options, audio)
    ctx = multiprocessing.get_context("spawn")
    results, start = ctx.Queue(), ctx.Barrier(len(shares))
    procs = [ctx.Process(target=_client_process, args=(results, start, url, avatar_id, n, turns, options, audio),
                         daemon=True) for n in shares]
    for p in procs:
        p.start()
    records, errors = [], []
    for _ in procs:
        while True:
            try:
                got, error = results.get(timeout=5)
                break
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError(f"a client process died: exit codes {[p.exitcode for p in procs]}") from None
        records += got
        errors += [error] if error else []
    for p in procs:
        p.join()
    if errors:
        raise RuntimeError(f"client processes failed: {errors[:3]}")
    return records


def summarize(records: list[TurnRecord]) -> dict:
    ok = [r for r in records if r.ok]

    def pct(name, q):
        vals = [getattr(r, name) for r in ok if getattr(r, name) is not None]
        return float(np.percentile(vals, q)) if vals else None

    return {"turns": len(records), "failed": len(records) - len(ok),
            "real_time_sessions": sum(r.real_time for r in records),
            "all_real_time": all(r.real_time for r in records) and bool(records),
            "ttfa_p50_s": pct("ttfa_s", 50), "ttfa_p95_s": pct("ttfa_s", 95),
            "ttff_p50_s": pct("ttff_s", 50), "ttff_p95_s": pct("ttff_s", 95),
            "total_p50_s": pct("total_s", 50), "audio_s_p50": pct("audio_s", 50),
            "late_frames": sum(r.late_frames for r in records),
            "late_dropped": sum(r.late_dropped for r in records),
            "late_dropped_first_s": sum(r.late_dropped_first_s for r in records),
            "late_in_first_s": sum(r.late_in_first_s for r in records),
            "late_max_ms_p95": pct("late_max_ms", 95), "frames_skipped": sum(r.frames_skipped for r in records),
            "audio_underruns": sum(r.audio_underruns for r in records),
            "stage_ms_per_turn": {k: round(float(np.mean([(r.stage_ms or {}).get(k, 0.0) for r in ok])), 1)
                                  for k in sorted({k for r in ok for k in (r.stage_ms or {})})},
            "server_first_ms": server_first_ms(ok),
            "ttfa_ms_by_turn": ttfa_ms_by_turn(ok),
            "dropped_by_turn": [sum(r.late_dropped for r in turn) for turn in by_turn(records)],
            "dropped_turns": dropped_turns(records),
            "first_calls_ms": first_calls_ms(ok),
            "errors": sorted({r.error for r in records if r.error})[:3]}


def p50_p95(vals: list[float]) -> list[float]:
    """[p50, p95] of `vals`, to 0.1 (the report's first-event, first-call and by-turn tables)."""
    return [round(float(np.percentile(vals, q)), 1) for q in (50, 95)]


FIRST_EVENTS = ("transcript", "text", "piece", "audio", "video")  # a turn's server-side milestones, in order


def server_first_ms(records: list[TurnRecord]) -> dict[str, list[float]]:
    """[p50, p95] ms from a turn's start on the server to its first event of each type (the done event's
    `timings_ms`): where a turn's time to first audio goes (the first token's text, the first piece cut for TTS,
    the first audio chunk) without the network and the client."""
    out = {}
    for name in FIRST_EVENTS:
        vals = [r.timings_ms[f"first_{name}"] for r in records if r.timings_ms and f"first_{name}" in r.timings_ms]
        if vals:
            out[name] = p50_p95(vals)
    return out


def first_calls_ms(records: list[TurnRecord]) -> dict[str, dict[str, list[float]]]:
    """stage -> {"sent": [p50, p95], "answered": [p50, p95]}: ms from a turn's start to its first call to the stage
    and to that call's answer (the done event's `first_calls_ms`), so a tail in the first audio shows whether it
    waited in a stage (sent early, answered late) or before the call was made."""
    out: dict[str, dict[str, list[float]]] = {}
    for model in sorted({m for r in records for m in (r.first_calls_ms or {})}):
        pairs = [r.first_calls_ms[model] for r in records if r.first_calls_ms and model in r.first_calls_ms]
        out[model] = {name: p50_p95([p[k] for p in pairs]) for k, name in enumerate(("sent", "answered"))}
    return out


DROPPED_TURNS_LISTED = 12  # a level's turns with late drops that its report lists, the most drops first


def dropped_turns(records: list[TurnRecord], most: int = DROPPED_TURNS_LISTED) -> list[dict]:
    """The turns whose frames the server dropped late, the most drops first (at most `most`): each one's drops,
    its first audio on the server and its first call to each stage (the done event's `timings_ms` and
    `first_calls_ms`), so a turn's drops can be read beside its first lip-sync call."""
    turns = sorted((r for r in records if r.late_dropped), key=lambda r: -r.late_dropped)[:most]
    return [{"turn": r.turn, "dropped": r.late_dropped, "first_audio_ms": (r.timings_ms or {}).get("first_audio"),
             "first_calls_ms": r.first_calls_ms or {}} for r in turns]


def by_turn(records: list[TurnRecord]) -> list[list[TurnRecord]]:
    """The records of each turn of a session, in order (the first turns, the second turns, ...)."""
    return [[r for r in records if r.turn == k] for k in range(1 + max((r.turn for r in records), default=-1))]


def ttfa_ms_by_turn(records: list[TurnRecord]) -> list[list[float]]:
    """[p50, p95] TTFA ms of each turn of a session, in order: the first turns start together (a herd), the later
    ones wherever the earlier ended, so a tail that only the first have is the herd's."""
    out = []
    for turn in by_turn(records):
        vals = [1000 * r.ttfa_s for r in turn if r.ttfa_s is not None]
        out.append(p50_p95(vals) if vals else [])
    return out


def level_keys(levels: list[int]) -> list[str]:
    """A key per level run, in order: its concurrency, with '#k' on its k-th repeat ([48, 48] -> "48", "48#2")."""
    seen: Counter = Counter()
    keys = []
    for c in levels:
        seen[c] += 1
        keys.append(str(c) if seen[c] == 1 else f"{c}#{seen[c]}")
    return keys


def concurrency_of(key: str | int) -> int:
    """The concurrency of a level key ("48#2" -> 48)."""
    return int(str(key).split("#")[0])


def capacity(levels: dict) -> int:
    """Largest measured concurrency at which every session stayed real time in every run of that level."""
    by_c: dict[int, list[dict]] = {}
    for key, s in levels.items():
        by_c.setdefault(concurrency_of(key), []).append(s)
    return max((c for c, runs in by_c.items() if all(s["all_real_time"] and not s["failed"] for s in runs)),
               default=0)
