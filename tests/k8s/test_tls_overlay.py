"""The TLS example overlay (k8s/overlays/tls): every gRPC connection is mutual TLS with
certificates cert-manager issues and renews. Each process's IMAGEMESH_TLS_* paths are files of
a mounted Secret that a Certificate of the overlay fills (mounted whole, so renewals reach the
running process); the gateway's certificate names every Service workers and clients dial; the
Services no longer announce cleartext HTTP/2; the other overlays stay plaintext."""

from __future__ import annotations

from pathlib import PurePosixPath

from .conftest import OVERLAYS
from .kustomize_render import pod_spec

CERT_MANAGER_FILES = {"tls.crt", "tls.key", "ca.crt"}  # what cert-manager writes in a Secret
SERVER = {"IMAGEMESH_TLS_CERT", "IMAGEMESH_TLS_KEY", "IMAGEMESH_TLS_CLIENT_CA"}
DIALER = {"IMAGEMESH_TLS_CA", "IMAGEMESH_TLS_CERT", "IMAGEMESH_TLS_KEY"}


def of_kind(resources, kind):
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def tls_env(container) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if e["name"].startswith("IMAGEMESH_TLS_")}


def test_every_process_has_mutual_tls_from_a_certificate_secret(rendered):
    resources = rendered["tls"]
    certificates = of_kind(resources, "Certificate")
    issued = {c["spec"]["secretName"]: c for c in certificates.values()}
    expected = {"imagemesh-gateway": SERVER, "imagemesh-gen-worker": DIALER, "imagemesh-enhance-worker": DIALER}
    for name, wanted in expected.items():
        spec = pod_spec(of_kind(resources, "Deployment")[name])
        container = spec["containers"][0]
        env = tls_env(container)
        assert set(env) == wanted, (name, env)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for setting, path in env.items():
            path = PurePosixPath(path)
            mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent)
            assert mount.get("readOnly") and "subPath" not in mount, (name, mount)  # subPath never updates
            secret = volumes[mount["name"]]["secret"]["secretName"]
            assert secret in issued and path.name in CERT_MANAGER_FILES, (name, setting, secret)
        usage = "server auth" if name == "imagemesh-gateway" else "client auth"
        assert usage in issued[secret]["spec"]["usages"], name


def test_the_gateway_certificate_names_every_service_it_is_dialled_by(rendered):
    resources = rendered["tls"]
    names = set(of_kind(resources, "Certificate")["imagemesh-gateway-tls"]["spec"]["dnsNames"])
    namespace = of_kind(resources, "Deployment")["imagemesh-gateway"]["metadata"]["namespace"]
    for service in ("imagemesh-gateway", "imagemesh-gateway-workers"):
        assert {service, f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"} <= names
    for dep in of_kind(resources, "Deployment").values():
        for e in pod_spec(dep)["containers"][0].get("env", []):
            if e["name"] == "IMAGEMESH_GATEWAY":
                assert e["value"].partition(":")[0] in names


def test_every_issuer_reference_resolves_within_the_overlay(rendered):
    resources = rendered["tls"]
    issuers = of_kind(resources, "Issuer")
    for cert in of_kind(resources, "Certificate").values():
        ref = cert["spec"]["issuerRef"]
        assert ref.get("kind", "Issuer") == "Issuer" and ref["name"] in issuers, cert["metadata"]["name"]
    ca = of_kind(resources, "Certificate")["imagemesh-ca"]["spec"]
    assert ca["isCA"] is True and issuers["imagemesh-ca"]["spec"]["ca"]["secretName"] == ca["secretName"]


def test_tls_services_drop_the_cleartext_http2_hint_and_other_overlays_stay_plaintext(rendered):
    for overlay in ("base", *OVERLAYS):
        services = of_kind(rendered[overlay], "Service")
        for name in ("imagemesh-gateway", "imagemesh-gateway-workers"):
            hint = services[name]["spec"]["ports"][0].get("appProtocol")
            assert hint == (None if overlay == "tls" else "kubernetes.io/h2c"), (overlay, name)
        if overlay != "tls":
            for dep in of_kind(rendered[overlay], "Deployment").values():
                assert not tls_env(pod_spec(dep)["containers"][0]), (overlay, dep["metadata"]["name"])
