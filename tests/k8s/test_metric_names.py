"""Every metric and label that the HPAs, the adapter rules, the alerts, the KEDA triggers and the
dashboard use is one imagemesh/metrics.py defines (read from the prometheus_client registry),
so a renamed metric can't silently leave an autoscaler or an alert looking at nothing."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from .conftest import K8S

# Labels Prometheus adds to every scraped series (the Prometheus Operator's target labels,
# plus `component` from the ServiceMonitor's relabeling), and the histogram bucket label.
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "container", "endpoint",
                 "component", "le"}


def adapter_config() -> dict:
    return yaml.safe_load((K8S / "prometheus-adapter" / "config.yaml").read_text())


def queries() -> dict[str, str]:
    """Every PromQL expression we ship, by where it is."""
    found = {}
    adapter = adapter_config()
    for section in ("rules", "externalRules"):
        for i, rule in enumerate(adapter.get(section, [])):
            found[f"adapter {section}[{i}] seriesQuery"] = rule["seriesQuery"]
            # <<.Series>> is the seriesQuery's metric; <<.LabelMatchers>>/<<.GroupBy>> are filled in.
            series = re.match(r"\w+", rule["seriesQuery"]).group(0)
            found[f"adapter {section}[{i}] metricsQuery"] = (
                rule["metricsQuery"].replace("<<.Series>>", series)
                .replace("<<.LabelMatchers>>", "").replace("<<.GroupBy>>", "pod"))
    for group in yaml.safe_load((K8S / "base" / "alerts.yaml").read_text())["spec"]["groups"]:
        for rule in group["rules"]:
            found[f"alert {rule['alert']}"] = rule["expr"]
    for so in yaml.safe_load_all((K8S / "overlays" / "keda" / "scaledobjects.yaml").read_text()):
        for trigger in so["spec"]["triggers"]:
            found[f"keda {so['metadata']['name']} {trigger['name']}"] = trigger["metadata"]["query"]
    dashboard = json.loads((K8S / "base" / "imagemesh-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"dashboard '{panel['title']}' {target['refId']}"] = target["expr"].replace("$namespace", "x")
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            found[f"dashboard variable {var['name']}"] = var["definition"]
    return found


def hpa_metric_names() -> dict[str, tuple[str, str]]:
    """HPA metric name -> (type, where), over every HorizontalPodAutoscaler in base/."""
    names = {}
    for path in (K8S / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "HorizontalPodAutoscaler":
                for metric in doc["spec"]["metrics"]:
                    kind = metric["type"]
                    if kind in ("External", "Pods", "Object"):
                        source = metric[kind[0].lower() + kind[1:]]
                        names[source["metric"]["name"]] = (kind, doc["metadata"]["name"])
    return names


def used(expr: str) -> tuple[set[str], set[tuple[str | None, str]]]:
    """(metric names, (metric or None, label) pairs) an expression refers to."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values and strings can't be mistaken for names
    metrics = set(re.findall(r"\bimagemesh_\w+", expr))
    labels: set[tuple[str | None, str]] = set()
    for metric, matchers in re.findall(r"(\bimagemesh_\w+)?\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            labels.add((metric or None, label))
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {(None, label.strip()) for label in group.split(",") if label.strip()}
    for call in re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr):
        labels.add((None, call))
    return metrics, labels


@pytest.fixture(scope="module")
def names(metric_inventory) -> tuple[dict[str, str], dict[str, set[str]]]:
    """(sample name -> family, family -> its labels)."""
    families = metric_inventory["families"]
    sample_to_family = {s: f for f, info in families.items() for s in info["samples"]}
    return sample_to_family, {f: set(info["labels"]) for f, info in families.items()}


def test_queries_use_only_defined_metrics_and_their_labels(names):
    sample_to_family, family_labels = names
    all_labels = set().union(*family_labels.values()) | TARGET_LABELS
    problems = []
    for where, expr in queries().items():
        metrics, labels = used(expr)
        assert metrics, f"{where}: no ImageMesh metric in {expr!r}"
        for metric in metrics - set(sample_to_family):
            problems.append(f"{where}: unknown metric {metric}")
        for metric, label in labels:
            allowed = all_labels if metric is None or metric not in sample_to_family \
                else family_labels[sample_to_family[metric]] | TARGET_LABELS
            if label not in allowed:
                problems.append(f"{where}: label {label!r}" + (f" is not a label of {metric}" if metric else " is unknown"))
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_renamed_metric_or_label(names):
    sample_to_family, _ = names
    metrics, labels = used('max by (pool) (imagemesh_schedulable_backlogs{pol="generate"})')
    assert metrics - set(sample_to_family) == {"imagemesh_schedulable_backlogs"}
    assert ("imagemesh_schedulable_backlogs", "pol") in labels


def test_hpa_metrics_are_served_by_the_adapter_rules(names):
    sample_to_family, family_labels = names
    adapter = adapter_config()
    served = {"External": {r["name"]["as"] for r in adapter["externalRules"]},
              "Pods": {r["name"]["as"] for r in adapter["rules"]}}
    hpa = hpa_metric_names()
    assert hpa, "no HPA metric found"
    for name, (kind, where) in hpa.items():
        assert name in served.get(kind, set()), f"{where}: {kind} metric {name} has no adapter rule"
    # The adapter exposes each metric under a name ImageMesh defines, so dashboards and HPAs agree.
    for name in served["External"] | served["Pods"]:
        assert name in sample_to_family, name


def test_hpa_selectors_use_labels_of_the_metric(names):
    sample_to_family, family_labels = names
    for path in (K8S / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "HorizontalPodAutoscaler":
                for metric in doc["spec"]["metrics"]:
                    if metric["type"] == "External":
                        m = metric["external"]["metric"]
                        labels = set(m.get("selector", {}).get("matchLabels", {}))
                        assert labels <= family_labels[sample_to_family[m["name"]]], m


def test_pool_names_are_the_gateways():
    from gateway.dispatch import POOLS
    for where, expr in queries().items():
        for pool in re.findall(r'pool="(\w+)"', expr):
            assert pool in POOLS, where
    for path in (K8S / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "HorizontalPodAutoscaler":
                for metric in doc["spec"]["metrics"]:
                    if metric["type"] == "External":
                        assert metric["external"]["metric"]["selector"]["matchLabels"]["pool"] in POOLS
