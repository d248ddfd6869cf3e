"""Overload behaviour against the real server (a server of its own, on free ports): 4x the session cap.

The timings (refusal latency, admitted TTFA) are what `python -m loadtests.overload` measures and
prints; this test checks the behaviour only: excess turns are refused before any event with the
UNAVAILABLE-class "server busy" message, the server counts every refusal, nothing is lost (every
turn either completes with `done` or is refused), and the server serves again once the load is gone.
"""
from __future__ import annotations

import pytest

from client.retry import is_retryable_refusal
from deploy.processes import server_ports
from deploy.server import EmbeddedServer, ServerOptions
from ensemble import metrics
from ensemble.avatar import demo_avatar_png
from loadtests.overload import counter, run_users, wait_idle

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
