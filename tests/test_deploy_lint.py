"""Security linters and the alert rules, run for real on the deployment files (no skips: `make test` installs them).

- checkov on the Kubernetes objects as kustomize renders them (base and the build-in-pod overlay) and on
  deploy/Dockerfile: no failed check; every check that stays is skipped in the file itself with its reason
  (`checkov.io/skipN` annotations, `# checkov:skip=` comments);
- promtool (Debian's prometheus package, `make validators`) on deploy/k8s/base/prometheusrule.yaml's groups:
  `promtool check rules`, and `promtool test rules` with series that must make each alert fire (or not);
- the rules and the dashboard name only metrics that ensemble/metrics.py defines (seconds for latencies).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from manifests import DASHBOARD, DOCKERFILE, K8S, TOOLS, metric_names, one, promql_exprs_of_dashboard, tool

from ensemble import metrics

CHECKOV = TOOLS / "checkov" / "bin" / "checkov"
PROMTOOL = TOOLS / "promtool"
SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")


def kustomize(entry: str) -> str:
    r = subprocess.run([tool("kubectl"), "kustomize", str(K8S / entry)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def checkov(path: Path, framework: str) -> dict:
    r = subprocess.run([tool("checkov", CHECKOV), "-f", str(path), "--framework", framework, "-o", "json", "--compact",
                        "--quiet", "--skip-download"], capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    report = json.loads(r.stdout) if r.stdout.strip() else {}
    return report[0] if isinstance(report, list) else report


def failed(report: dict) -> list[str]:
    results = report.get("results", {})
    return [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in results.get("failed_checks", [])]


@pytest.mark.parametrize("entry", ["", "overlays/build-in-pod"])
def test_checkov_passes_the_rendered_kubernetes_objects(entry, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(kustomize(entry))
    report = checkov(rendered, "kubernetes")
    assert report.get("summary", {}).get("passed", 0) > 50, report.get("summary")  # it really ran the checks
    assert not failed(report), "checkov findings:\n" + "\n".join(failed(report))
    skipped = report["results"].get("skipped_checks", [])
    assert all(len(s.get("suppress_comment") or "") > 20 for s in skipped), skipped


def test_every_checkov_skip_names_a_check_and_a_reason():
    for kind, name in (("Deployment", "talking-head"), ("Job", "talking-head-engines")):
        notes = {k: v for k, v in one(kind, name)["metadata"].get("annotations", {}).items() if SKIP_ANNOTATION.match(k)}
        assert notes, f"{kind}/{name}: no checkov annotations"
        for key, value in notes.items():
            assert re.fullmatch(r"CKV2?_K8S_\d+=.{20,}", value), f"{kind}/{name} {key}: {value!r}"


def test_checkov_passes_the_dockerfile():
    report = checkov(DOCKERFILE, "dockerfile")
    assert report.get("summary", {}).get("passed", 0) > 5, report.get("summary")
    assert not failed(report), "checkov findings:\n" + "\n".join(failed(report))
    for line in DOCKERFILE.read_text().splitlines():
        if "checkov:skip=" in line:
            assert re.search(r"checkov:skip=CKV\w*_\d+: .{20,}", line), line


# ------------------------------------------------------------------------------------------- alert rules

def rule_groups() -> dict:
    return {"groups": one("PrometheusRule", "talking-head")["spec"]["groups"]}


@pytest.fixture
def rules_file(tmp_path) -> Path:
    path = tmp_path / "talking-head.rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool", PROMTOOL), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_check_rules(rules_file):
    r = promtool("check", "rules", str(rules_file), cwd=rules_file.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups()['groups'])} rules found" in r.stdout, r.stdout


def test_promtool_check_rules_is_not_vacuous(tmp_path):
    bad = rule_groups()
    bad["groups"][0]["rules"][0]["expr"] = "sum(rate(talking_head_turns_total[5m])"
    path = tmp_path / "bad.rules.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert promtool("check", "rules", str(path), cwd=tmp_path).returncode != 0


ALERT_TESTS = """
rule_files: [talking-head.rules.yaml]
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      # p95 of time to first audio at 2-2.5 s: every turn lands in the (2.5] bucket
      - series: 'talking_head_ttfa_seconds_bucket{namespace="talking-head",pod="p",le="1.5"}'
        values: '0+0x40'
      - series: 'talking_head_ttfa_seconds_bucket{namespace="talking-head",pod="p",le="2.5"}'
        values: '0+10x40'
      - series: 'talking_head_ttfa_seconds_bucket{namespace="talking-head",pod="p",le="+Inf"}'
        values: '0+10x40'
      # one in ten turns fails; overload refusals at 1/s; 10 late frame slots/s
      - series: 'talking_head_turns_total{namespace="talking-head",pod="p",outcome="ok"}'
        values: '0+90x40'
      - series: 'talking_head_turns_total{namespace="talking-head",pod="p",outcome="error"}'
        values: '0+10x40'
      - series: 'talking_head_rejected_total{namespace="talking-head",pod="p",reason="overloaded"}'
        values: '0+30x40'
      - series: 'talking_head_frames_dropped_total{namespace="talking-head",pod="p",reason="late"}'
        values: '0+300x40'
      - series: 'up{namespace="talking-head",service="talking-head-metrics",pod="p",instance="p:8002"}'
        values: '0x40'
    alert_rule_test:
      - {eval_time: 4m, alertname: TalkingHeadMetricsDown, exp_alerts: []}  # not before its `for: 5m`
      - {eval_time: 20m, alertname: TalkingHeadSlowFirstAudio, exp_alerts: [{exp_labels: {severity: warning}}]}
      - {eval_time: 20m, alertname: TalkingHeadTurnErrors, exp_alerts: [{exp_labels: {severity: critical}}]}
      - {eval_time: 20m, alertname: TalkingHeadTurnsRefused, exp_alerts: [{exp_labels: {severity: warning}}]}
      - {eval_time: 20m, alertname: TalkingHeadLateFrames, exp_alerts: [{exp_labels: {severity: warning}}]}
      - eval_time: 20m
        alertname: TalkingHeadMetricsDown
        exp_alerts: [{exp_labels: {severity: critical, namespace: talking-head, service: talking-head-metrics,
                                   pod: p, instance: "p:8002"}}]
  - interval: 30s
    input_series:  # a healthy server: fast first audio, no errors, nothing refused or late
      - series: 'talking_head_ttfa_seconds_bucket{namespace="talking-head",pod="p",le="0.4"}'
        values: '0+10x40'
      - series: 'talking_head_ttfa_seconds_bucket{namespace="talking-head",pod="p",le="+Inf"}'
        values: '0+10x40'
      - series: 'talking_head_turns_total{namespace="talking-head",pod="p",outcome="ok"}'
        values: '0+10x40'
      - series: 'talking_head_turns_total{namespace="talking-head",pod="p",outcome="error"}'
        values: '0x40'
      - series: 'talking_head_rejected_total{namespace="talking-head",pod="p",reason="overloaded"}'
        values: '0x40'
      - series: 'talking_head_frames_dropped_total{namespace="talking-head",pod="p",reason="late"}'
        values: '0x40'
      - series: 'up{namespace="talking-head",service="talking-head-metrics",pod="p",instance="p:8002"}'
        values: '1x40'
    alert_rule_test:
      - {eval_time: 20m, alertname: TalkingHeadSlowFirstAudio, exp_alerts: []}
      - {eval_time: 20m, alertname: TalkingHeadTurnErrors, exp_alerts: []}
      - {eval_time: 20m, alertname: TalkingHeadTurnsRefused, exp_alerts: []}
      - {eval_time: 20m, alertname: TalkingHeadLateFrames, exp_alerts: []}
      - {eval_time: 20m, alertname: TalkingHeadMetricsDown, exp_alerts: []}
"""


# what each firing alert's annotations render to on the series above (their templates are checked too)
FIRING = {
    "TalkingHeadSlowFirstAudio": ("Time to first audio p95 above 1.5 s",
                                  "p95 of talking_head_ttfa_seconds is 2.45s over the last 5 minutes."),
    "TalkingHeadTurnErrors": ("More than 5% of turns fail", "10% of turns ended in an error over the last 5 minutes."),
    "TalkingHeadTurnsRefused": ("Turns refused as overloaded", "1 turns/s refused as busy over the last 5 minutes."),
    "TalkingHeadLateFrames": ("Video frames dropped as late", "10 frame slots/s dropped as late over the last 5 minutes."),
    "TalkingHeadMetricsDown": ("Triton metrics of p cannot be scraped", "Prometheus has not scraped p:8002 for 5 minutes: "
                               "the pod is down or its metrics port 8002 is closed."),
}


def test_promtool_alerts_fire_on_bad_series_and_stay_quiet_on_good_ones(rules_file):
    doc = yaml.safe_load(ALERT_TESTS)
    for case in doc["tests"][0]["alert_rule_test"]:
        for alert in case["exp_alerts"]:
            summary, description = FIRING[case["alertname"]]
            alert["exp_annotations"] = {"summary": summary, "description": description}
    assert {c["alertname"] for c in doc["tests"][0]["alert_rule_test"]} == \
        {r["alert"] for g in rule_groups()["groups"] for r in g["rules"]}, "every alert is tested"
    tests = rules_file.parent / "alerts.test.yaml"
    tests.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = promtool("test", "rules", tests.name, cwd=rules_file.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_and_dashboard_use_only_defined_metrics_in_seconds():
    defined = {m.name for m in metrics.ALL}
    exprs = [r["expr"] for g in rule_groups()["groups"] for r in g["rules"]] + promql_exprs_of_dashboard()
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in metric_names(e) if m.startswith("talking_")}
    assert used <= defined, f"not defined in ensemble/metrics.py: {used - defined}"
    assert not [m for m in defined if m.endswith("_ms")], "latency histograms are in seconds"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    turns = [p for p in panels if any("talking_head_turns_total" in t["expr"] for t in p.get("targets", []))]
    assert turns and turns[0]["fieldConfig"]["defaults"]["unit"] == "reqps", "a turns-per-second panel"
    for p in panels:
        if any("_seconds_bucket" in t["expr"] for t in p.get("targets", [])):
            assert p["fieldConfig"]["defaults"]["unit"] == "s", p["title"]
