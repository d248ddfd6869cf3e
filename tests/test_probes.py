"""Canary and drain probes against the real server."""
import threading
import time
import urllib.request

import pytest

from deploy import canary, drain, metrics_text
from ensemble import metrics
from loadtests import triton_stats

pytestmark = pytest.mark.server


def _metrics(server) -> str:
    with urllib.request.urlopen(f"http://localhost:{server.options.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_canary_passes_on_a_healthy_server(server):
    assert canary.main(["--url", server.options.grpc_url, "--timeout", "60"]) == 0


def test_canary_fails_fast_when_nothing_listens(capsys):
    assert canary.main(["--url", "localhost:1", "--timeout", "5"]) == 1
    # fails on the refused connection, not by waiting out its --timeout (timings belong in benchmarks)
    assert "cannot reach Triton at localhost:1" in capsys.readouterr().err


def test_metrics_endpoint_exports_the_orchestrator_metrics(server, client, avatar):
    client.turn(avatar_id=avatar.id, text="Hello metrics.")
    text = _metrics(server)
    for m in (metrics.TTFA, metrics.TTFF, metrics.STAGE_LATENCY):
        assert f"{m.name}_bucket" in text and f"{m.name}_count" in text
    assert 'talking_head_stage_latency_seconds_count{stage="vocoder"}' in text
    assert f"{metrics.ACTIVE_SESSIONS.name} " in text or f"{metrics.ACTIVE_SESSIONS.name}{{" in text
    assert 'talking_head_turns_total{outcome="ok"}' in text
    # latencies in seconds: a tiny-preset turn's first audio chunk comes within a minute, not after 60000 "s"
    samples = metrics_text.parse(text)
    ttfa_sum, ttfa_count = (metrics_text.total(samples, f"{metrics.TTFA.name}_{part}") for part in ("sum", "count"))
    assert 0 < ttfa_sum / ttfa_count < 60


def test_the_servers_metrics_read_back_per_model(server, client, avatar):
    """deploy/metrics_text reads every line the real server serves, and loadtests/triton_stats turns Triton's
    counters into one turn's per-model figures (requests, batches, queue and compute time)."""
    url = f"http://localhost:{server.options.metrics_port}/metrics"
    assert len(metrics_text.parse(_metrics(server))) > 100
    before = triton_stats.read(url)
    client.turn(avatar_id=avatar.id, text="Hello metrics.")
    figures = triton_stats.between(before, triton_stats.read(url))
    assert {"talking_head", "llm", "tts", "vocoder"} <= set(figures)
    assert figures["talking_head"]["requests"] == 1 and figures["llm"]["requests"] > 1
    assert all(f["batches"] >= 1 and f["compute_ms"] > 0 for f in figures.values())


def test_counters_exist_from_the_start(server):
    """Every counter and gauge series of known labels is exported (at 0 until first used): rejections by reason,
    cache hits and lookups, interruptions, turns by outcome, dropped frames, governor switches."""
    text = _metrics(server)
    for m in metrics.ALL:
        for labels in metrics.initial_series(m):
            series = m.name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
            assert any(line.startswith(series + " ") for line in text.splitlines()), f"{series} is not exported"
    # (their values depend on which tests ran before on this shared server: tests/test_client_retry.py drains it)


def test_drain_waits_for_active_sessions(server, client, avatar):
    url = f"localhost:{server.options.metrics_port}"
    assert drain.main(["--url", url, "--timeout", "5"]) == 0
    done = threading.Event()
    worker = threading.Thread(target=lambda: (client.turn(avatar_id=avatar.id, text="A longer answer please.",
                                                          options={"max_reply_tokens": 60}), done.set()))
    worker.start()
    deadline = time.time() + 10
    while drain.active_sessions(f"http://{url}/metrics") == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert drain.main(["--url", url, "--timeout", "120", "--interval", "0.1"]) == 0
    assert drain.active_sessions(f"http://{url}/metrics") == 0
    worker.join(60)
    assert done.is_set()
