"""Client retries: only turns refused as busy before any content, with backoff and a budget."""
import threading

import pytest

from client.retry import RetryPolicy, is_retryable_refusal
from client.sdk import ServerError, TalkingHeadClient
from export.contract.events import TEXT, Event


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def test_refusal_classification():
    assert is_retryable_refusal("server busy: 32 turns in flight (limit 32); retry later")
    assert is_retryable_refusal("[request id: 1] Exceeds maximum queue size")
    assert is_retryable_refusal("server is shutting down (draining its turns in flight)")
    assert not is_retryable_refusal("invalid input: audio sample_rate is 8000 Hz; expected 16000")
    assert not is_retryable_refusal("internal error: RuntimeError: boom")


def test_backoff_is_capped_full_jitter():
    sleeps = Sleeps()
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=0.3, sleep=sleeps)
    for n in (1, 2, 3, 4, 5):
        policy.backoff(n)
    caps = [0.1, 0.2, 0.3, 0.3, 0.3]
    assert all(0 <= s <= c for s, c in zip(sleeps, caps))


def test_a_turn_that_delivered_content_is_never_repeated():
    calls = {"n": 0}

    def ask(**kwargs):
        calls["n"] += 1
        yield Event(TEXT, {"delta": "hi", "piece": 0})
        raise ServerError("server busy: retry later")

    sleeps = Sleeps()
    with TalkingHeadClient("localhost:1") as th:
        th.ask = ask
        with pytest.raises(ServerError, match="server busy"):
            th.turn(avatar_id="0" * 16, text="x", retry=RetryPolicy(sleep=sleeps))
    assert calls["n"] == 1 and sleeps == []


def test_budget_limits_retries_across_turns():
    def ask(**kwargs):
        raise ServerError("server busy")
        yield  # a generator

    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=10, budget_min=2, budget_ratio=0.0, sleep=sleeps)
    with TalkingHeadClient("localhost:1") as th:
        th.ask = ask
        for _ in range(3):
            with pytest.raises(ServerError):
                th.turn(avatar_id="0" * 16, text="x", retry=policy)
    assert len(sleeps) == 2  # the budget's two tokens, then no more retries


@pytest.mark.server
def test_refused_while_draining_then_retried_to_success(server, client, avatar):
    drain = server.options.drain_file
    drain.write_text("test")
    timer = threading.Timer(0.6, lambda: drain.unlink(missing_ok=True))
    timer.start()
    sleeps = Sleeps()

    def sleep(seconds):
        sleeps.append(seconds)
        threading.Event().wait(0.3)

    try:
        result = client.turn(avatar_id=avatar.id, text="Are you there?", options={"max_reply_tokens": 8},
                             retry=RetryPolicy(max_attempts=10, budget_min=10, sleep=sleep))
    finally:
        timer.join()
        drain.unlink(missing_ok=True)
    assert result.done is not None and result.audio.size > 0
    assert sleeps, "the first attempt must have been refused and retried"


@pytest.mark.server
def test_invalid_input_is_not_retried(client, avatar):
    sleeps = Sleeps()
    with pytest.raises(ServerError, match="invalid input"):
        client.turn(avatar_id=avatar.id, text="   ", retry=RetryPolicy(sleep=sleeps))
    assert sleeps == []
