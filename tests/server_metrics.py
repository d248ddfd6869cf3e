"""The orchestrator's Prometheus metrics as a test reads them from a running server's metrics port."""
from __future__ import annotations

import re
import urllib.request


def metric(server, name: str, labels: str | None = None) -> float:
    """The sum of metric `name` over its series; with `labels` (e.g. 'outcome="cancelled"'), over the series whose
    label set contains that text."""
    with urllib.request.urlopen(f"http://localhost:{server.options.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    series = r"(?:{[^}]*})?" if labels is None else rf"{{[^}}]*{re.escape(labels)}[^}}]*}}"
    return sum(float(v) for v in re.findall(rf"^{name}{series} (\S+)$", text, re.M))
