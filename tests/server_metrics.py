"""The orchestrator's Prometheus metrics as a test reads them from a running server's metrics port."""
from __future__ import annotations

from deploy import metrics_text


def metric(server, name: str, labels: str | None = None) -> float:
    """The sum of metric `name` over its series; with `labels` (e.g. 'outcome="cancelled"'), over the series that
    carry those labels."""
    samples = metrics_text.scrape(f"http://localhost:{server.options.metrics_port}/metrics")
    return metrics_text.total(samples, name, **metrics_text.labels(labels or ""))
