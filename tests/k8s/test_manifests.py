"""Every manifest is a valid Kubernetes object: each file as it is and each kustomization as
rendered (patches applied), by `kubernetes-validate --strict` for built-in kinds, and by
jsonschema against the CRD's schema (schemas/) for ServiceMonitor, PrometheusRule and
ScaledObject, which kubernetes-validate only warns about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from .conftest import CRD_SCHEMAS, K8S, KUSTOMIZATIONS, SCHEMAS, manifest_files
from .kustomize_render import load_documents

# The oldest Kubernetes the manifests are written for (native sleep preStop, GA
# ValidatingAdmissionPolicy and unhealthyPodEvictionPolicy) and the newest schema bundled.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = yaml.safe_load((SCHEMAS / CRD_SCHEMAS[kind]).read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def native_files(tmp_path_factory, rendered) -> dict[str, Path]:
    """Every manifest file and every rendered kustomization, custom resources left out, each
    written to its own file named after its source (kubernetes-validate names files, not objects)."""
    out_dir = tmp_path_factory.mktemp("native")
    sources = {str(p.relative_to(K8S)): load_documents(p) for p in manifest_files()}
    sources |= {f"rendered {name}": docs for name, docs in rendered.items()}
    files = {}
    for label, docs in sources.items():
        native = [d for d in docs if d["kind"] not in CRD_SCHEMAS]
        if native:
            path = out_dir / (label.replace("/", "__").replace(" ", "_") + ".yaml")
            path.write_text(yaml.safe_dump_all(native))
            files[label] = path
    return files


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_kubernetes_validate_strict(native_files, version):
    out = subprocess.run([str(VALIDATE), "--strict", "--kubernetes-version", version,
                          *map(str, native_files.values())],
                         capture_output=True, text=True, timeout=240)
    report = out.stdout + out.stderr
    # Unknown kinds and versions only warn (exit 0): any line that isn't a pass is a failure.
    bad = [line for line in report.splitlines() if line.strip() and not line.startswith("INFO")]
    assert out.returncode == 0 and not bad, report
    passed = sum(" passed " in line for line in report.splitlines())
    assert passed == sum(len(list(yaml.safe_load_all(p.read_text()))) for p in native_files.values())


def custom_resources(rendered) -> list[tuple[str, dict]]:
    found = [(str(p.relative_to(K8S)), d) for p in manifest_files() for d in load_documents(p)]
    found += [(f"rendered {name}", d) for name, docs in rendered.items() for d in docs]
    return [(label, d) for label, d in found if d["apiVersion"].split("/")[0].endswith(
        (".coreos.com", ".sh", "cert-manager.io")) or d["kind"] in CRD_SCHEMAS]


def test_custom_resources_match_their_crd_schema(rendered):
    crs = custom_resources(rendered)
    assert {d["kind"] for _, d in crs} == set(CRD_SCHEMAS), "a CRD kind without a schema here"
    problems = []
    for label, doc in crs:
        for error in crd_validator(doc["kind"]).iter_errors(doc):
            problems.append(f"{label} {doc['kind']}/{doc['metadata']['name']} "
                            f"{'.'.join(map(str, error.absolute_path))}: {error.message}")
    assert not problems, "\n".join(problems)


def test_keda_scaledobjects_match_the_crd_schema():
    docs = load_documents(K8S / "overlays" / "keda" / "scaledobjects.yaml")
    assert [d["kind"] for d in docs] == ["ScaledObject", "ScaledObject"]
    for doc in docs:
        crd_validator("ScaledObject").validate(doc)


@pytest.mark.parametrize("kind, path, bad_value", [
    ("ScaledObject", ("spec", "minReplicas"), 1),                      # it is minReplicaCount
    ("ScaledObject", ("spec", "triggers", 0, "metadata", "threshold"), 16),  # must be a string
    ("ServiceMonitor", ("spec", "endpoints", 0, "intervall"), "15s"),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "for"), "ten minutes"),
    ("Certificate", ("spec", "privateKey", "algorithm"), "EC"),         # it is ECDSA
    ("Certificate", ("spec", "issuerRef", "nmae"), "imagemesh-ca"),
    ("Issuer", ("spec", "vault"), {"server": "https://vault"}),         # a second issuer type
])
def test_crd_schemas_reject_typical_mistakes(kind, path, bad_value):
    """The schema excerpts are strict enough to catch a misspelt field or a wrong type."""
    source = {"ScaledObject": K8S / "overlays" / "keda" / "scaledobjects.yaml",
              "ServiceMonitor": K8S / "base" / "monitoring.yaml",
              "PrometheusRule": K8S / "base" / "alerts.yaml",
              "Certificate": K8S / "overlays" / "tls" / "certificates.yaml",
              "Issuer": K8S / "overlays" / "tls" / "certificates.yaml"}[kind]
    doc = next(d for d in load_documents(source) if d["kind"] == kind)
    crd_validator(kind).validate(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad_value
    with pytest.raises(jsonschema.ValidationError):
        crd_validator(kind).validate(doc)


def test_every_kustomization_is_covered():
    shipped = {p.parent for p in K8S.rglob("kustomization.yaml")}
    assert shipped == set(KUSTOMIZATIONS.values())
