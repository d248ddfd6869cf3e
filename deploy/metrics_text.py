"""Prometheus metrics read back: the samples a metrics endpoint serves (Triton's `nv_inference_*`, the
orchestrator's `talking_head_*`), for the drain, the benchmarks and the tests. One reader of the text format."""
from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def labels(text: str) -> dict[str, str]:
    """`a="x",b="y"` -> {"a": "x", "b": "y"} (values unescaped)."""
    return {k: re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group()], v) for k, v in _LABEL.findall(text)}


def parse(text: str) -> list[Sample]:
    """Every sample of a text exposition; comments (# HELP, # TYPE) and blank lines skipped."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line.strip())
        try:
            name, label_text, value = m.groups()
            out.append(Sample(name, labels(label_text or ""), float(value)))
        except (AttributeError, ValueError):  # no match, or a value that is no number
            raise ValueError(f"not a Prometheus sample line: {line[:120]!r}") from None
    return out


def scrape(url: str, timeout_s: float = 5.0) -> list[Sample]:
    """The samples `url` (http://host:port/metrics) serves now."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return parse(r.read().decode())


def total(samples: list[Sample], name: str, **match: str) -> float:
    """The sum of `name` over its series whose labels include `match` (0 when there is none)."""
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in match.items()))
