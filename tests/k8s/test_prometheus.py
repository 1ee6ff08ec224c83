"""The alert rules and the metrics exposition, checked by promtool (Debian package `prometheus`).

These FAIL, never skip, when promtool is missing: CI installs it (`make system-deps`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import K8S

RULES_TEST = Path(__file__).resolve().parent / "rules_test.yaml"


def rule_groups() -> list[dict]:
    """The PrometheusRule's groups: exactly what the Prometheus Operator writes to a rule file."""
    return yaml.safe_load((K8S / "base" / "alerts.yaml").read_text())["spec"]["groups"]


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "imagemesh-alerts.rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    return tmp_path


def run(cmd: list[str], cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool_check(promtool, rules_dir):
    out = run([promtool, "check", "rules", "imagemesh-alerts.rules.yaml"], cwd=rules_dir)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rule_unit_tests_pass(promtool, rules_dir):
    out = run([promtool, "test", "rules", RULES_TEST.name], cwd=rules_dir)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_that_fires_it():
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}
    fired = {case["alertname"] for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
             for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert alerts == fired


def exposition_families(inventory: dict) -> dict[str, str]:
    """The /metrics text split per metric family. The text format names a counter's block
    `<family>_total` and gives `_created` a block of its own: both go to their family."""
    owner = {name: family for family, info in inventory["families"].items()
             for name in [family, *info["samples"]]}
    blocks: dict[str, str] = {}
    for block in re.split(r"(?m)^(?=# HELP )", inventory["exposition"]):
        if block.startswith("# HELP imagemesh_"):
            family = owner[block.split()[2]]
            blocks[family] = blocks.get(family, "") + block
    return blocks


def test_exposition_has_every_family(metric_inventory):
    assert set(exposition_families(metric_inventory)) == set(metric_inventory["families"])


def test_metrics_exposition_passes_promtool_check(promtool, metric_inventory):
    """Each family's /metrics text, every labelled metric touched once, one promtool run each
    so a failure names the family."""
    problems = {}
    for name, block in exposition_families(metric_inventory).items():
        out = run([promtool, "check", "metrics"], stdin=block)
        if out.returncode != 0 or out.stdout.strip() or out.stderr.strip():
            problems[name] = (out.stdout + out.stderr).strip()
    assert not problems, problems
