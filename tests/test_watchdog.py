"""The watchdog's rules on a stand-in canary and server (deploy/watchdog.py): what it reloads and what readiness says.
Through a real server: tests/test_faults.py."""
from __future__ import annotations

from client.sdk import ClientError
from deploy.watchdog import Watchdog

DEAD_VOCODER = ClientError("internal error: StageError: vocoder: Stub process 'vocoder_0_0' is not healthy.")


def watchdog(outcomes, tmp_path, ready_models=(), reload_errors=()):
    """A Watchdog whose canary gives `outcomes` in turn (seconds, or an exception raised), whose server calls
    `ready_models` ready, and whose reloads raise `reload_errors` first; what it reloaded, in `dog.reloaded`."""
    outcomes, reload_errors = iter(outcomes), list(reload_errors)

    def canary(timeout_s):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def reload(model):
        if reload_errors:
            raise reload_errors.pop(0)
        dog.reloaded.append(model)
        return 0.5

    dog = Watchdog("localhost:1", reload, run_canary=canary, log=lambda s: None, heartbeat=tmp_path / "beat",
                   ready_file=tmp_path / "ready", is_ready=lambda m: m in ready_models)
    dog.reloaded = []
    return dog


def test_the_watchdog_reloads_nothing_when_no_model_is_named_and_marks_readiness(tmp_path):
    """A failure naming no model (the server not up yet) reloads nothing; the ready file exists only while the
    last round passed, the heartbeat after every round (the Kubernetes probes of deploy/k8s/base/deployment.yaml)."""
    refused = ClientError("connection refused")
    dog = watchdog([refused, 0.25, refused], tmp_path)
    beat, ready = tmp_path / "beat", tmp_path / "ready"
    r = dog.check()
    assert not r.ok and r.failed_model is None and r.reloaded is None and not dog.reloaded
    assert "no model named" in r.line() and beat.exists() and not ready.exists()
    assert dog.check().ok and ready.exists()
    assert not dog.check().ok and not ready.exists()


def test_a_server_refusing_the_canary_as_busy_or_draining_is_not_broken(tmp_path):
    """Every turn slot taken ("server busy"), a stage's queue full, or talking_head unloading for a drain: nothing is
    reloaded and readiness stays as it was (before: a full pod left its Service, and the model a drain was unloading
    was loaded again)."""
    refusals = [ClientError("server busy: 2 turns in flight (limit 2); retry later"),
                ClientError("internal error: StageError: tts: Exceeds maximum queue size"),
                ClientError("Request for unknown model: 'talking_head' has no available versions")]
    dog = watchdog([0.3, *refusals], tmp_path, ready_models={"talking_head", "tts"})
    assert dog.check().ok and (tmp_path / "ready").exists()
    for refusal in refusals:
        r = dog.check()
        assert r.busy and not r.ok and r.reloaded is None and r.line().startswith("busy after"), r.line()
        assert (tmp_path / "ready").exists(), "a busy round took readiness away"
    assert dog.reloaded == []
    (tmp_path / "none").mkdir()
    assert not watchdog([refusals[0]], tmp_path / "none").check().ok  # busy before any round passed: not ready
    assert not (tmp_path / "none" / "ready").exists()


def test_a_model_that_is_not_ready_is_left_alone_unless_the_watchdogs_own_reload_failed(tmp_path):
    """A dead stub leaves its model READY: a stage that is not ready was unloaded (an operator) and stays so, though
    turns fail (no busy round: the liveness probe's canary fails too). One whose reload by the watchdog failed
    half-way is tried again, ready or not."""
    unloaded = ClientError("internal error: StageError: tts: Request for unknown model: 'tts' has no available "
                           "versions")
    dog = watchdog([unloaded, DEAD_VOCODER, DEAD_VOCODER, 0.3], tmp_path, ready_models={"vocoder"},
                   reload_errors=[RuntimeError("vocoder failed to load")])
    left = dog.check()
    assert not left.busy and left.failed_model == "tts" and left.reloaded is None and "left alone" in left.error
    failed = dog.check()
    assert failed.reloaded is None and "its reload failed: vocoder failed to load" in failed.error
    dog.is_ready = lambda m: False  # the failed reload left vocoder unloaded
    again = dog.check()
    assert again.reloaded == "vocoder" and dog.reloaded == ["vocoder"], again.line()
    assert dog.check().ok and (tmp_path / "ready").exists()


def test_a_server_that_cannot_say_whether_the_model_is_ready_gets_nothing_reloaded(tmp_path):
    def unreachable(model):
        raise ConnectionError("failed to connect to all addresses")

    dog = watchdog([DEAD_VOCODER], tmp_path)
    dog.is_ready = unreachable
    r = dog.check()
    assert r.reloaded is None and "could not ask whether vocoder is ready" in r.error and not dog.reload_failed
