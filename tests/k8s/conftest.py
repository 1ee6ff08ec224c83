"""What the k8s/ checks share: where the manifests are, every kustomization rendered, the
metrics ImageMesh defines, and promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .kustomize_render import load_documents, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Every kustomization we ship, by a short name.
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
    "keda": K8S / "overlays" / "keda",
    "tls": K8S / "overlays" / "tls",
    "prometheus-adapter": K8S / "prometheus-adapter",
    "cluster": K8S / "cluster",
}
OVERLAYS = ("dev", "prod", "keda", "tls")

# Kinds that are CustomResourceDefinitions' (kubernetes-validate has no schema for them): each
# is validated against the CRD schema excerpt in schemas/.
CRD_SCHEMAS = {
    "ServiceMonitor": "servicemonitor.yaml",
    "PrometheusRule": "prometheusrule.yaml",
    "ScaledObject": "scaledobject.yaml",
    "Certificate": "certificate.yaml",
    "Issuer": "issuer.yaml",
}


def manifest_files() -> list[Path]:
    """Every file that holds whole Kubernetes objects: those a kustomization lists as a
    resource, plus the Secret template (applied by hand). Patches are partial objects; they
    are validated inside their rendered overlay."""
    files = {K8S / "base" / "secrets.template.yaml"}
    for directory in KUSTOMIZATIONS.values():
        kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
        files |= {directory / r for r in kust.get("resources", []) if (directory / r).is_file()}
    return sorted(files)


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return {name: render(path) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(scope="session")
def secret_template() -> list[dict]:
    return load_documents(K8S / "base" / "secrets.template.yaml")


# The inventory runs in a child process: touching every labelled metric (so each family has
# samples) must not leave extra series in the registry the other tests of this session share.
_INVENTORY = r"""
import json
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase
import imagemesh.metrics as m

for obj in vars(m).values():
    if isinstance(obj, MetricWrapperBase) and obj._labelnames:  # no public accessor
        obj.labels(*["x"] * len(obj._labelnames))
families = {}
for family in REGISTRY.collect():
    if not family.name.startswith("imagemesh_"):
        continue
    labels = sorted({k for s in family.samples for k in s.labels} - {"le", "quantile"})
    families[family.name] = {"type": family.type, "labels": labels,
                             "samples": sorted({s.name for s in family.samples})}
print(json.dumps({"families": families, "exposition": generate_latest(REGISTRY).decode()}))
"""


@pytest.fixture(scope="session")
def metric_inventory() -> dict:
    """{"families": {family: {type, labels, samples}}, "exposition": text} of imagemesh.metrics."""
    out = subprocess.run([sys.executable, "-c", _INVENTORY], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install the Debian package `prometheus` "
                    "(`apt-get install -y prometheus`, or `make system-deps`); CI has it")
    return path
