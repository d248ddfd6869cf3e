"""Overload behaviour against the real server (a server of its own, on free ports): 4x the session cap.

The timings (refusal latency, admitted TTFA) are what `python -m loadtests.overload` measures and
prints; this test checks the behaviour only: excess turns are refused before any event with the
UNAVAILABLE-class "server busy" message, the server counts every refusal, nothing is lost (every
turn either completes with `done` or is refused), and the server serves again once the load is gone.
"""
from __future__ import annotations

import threading
import time

import pytest
import tritonclient.grpc as grpcclient

from client.retry import is_retryable_refusal
from client.wire import infer_input, turn_inputs
from deploy.front_door import FrontDoorOptions, FrontDoorThread
from deploy.front_door.quota import ApiKeys, Limits
from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from ensemble import metrics
from ensemble.avatar import demo_avatar_png
from export.contract.spec import AVATAR_REGISTRY, TALKING_HEAD
from loadtests.overload import TEXTS, counter, run_users, wait_idle

pytestmark = pytest.mark.server

PORTS = server_ports()
CAP = 1
FACTOR = 4


@pytest.fixture(scope="module")
def capped_server(exported_repository, tmp_path_factory):
    options = ServerOptions(repository=exported_repository, workdir=tmp_path_factory.mktemp("triton-overload"), **PORTS)
    with EmbeddedServer(options) as server:
        server.set_parameters("talking_head", {"max_sessions": CAP})  # explicit model control: a config override
        yield server


def test_excess_sessions_are_refused_as_busy_nothing_is_lost_and_the_server_recovers(capped_server):
    from client.sdk import TalkingHeadClient

    url = capped_server.options.grpc_url
    metrics_url = f"http://localhost:{capped_server.options.metrics_port}/metrics"
    with TalkingHeadClient(url) as client:
        avatar = client.register_avatar(demo_avatar_png()).id
    before = counter(metrics_url, metrics.REJECTED.name, 'reason="overloaded"')
    attempts = run_users(url, avatar, "overload", CAP * FACTOR, turns=3)
    refused = [a for a in attempts if a.outcome == "refused"]
    done = [a for a in attempts if a.outcome == "done"]
    lost = [a for a in attempts if a.outcome == "failed"]
    print(f"\n{len(attempts)} turns from {CAP * FACTOR} sessions at cap {CAP}: {len(done)} done, {len(refused)} "
          f"refused ({refused[0].message if refused else None!r}), {len(lost)} lost")
    assert lost == [], [a.message for a in lost]
    assert refused and done
    for a in refused:
        assert a.events == 0 and a.message.startswith(f"server busy: {CAP} turns in flight (limit {CAP})"), a.message
        assert is_retryable_refusal(a.message)
    assert counter(metrics_url, metrics.REJECTED.name, 'reason="overloaded"') - before == len(refused)

    wait_idle(metrics_url)
    recovery = run_users(url, avatar, "recovery", CAP, turns=2)
    assert [a.outcome for a in recovery] == ["done"] * (2 * CAP), [a.message for a in recovery]


def test_refusals_through_the_front_door_with_the_status_header_keep_the_server_alive(capped_server):
    """Clients that send `triton_grpc_error: true` through the front door, a stream per turn, 4x the cap for 8 s: the
    door answers the header itself (each refusal ends the client's stream with UNAVAILABLE) and never forwards it.
    Forwarded, Triton 2.51 closed a stream per refusal with the error's status and aborted within seconds (it died
    after 65 refusals in the run that found it; RELIABILITY.md, "Overload")."""
    key = "overload-key-0123456789abcdef"
    options = FrontDoorOptions(upstream=capped_server.options.grpc_url, listen="127.0.0.1:0", keys=ApiKeys({"k": key}),
                               limits=Limits(max_turns=100, max_streams=100, rate=10_000, burst=10_000))
    headers = {"authorization": f"Bearer {key}", "triton_grpc_error": "true"}
    outcomes, lock = [], threading.Lock()
    with FrontDoorThread(options) as door:
        with grpcclient.InferenceServerClient(door.url) as c:
            image = infer_input(AVATAR_REGISTRY, AVATAR_REGISTRY.inputs[0], [demo_avatar_png()])
            avatar = c.infer(AVATAR_REGISTRY.name, [image], headers=headers).as_numpy("avatar_id").reshape(-1)[0]

        def user(i: int, t0: float) -> None:
            while time.monotonic() - t0 < 8.0:
                ended, errors = threading.Event(), []

                def on(result, error):
                    if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
                        errors.extend([error] if error is not None else [])
                        ended.set()

                stream = grpcclient.InferenceServerClient(door.url)
                stream.start_stream(callback=on, headers=headers)
                stream.async_stream_infer(TALKING_HEAD.name, turn_inputs(avatar_id=avatar.decode(), text=TEXTS[i]),
                                          request_id=f"u{i}", enable_empty_final_response=True)
                finished = ended.wait(60)
                stream.stop_stream(cancel_requests=False)
                stream.close()
                with lock:
                    outcomes.append("done" if finished and not errors else
                                    "refused" if errors and str(errors[0].status()) == "StatusCode.UNAVAILABLE"
                                    and "server busy" in errors[0].message() else
                                    f"failed: {errors[0] if errors else 'no end'}")

        t0 = time.monotonic()
        users = [threading.Thread(target=user, args=(i, t0)) for i in range(CAP * FACTOR)]
        for t in users:
            t.start()
        for t in users:
            t.join()
    failed = [o for o in outcomes if o.startswith("failed")]
    print(f"\n{len(outcomes)} turns through the door: {outcomes.count('done')} done, {outcomes.count('refused')} refused")
    assert capped_server.process.poll() is None, "tritonserver died"
    assert failed == [] and outcomes.count("refused") >= 50 and "done" in outcomes, failed[:3]
