"""Shared by the deployment-file tests (test_deploy_compose.py, test_deploy_k8s.py): paths, expected names,
and the readers of compose, Dockerfile, Kubernetes and dashboard files."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ensemble import metrics as orchestrator_metrics
from export.contract import spec
from export.contract.presets import PRODUCTION_PRESET, get_preset

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_SCHEMA = DEPLOY / "schemas" / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
MONITORING_SCHEMA = DEPLOY / "schemas" / "monitoring-coreos-v1.json"  # ServiceMonitor + PrometheusRule (CRDs)
COMPOSE_LINT_CONFIG = DEPLOY / "compose-lint.yml"
TOOLS = ROOT / "build" / "tools"  # `make validators` puts promtool and checkov's venv here
PROMETHEUS_CONFIG = DEPLOY / "compose" / "prometheus.yml"
GRAFANA = DEPLOY / "compose" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "talking-head.json"

K8S_VERSIONS = ("1.29", "1.31", "1.33", "1.35", "1.37")  # oldest to newest Kubernetes the manifests must fit
IMAGE_WORKDIR = "/opt/talking_head"  # where deploy/Dockerfile copies the repository

ADMIN_APIS = {"model-repository", "model-config", "shared-memory", "statistics", "trace", "logging"}
# What stays open, per endpoint: the probes need health (HTTP), the canary and clients gRPC inference; HTTP
# inference (infer, generate_stream: plain text even beside a TLS gRPC port) is behind the key too (issue 15).
OPEN_APIS = {"--grpc-restricted-protocol": {"health", "metadata", "inference"},
             "--http-restricted-api": {"health", "metadata"}}
# the models a deployment serves: the stages a turn uses with the production preset's families, VAD, face detector,
# orchestration (compose and Kubernetes list them as --load-model flags)
MODELS = tuple(s.name for s in spec.pipeline_stages(get_preset(PRODUCTION_PRESET)) + spec.INPUT_STAGES + spec.ORCHESTRATION)
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_exec_count", "nv_gpu_utilization", "nv_gpu_memory_used_bytes",
}
ORCHESTRATOR_HISTOGRAMS = {m.name for m in orchestrator_metrics.ALL if m.kind == "histogram"}  # *_seconds
ORCHESTRATOR_METRICS = ORCHESTRATOR_HISTOGRAMS | {
    "talking_head_active_sessions", "talking_head_frames_dropped_total", "talking_head_rejected_total",
}
HPA_METRIC = "talking_head_active_sessions"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}

# YAML files under deploy/k8s that no kustomization lists, on purpose.
K8S_STANDALONE = {"secret.example.yaml", "prometheus-adapter-rules.yaml"}



def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def flags(argv: list[str]) -> dict[str, list[str]]:
    """`--name=value` items of a command line, name -> every value given."""
    out: dict[str, list[str]] = {}
    for item in argv:
        m = re.fullmatch(r"(--[a-z0-9-]+)(?:=(.*))?", item, re.S)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2) if m.group(2) is not None else "")
    return out


def check_restricted(argv: list[str], key_ref: str) -> None:
    """Both restricted-API flags: every admin API (and HTTP inference) behind the header `admin-key`, whose value
    is `key_ref`; OPEN_APIS left open."""
    f = flags(argv)
    for flag, open_apis in OPEN_APIS.items():
        assert flag in f, f"{flag} missing from {argv}"
        restricted: set[str] = set()
        for value in f[flag]:
            apis, _, key_value = value.partition(":")
            header, _, secret = key_value.partition("=")
            assert header == "admin-key", value
            assert secret.startswith(key_ref), f"{flag}: the key must come from {key_ref}, got {secret!r}"
            restricted |= set(apis.split(","))
        closed = ADMIN_APIS | ({"inference"} - open_apis)
        assert closed <= restricted, f"{flag} leaves {closed - restricted} open"
        assert not (open_apis & restricted), f"{flag} restricts {open_apis & restricted}: probes/clients need them"


def duration_s(text: str) -> float:
    """Compose durations: 45s, 1m30s, 2m, 500ms."""
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text):
        assert m.start() == pos, text
        pos = m.end()
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[m.group(2)]
    assert pos == len(text) and pos, text
    return total


def dockerfile_stages() -> dict[str, dict]:
    """Stage name -> {'from': resolved base image, 'lines': the stage's instructions (continuations joined)}."""
    text = DOCKERFILE.read_text()
    logical, buf = [], ""
    for raw in text.splitlines():
        if not buf and (raw.lstrip().startswith("#") or not raw.strip()):
            continue
        if raw.lstrip().startswith("#"):  # comment inside a continued instruction
            continue
        if raw.endswith("\\"):
            buf += raw[:-1] + " "
            continue
        logical.append((buf + raw).strip())
        buf = ""
    args: dict[str, str] = {}
    stages: dict[str, dict] = {}
    current = None
    for line in logical:
        word, _, rest = line.partition(" ")
        if word.upper() == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif word.upper() == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            current = stages[name] = {"from": image, "lines": []}
        elif current is not None:
            current["lines"].append(line)
    return stages


def k8s_yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml"))


def kustomizations() -> dict[Path, dict]:
    return {p: load_yaml(p) for p in k8s_yaml_files() if p.name == "kustomization.yaml"}


def kustomize_refs() -> tuple[set[Path], set[Path]]:
    """Files listed as resources, and patch files, over every kustomization (directories excluded)."""
    resources, patches = set(), set()
    for path, k in kustomizations().items():
        for r in k.get("resources", []):
            target = (path.parent / r).resolve()
            if target.is_file():
                resources.add(target)
        for p in k.get("patches", []):
            if "path" in p:
                patches.add((path.parent / p["path"]).resolve())
    return resources, patches


def k8s_objects() -> list[tuple[Path, dict]]:
    """Every complete Kubernetes object in deploy/k8s (kustomizations and patches excluded)."""
    resources, _ = kustomize_refs()
    out = []
    for path in sorted(resources) + sorted(K8S / n for n in K8S_STANDALONE):
        out += [(path, d) for d in load_all(path)]
    return out


def one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in k8s_objects() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec() -> dict:
    return one("Deployment", "talking-head")["spec"]["template"]["spec"]


def container(spec: dict, name: str, init: bool = False) -> dict:
    found = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
    assert found, f"no {'init ' if init else ''}container {name}"
    return found[0]


def validate_k8s(doc: dict) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version} "
                                 f"at {where}: {e.message}") from None


def promql_exprs_of_dashboard() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:nv|talking_head)_[a-z0-9_]+)", expr))


def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


def tool(name: str, *local: Path) -> str:
    """A validator's executable: `local` candidates (build/tools), the venv's bin/, then PATH. Missing is a failure, not
    a skip: `make test` installs every one of them (deploy/requirements-validate.txt, `make validators`)."""
    for candidate in local:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make validators` (promtool, checkov) or "
                    f"`pip install -r deploy/requirements-validate.txt`", pytrace=False)
    return found


def validate_monitoring(doc: dict) -> None:
    """A monitoring.coreos.com/v1 object (ServiceMonitor, PrometheusRule) against deploy/schemas/monitoring-coreos-v1.json."""
    schema = json.loads(MONITORING_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    kind_schema = {"$defs": schema["$defs"], **schema["$defs"][doc.get("kind", "")]} \
        if doc.get("kind") in schema["$defs"] else schema
    errors = sorted(jsonschema.validators.validator_for(schema)(kind_schema).iter_errors(doc),
                    key=lambda e: list(e.path))
    assert validator.is_valid(doc) and not errors, f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: " + \
        "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
