"""Offline validation of the compose deployment files, the Dockerfile and the engine scripts (no Docker engine,
no cluster, no network).

Validated against real schemas / parsers:
  - docker-compose.yml: the Compose Specification JSON schema (deploy/schemas/compose-spec.json, vendored
    unmodified, checked by hash) with jsonschema;
  - deploy/k8s: every built-in Kubernetes object against the OpenAPI schemas of several Kubernetes versions
    (kubernetes-validate, strict: unknown fields are errors), both as files and, when kubectl is on PATH, as
    rendered by `kubectl kustomize` for the base and the overlay;
  - PromQL of the dashboard and of the Prometheus Adapter rule: promql-parser;
  - deploy/Dockerfile: BuildKit's parser (`dockerfile`), hadolint and checkov;
  - docker-compose.yml: compose-lint (its justified findings: deploy/compose-lint.yml);
  - the ServiceMonitor and PrometheusRule CRD objects: deploy/schemas/monitoring-coreos-v1.json (jsonschema), the
    rules with `promtool check rules` / `promtool test rules` (tests/test_deploy_lint.py);
  - the two shell scripts of the engines path: run for real against fake `python`/`nvidia-smi`.
Checked structurally: Grafana/Prometheus configs, and the cross-references (ports, labels, names, timeouts, flags)
between all of the above. Every validator is a real check: none skips for a missing tool.

Requirements: deploy/requirements-validate.txt, and `make validators` (promtool, checkov).
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
from manifests import (
    COMPOSE_FILE,
    COMPOSE_LINT_CONFIG,
    COMPOSE_SCHEMA,
    COMPOSE_SCHEMA_SHA256,
    DASHBOARD,
    DEPLOY,
    DOCKERFILE,
    GRAFANA,
    IMAGE_WORKDIR,
    K8S,
    MODELS,
    ORCHESTRATOR_HISTOGRAMS,
    ORCHESTRATOR_METRICS,
    PORTS,
    PROMETHEUS_CONFIG,
    ROOT,
    TRITON_METRICS,
    check_restricted,
    compose,
    dockerfile_stages,
    duration_s,
    flags,
    k8s_yaml_files,
    load_yaml,
    metric_names,
    promql_exprs_of_dashboard,
    tool,
)

from deploy import secret_argv

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
    assert set(compose()["services"]) >= {"engines", "triton", "locust", "prometheus", "grafana", "gateway", "coturn",
                                          "watchdog", "front-door"}


def test_compose_public_services_wait_for_a_warm_canary_round():
    """Triton's readiness says 200 before its first (slow) turn: the public services start once the watchdog's
    canary round (a spoken and a text turn through every model) has passed, and the watchdog reloads a dead stub."""
    services = compose()["services"]
    dog = services["watchdog"]
    assert dog["entrypoint"] == ["python", "-m", "deploy.watchdog"]
    args = dict(zip(dog["command"][::2], dog["command"][1::2]))
    assert args["--url"] == "triton:8001" and args["--admin-key-env"] in dog["environment"]
    assert dog["healthcheck"]["test"] == ["CMD", "test", "-f", args["--ready-file"]]
    assert dog["depends_on"]["triton"]["condition"] == "service_healthy"
    for name in ("front-door", "gateway"):
        assert services[name]["depends_on"]["watchdog"]["condition"] == "service_healthy", name


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
    assert f["--grpc-infer-allocation-pool-size"] == ["0"]  # pooled requests would keep their largest buffers
    assert f["--load-model"] == list(MODELS)  # exactly what the export writes and serves
    assert f["--backend-directory"] == ["/opt/tritonserver/backends"]
    # the key is never in the command: deploy/secret_argv.c swaps it in from the secret inside tritonserver
    check_restricted(argv, secret_argv.PLACEHOLDER)
    assert not any("TRITON_ADMIN_KEY" in a for a in argv)
    env = triton["environment"]
    assert env["LD_PRELOAD"] == "/usr/local/lib/libsecret_argv.so"  # deploy/Dockerfile builds it there
    secret = env[secret_argv.FILE_ENV].removeprefix("/run/secrets/")
    assert secret in triton["secrets"] and compose()["secrets"][secret] == {"environment": "TRITON_ADMIN_KEY"}
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


def test_compose_front_door_is_the_public_grpc_endpoint():
    """Triton's own ports stay on the host's loopback whatever PUBLISH_ADDR says; the front door (TLS, API keys)
    is what other machines reach, and it forwards to Triton inside the compose network."""
    services = compose()["services"]
    assert all(str(p).startswith("127.0.0.1:") for p in services["triton"]["ports"])
    door = services["front-door"]
    assert published(door) == {9001} and door["entrypoint"] == ["python", "-m", "deploy.front_door"]
    flags = dict(f.split("=", 1) for f in door["command"])
    assert flags["--upstream"] == "triton:8001" and flags["--listen"] == "0.0.0.0:9001"
    assert {"--keys", "--tls-cert", "--tls-key"} <= set(flags)
    assert set(door["secrets"]) <= set(compose()["secrets"])


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
    assert targets == {"export", "triton", "loadgen", "gateway"}


def test_compose_bind_mounts_exist():
    for name, s in compose()["services"].items():
        for v in s.get("volumes", []):
            source = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_compose_has_no_host_ipc_and_no_default_grafana_password():
    services = compose()["services"]
    assert not [n for n, s in services.items() if s.get("ipc") == "host" or s.get("pid") == "host"]
    grafana = services["grafana"]
    env = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "the password comes from a secret, never a literal/default"
    secret = env["GF_SECURITY_ADMIN_PASSWORD__FILE"].rsplit("/", 1)[-1]
    assert secret in grafana["secrets"] and compose()["secrets"][secret] == {"environment": "GRAFANA_ADMIN_PASSWORD"}


def test_compose_services_are_hardened():
    """What compose-lint asks for, asserted here too: no privilege escalation, no capabilities, a memory limit; a
    read-only root wherever the service writes only to volumes (the engines' exception: deploy/compose-lint.yml)."""
    for name, s in compose()["services"].items():
        if name not in {"engines", "triton", "locust", "prometheus", "grafana", "watchdog"}:
            continue  # services other files own (the gateway)
        assert "no-new-privileges:true" in s.get("security_opt", []), name
        assert s.get("cap_drop") == ["ALL"], name
        assert s.get("mem_limit"), name
        assert bool(s.get("read_only")) is (name != "engines"), name


def test_compose_lint_clean():
    """compose-lint (OWASP / CIS Docker rules) at its lowest threshold; every finding that stays is suppressed with a
    reason in deploy/compose-lint.yml (--strict-config: a stale or misspelled suppression fails too)."""
    r = subprocess.run([tool("compose-lint"), "check", "-q", "--fail-on", "low", "--strict-config", "--config",
                        str(COMPOSE_LINT_CONFIG), str(COMPOSE_FILE)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 issues" in r.stdout, r.stdout
    config = load_yaml(COMPOSE_LINT_CONFIG)["rules"]
    for rule, entry in config.items():
        for service, reason in entry["exclude_services"].items():
            assert len(reason) > 20 and "TODO" not in reason, f"{rule} {service}: give the reason"


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
    if metric == "talking_head_stage_latency_seconds":
        assert all("stage" in e for e in exprs), "stage latency must be split by the `stage` label"


def test_dashboard_promql_parses():
    import promql_parser  # deploy/requirements-validate.txt
    for expr in promql_exprs_of_dashboard():
        promql_parser.parse(expr.replace("$__rate_interval", "1m"))


def test_dashboard_promql_parser_is_not_vacuous():
    import promql_parser  # deploy/requirements-validate.txt
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
    import dockerfile  # deploy/requirements-validate.txt
    commands = dockerfile.parse_file(str(DOCKERFILE))
    froms = [c for c in commands if c.cmd.upper() == "FROM"]
    assert {c.value[-1] for c in froms} >= {"triton", "export", "loadgen"}


def test_dockerfile_hadolint_clean():
    r = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
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
