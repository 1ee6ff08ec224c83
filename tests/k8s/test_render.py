"""What the rendered overlays must say: the renderer agrees with kustomize, each overlay is
self-consistent (references resolve, selectors select, probes hit declared ports), and the
process facts hold (drain grace, settings names, GPU only where meant)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import shutil
import subprocess

import pytest
import yaml

from enhance_worker.settings import EnhanceSettings
from gateway.settings import GatewaySettings
from gen_worker.settings import WorkerSettings

from .conftest import KUSTOMIZATIONS, OVERLAYS
from .kustomize_render import pod_spec

SETTINGS = {"imagemesh-gateway": GatewaySettings, "imagemesh-gen-worker": WorkerSettings,
            "imagemesh-enhance-worker": EnhanceSettings}
# Variables in the manifests that are not (yet) settings, each with its reason.
NOT_SETTINGS = {
    "IMAGEMESH_POD_NAME": "pod-deletion-cost annotation (imagemesh/podcost.py, k8s/README.md)",
    "IMAGEMESH_POD_NAMESPACE": "pod-deletion-cost annotation, as above",
    "HOME": "torch / numba caches on the writable /tmp",
}
EXIT_MARGIN = 10  # seconds a drained process needs to hand back work and exit


def by_kind(resources: list[dict], kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def imagemesh_containers(resources):
    for dep in by_kind(resources, "Deployment").values():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            if c["command"][0] in SETTINGS:
                yield dep, c


def env_value(container: dict, name: str) -> str | None:
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), None)


def normalised(resource: dict) -> dict:
    """kustomize wraps long base64 Secret values over several lines; compare the bytes."""
    if resource["kind"] == "Secret":
        resource = {**resource, "data": {k: base64.b64decode(v.replace("\n", ""))
                                         for k, v in resource.get("data", {}).items()}}
    return resource


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_agrees_with_kubectl_kustomize(name, rendered):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the Python renderer is not cross-checked here")
    out = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZATIONS[name])],
                         capture_output=True, text=True, timeout=60, check=True)
    def key(r):
        return r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"]
    theirs = {key(r): normalised(r) for r in yaml.safe_load_all(out.stdout) if r}
    ours = {key(r): normalised(r) for r in rendered[name]}
    assert ours == theirs


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_drain_fits_in_the_termination_grace(overlay, rendered):
    for dep, c in imagemesh_containers(rendered[overlay]):
        spec = dep["spec"]["template"]["spec"]
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain = float(env_value(c, "IMAGEMESH_DRAIN_SECONDS"))
        assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + EXIT_MARGIN, dep["metadata"]["name"]


@pytest.mark.parametrize("overlay", ("base", "prod", "keda"))
def test_generation_workers_drain_as_long_as_the_longest_provider_job(overlay, rendered):
    config = by_kind(rendered[overlay], "ConfigMap")["imagemesh-config"]["data"]
    gen = by_kind(rendered[overlay], "Deployment")["imagemesh-gen-worker"]
    drain = float(env_value(gen["spec"]["template"]["spec"]["containers"][0], "IMAGEMESH_DRAIN_SECONDS"))
    assert drain >= float(config["IMAGEMESH_MAX_JOB_RUNTIME"])


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_probes_are_native_grpc_on_the_port_the_process_serves_health_on(overlay, rendered):
    """Every process (the gateway too: its API port may speak TLS, which probes can't) serves
    health in plaintext on IMAGEMESH_HEALTH_PORT, bound to every interface so the kubelet
    reaches it. Readiness asks for the overall status (able to work: connected to a gateway,
    Redis answering); startup and liveness for `liveness` (the process runs), so an outage of
    the gateway or Redis never restarts pods."""
    for dep, c in imagemesh_containers(rendered[overlay]):
        served = env_value(c, "IMAGEMESH_HEALTH_PORT")
        assert env_value(c, "IMAGEMESH_HEALTH_HOST") == "0.0.0.0", dep["metadata"]["name"]
        declared = {p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = c[probe]["grpc"]["port"]
            assert isinstance(port, int) and str(port) == served and port in declared, (dep["metadata"]["name"], probe)
            wanted = "" if probe == "readinessProbe" else "liveness"
            assert c[probe]["grpc"].get("service", "") == wanted, (dep["metadata"]["name"], probe)


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_each_process_has_its_own_ports_and_metrics_are_scraped_where_served(overlay, rendered):
    """No two processes share a health or metrics port, none uses Prometheus's 9090, metrics
    bind every interface, and the metrics Service's named target port exists on every pod."""
    seen: dict[int, str] = {}
    for dep, c in imagemesh_containers(rendered[overlay]):
        name = dep["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert str(ports["metrics"]) == env_value(c, "IMAGEMESH_METRICS_PORT"), name
        assert env_value(c, "IMAGEMESH_METRICS_HOST") == "0.0.0.0", name
        for kind in ("metrics", "health"):
            assert ports[kind] != 9090 and ports[kind] not in seen, (name, kind, seen)
            seen[ports[kind]] = f"{name} {kind}"
    metrics_svc = by_kind(rendered[overlay], "Service")["imagemesh-metrics"]
    assert [p["targetPort"] for p in metrics_svc["spec"]["ports"]] == ["metrics"]


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_every_imagemesh_variable_is_a_setting_of_that_process(overlay, rendered):
    for dep, c in imagemesh_containers(rendered[overlay]):
        known = {"IMAGEMESH_" + f.name.upper() for f in dataclasses.fields(SETTINGS[c["command"][0]])}
        unknown = {e["name"] for e in c["env"]} - known - set(NOT_SETTINGS)
        assert not unknown, (dep["metadata"]["name"], unknown)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_secret_references_resolve(overlay, rendered, secret_template):
    resources = rendered[overlay]
    config_maps = {n: set(r.get("data", {})) for n, r in by_kind(resources, "ConfigMap").items()}
    # prod and keda take their Secrets from the template's keys (created out of band).
    secrets_source = resources if by_kind(resources, "Secret") else secret_template
    def keys(docs):
        return {r["metadata"]["name"]: set(r.get("data", {})) | set(r.get("stringData", {}))
                for r in docs if r["kind"] == "Secret"}
    secrets, template = keys(secrets_source), keys(secret_template)
    for dep in by_kind(resources, "Deployment").values():
        for c in pod_spec(dep)["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in config_maps[ref["configMapKeyRef"]["name"]], e
                if "secretKeyRef" in ref:
                    name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
                    assert key in template[name], e  # the template documents every key
                    if not ref["secretKeyRef"].get("optional"):
                        assert key in secrets[name], e


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_services_budgets_and_autoscalers_find_their_pods(overlay, rendered):
    resources = rendered[overlay]
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in resources if pod_spec(w) is not None]
    for svc in by_kind(resources, "Service").values():
        assert any(selects(svc["spec"]["selector"], p) for p in pods), svc["metadata"]["name"]
    for pdb in by_kind(resources, "PodDisruptionBudget").values():
        assert any(selects(pdb["spec"]["selector"]["matchLabels"], p) for p in pods), pdb["metadata"]["name"]
    deployments = by_kind(resources, "Deployment")
    scalers = list(by_kind(resources, "HorizontalPodAutoscaler").values()) + \
        list(by_kind(resources, "ScaledObject").values())
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in scalers]
    assert set(targets) <= set(deployments) and len(targets) == len(set(targets)), targets
    for hpa in by_kind(resources, "HorizontalPodAutoscaler").values():
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployments[hpa["spec"]["scaleTargetRef"]["name"]]["spec"], \
            "a Deployment under an HPA must not pin replicas (each apply would reset them)"


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_workers_dial_the_headless_service_of_ready_gateways(overlay, rendered):
    services = by_kind(rendered[overlay], "Service")
    for dep, c in imagemesh_containers(rendered[overlay]):
        if c["command"][0] == "imagemesh-gateway":
            continue
        host, _, port = env_value(c, "IMAGEMESH_GATEWAY").partition(":")
        svc = services[host]["spec"]
        assert svc["clusterIP"] == "None" and not svc.get("publishNotReadyAddresses")
        assert svc["selector"]["app.kubernetes.io/component"] == "gateway"
        assert int(port) in {p["port"] for p in svc["ports"]}


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_pods_meet_the_restricted_pod_security_standard(overlay, rendered):
    for w in rendered[overlay]:
        spec = pod_spec(w)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]


def gpu_limit(dep: dict) -> object:
    return pod_spec(dep)["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu")


def test_dev_runs_one_of_each_on_cpu_with_its_own_redis(rendered):
    resources = rendered["dev"]
    deployments = by_kind(resources, "Deployment")
    assert {d["spec"]["replicas"] for d in deployments.values()} == {1}
    assert not by_kind(resources, "HorizontalPodAutoscaler")
    enhance = deployments["imagemesh-enhance-worker"]
    assert gpu_limit(enhance) is None and "nodeSelector" not in pod_spec(enhance)
    assert not pod_spec(enhance).get("initContainers")
    assert env_value(pod_spec(enhance)["containers"][0], "IMAGEMESH_FALLBACK") == "true"
    redis = by_kind(resources, "StatefulSet")["imagemesh-redis"]
    args = pod_spec(redis)["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    secret = by_kind(resources, "Secret")["imagemesh-secrets"]["data"]
    assert base64.b64decode(secret["redis-url"]).decode().startswith("redis://imagemesh-redis:6379")


def test_dev_worker_key_is_configured_hashed_with_the_worker_role(rendered):
    secrets = by_kind(rendered["dev"], "Secret")
    worker_key = base64.b64decode(secrets["imagemesh-worker-key"]["data"]["api-key"]).decode()
    entries = base64.b64decode(secrets["imagemesh-secrets"]["data"]["api-keys"]).decode().split(",")
    assert any(e.split(":")[-2:] == ["worker", hashlib.sha256(worker_key.encode()).hexdigest()] for e in entries)


@pytest.mark.parametrize("overlay", ("prod", "keda"))
def test_prod_uses_gpus_guaranteed_resources_and_an_external_secret(overlay, rendered):
    resources = rendered[overlay]
    assert not by_kind(resources, "Secret"), "prod Secrets are created out of band, never rendered"
    assert not by_kind(resources, "StatefulSet"), "prod uses a managed Redis"
    deployments = by_kind(resources, "Deployment")
    assert gpu_limit(deployments["imagemesh-enhance-worker"]) == 1
    for dep, c in imagemesh_containers(resources):
        assert c["resources"]["requests"] == c["resources"]["limits"], dep["metadata"]["name"]


def test_keda_overlay_replaces_the_worker_hpas_and_may_scale_enhance_to_zero(rendered):
    resources = rendered["keda"]
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(resources, "HorizontalPodAutoscaler").values()}
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in by_kind(resources, "ScaledObject").values()}
    assert hpas == {"imagemesh-gateway"}
    assert set(scaled) == {"imagemesh-gen-worker", "imagemesh-enhance-worker"}
    assert scaled["imagemesh-enhance-worker"]["spec"]["minReplicaCount"] == 0
    namespace = by_kind(resources, "Deployment")["imagemesh-gen-worker"]["metadata"]["namespace"]
    for so in scaled.values():
        assert so["metadata"]["namespace"] == namespace
        for trigger in so["spec"]["triggers"]:
            assert f'namespace="{namespace}"' in trigger["metadata"]["query"]
