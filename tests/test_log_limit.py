"""A log one client cannot flood (deploy/log_limit.py), alone and as the gateway sets its log up: records of one kind
past the limit are counted and said by the next one let through; other kinds go on."""
from __future__ import annotations

import io
import logging

from deploy.gateway.__main__ import QUIET
from deploy.log_limit import RepeatLimit, configure_logging


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def logger_into(limit: RepeatLimit) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(limit)
    log = logging.getLogger(f"test_log_limit.{id(limit)}")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    return log, out


def test_a_repeated_kind_is_cut_at_its_burst_and_the_next_one_says_how_many_were_not_logged():
    clock = Clock()
    log, out = logger_into(RepeatLimit(per_minute=6, burst=3, clock=clock))
    for i in range(1000):
        log.warning("failed to decode %s frame: %s", "opus", i)
    log.warning("another kind of record")
    lines = out.getvalue().splitlines()
    assert lines == [f"failed to decode opus frame: {i}" for i in range(3)] + ["another kind of record"]
    clock.t = 10.0  # one more of the kind allowed (6 a minute)
    log.warning("failed to decode %s frame: %s", "opus", 1000)
    assert out.getvalue().splitlines()[-1] == "failed to decode opus frame: 1000 [997 more like it were not logged]"


def test_the_kinds_kept_are_bounded():
    limit = RepeatLimit(kinds=50)
    log, out = logger_into(limit)
    for i in range(5000):
        log.info(f"session web-{i} started")  # each a kind of its own: all logged
    assert len(out.getvalue().splitlines()) == 5000 and len(limit.seen) == 50


def test_the_gateways_log_limits_each_kind_of_aiortc_warning():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    root.handlers = [logging.StreamHandler(out)]
    try:
        configure_logging("INFO", quiet=QUIET)
        receiver_log = logging.getLogger("aiortc.rtcrtpreceiver")
        for _ in range(500):  # a client's undecodable packets: one warning each in aiortc
            receiver_log.warning("RTCRtpReceiver(%s) failed to decode %s frame: %s", "audio", "opus", "Invalid data")
        assert len(out.getvalue().splitlines()) == 10
    finally:
        root.handlers, root.level = handlers, level
        for name in QUIET:
            logging.getLogger(name).setLevel(logging.NOTSET)
