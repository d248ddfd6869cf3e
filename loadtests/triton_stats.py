"""Per-model figures from Triton's own Prometheus metrics between two readings: requests, batches (executions),
rows per batch, and the mean queue and compute time per request (the compute of the batch it ran in)."""
from __future__ import annotations

from deploy import metrics_text

COUNTERS = {"requests": "nv_inference_request_success", "rows": "nv_inference_count",
            "batches": "nv_inference_exec_count", "queue_us": "nv_inference_queue_duration_us",
            "compute_us": "nv_inference_compute_infer_duration_us"}


def read(metrics_url: str) -> dict[str, dict[str, float]]:
    """model -> counter -> value, now."""
    names = {v: k for k, v in COUNTERS.items()}
    out: dict[str, dict[str, float]] = {}
    for s in metrics_text.scrape(metrics_url, timeout_s=10):
        if s.name in names and "model" in s.labels:
            counters = out.setdefault(s.labels["model"], {})
            counters[names[s.name]] = counters.get(names[s.name], 0.0) + s.value
    return out


def between(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Figures of the models that served requests between the two readings."""
    out = {}
    for model, a in sorted(after.items()):
        d = {k: a.get(k, 0.0) - before.get(model, {}).get(k, 0.0) for k in COUNTERS}
        if d["requests"] <= 0:
            continue
        out[model] = {"requests": int(d["requests"]), "batches": int(d["batches"]),
                      "rows_per_batch": round(d["rows"] / max(1.0, d["batches"]), 1),
                      "queue_ms": round(d["queue_us"] / d["requests"] / 1000, 2),
                      "compute_ms": round(d["compute_us"] / d["requests"] / 1000, 2)}
    return out
