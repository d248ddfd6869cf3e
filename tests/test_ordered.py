"""ensemble/ordered.py: overlapping calls whose results leave in the order they were started."""
import asyncio

import pytest

from ensemble.ordered import OrderedCalls


async def _slow(value, seconds, running, log):
    running.append(value)
    log.append(("in", value, len(running)))
    try:
        await asyncio.sleep(seconds)
    finally:
        running.remove(value)
    return value


def test_results_leave_in_order_with_at_most_limit_calls_at_once():
    async def main():
        delivered, running, log = [], [], []
        calls = OrderedCalls(2, delivered.append)
        for value, seconds in enumerate([0.05, 0.01, 0.03, 0.0, 0.02]):  # later calls often finish first
            await calls.start(_slow(value, seconds, running, log))
        await calls.join()
        return delivered, log

    delivered, log = asyncio.run(main())
    assert delivered == [0, 1, 2, 3, 4]
    assert max(n for _, _, n in log) == 2  # two overlap, never three
    assert log[1] == ("in", 1, 2)  # the second started before the first returned


def test_a_limit_of_one_runs_them_one_after_another():
    async def main():
        delivered, running, log = [], [], []
        calls = OrderedCalls(1, delivered.append)
        for value in range(3):
            await calls.start(_slow(value, 0.01, running, log))
        await calls.join()
        return delivered, log

    delivered, log = asyncio.run(main())
    assert delivered == [0, 1, 2] and {n for _, _, n in log} == {1}


def test_a_failure_is_reported_at_once_and_raised_and_later_results_are_not_delivered():
    async def fail():
        await asyncio.sleep(0.01)
        raise RuntimeError("lipsync_frames: bad pose")

    async def main():
        delivered, errors, running, log = [], [], [], []
        calls = OrderedCalls(2, delivered.append, on_error=errors.append)
        await calls.start(fail())
        await calls.start(_slow("after", 0.0, running, log))
        await asyncio.sleep(0.05)
        assert [str(e) for e in errors] == ["lipsync_frames: bad pose"]  # told while it waits elsewhere
        with pytest.raises(RuntimeError, match="bad pose"):
            await calls.start(_slow("never", 0.0, running, log))
        with pytest.raises(RuntimeError, match="bad pose"):
            await calls.join()
        return delivered, log

    delivered, log = asyncio.run(main())
    assert delivered == [] and ("in", "never", 1) not in log


def test_cancel_stops_the_calls_in_flight_without_delivering():
    async def main():
        delivered, running, log = [], [], []
        calls = OrderedCalls(2, delivered.append)
        await calls.start(_slow(0, 10.0, running, log))
        await calls.start(_slow(1, 10.0, running, log))
        await asyncio.sleep(0.01)
        await calls.cancel()
        return delivered, running

    delivered, running = asyncio.run(asyncio.wait_for(main(), 5))
    assert delivered == [] and running == []


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        OrderedCalls(0, print)
