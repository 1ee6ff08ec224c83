"""The NetworkPolicies allow exactly the traffic ImageMesh needs, evaluated offline on each
rendered overlay by a small model of NetworkPolicy semantics (the rules of
networking.k8s.io/v1: a pod selected by any policy of a direction is isolated in it, and a
connection must then match a rule of one of those policies; named ports resolve on the
destination pod): clients and workers reach the gateway's gRPC port, Prometheus reaches every
metrics port, workers reach the gateway, DNS and HTTPS, the gateway reaches Redis, and nothing
else — not Redis from a worker or a client, not the gateway from an unlabelled pod."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from .conftest import OVERLAYS
from .kustomize_render import pod_spec


@dataclass
class Pod:
    name: str
    namespace: str | None  # None: outside the cluster (a provider API, a managed Redis)
    labels: dict = field(default_factory=dict)
    ports: dict = field(default_factory=dict)  # name -> containerPort


def selects(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels and matchExpressions); {} selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def peer_matches(peer: dict, other: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        raise NotImplementedError("ipBlock peers: extend the model before using them")
    if other.namespace is None:
        return False  # pod and namespace selectors only ever match pods
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def port_matches(rule_ports: list | None, destination: Pod, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        wanted = p.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            wanted = destination.ports.get(wanted)  # a named port: the destination pod's
        if wanted is not None and (wanted == port or wanted <= port <= p.get("endPort", wanted)):
            return True
    return False


def allowed_in(policies, direction: str, pod: Pod, other: Pod, destination: Pod, port: int, protocol: str) -> bool:
    """Is `pod`'s side of the connection allowed in `direction` (Ingress: other -> pod)?"""
    if pod.namespace is None:
        return True  # outside the cluster: no policy applies
    applying = [p for p in policies if p["metadata"]["namespace"] == pod.namespace
                and selects(p["spec"]["podSelector"], pod.labels)
                and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not applying:
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in applying:
        for rule in policy["spec"].get(rules_key, []):
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(peer, other, policy["metadata"]["namespace"]) for peer in peers)) \
                    and port_matches(rule.get("ports"), destination, port, protocol):
                return True
    return False


def can_connect(policies, source: Pod, destination: Pod, port: int, protocol: str = "TCP") -> bool:
    return (allowed_in(policies, "Egress", source, destination, destination, port, protocol)
            and allowed_in(policies, "Ingress", destination, source, destination, port, protocol))


def pods_of(resources: list[dict], namespace: str) -> dict[str, Pod]:
    out = {}
    for workload in resources:
        spec = pod_spec(workload)
        if spec is None:
            continue
        ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", []) if "name" in p}
        out[workload["metadata"]["name"]] = Pod(workload["metadata"]["name"], namespace,
                                                workload["spec"]["template"]["metadata"]["labels"], ports)
    return out


@pytest.fixture(params=("base", *OVERLAYS))
def cluster(request, rendered):
    resources = rendered[request.param]
    namespace = next((r["metadata"].get("namespace") for r in resources if r["kind"] == "Deployment"), None) or "default"
    policies = [dict(p, metadata={**p["metadata"], "namespace": namespace}) for p in resources
                if p["kind"] == "NetworkPolicy"]
    pods = pods_of(resources, namespace)
    pods |= {
        "client": Pod("client", "apps", {"imagemesh.io/client": "true", "app": "shop"}),
        "stranger": Pod("stranger", "apps", {"app": "shop"}),
        "stranger-here": Pod("stranger-here", namespace, {"app": "debug"}),
        "prometheus": Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        "internet": Pod("internet", None),
    }
    return request.param, policies, pods


def test_every_overlay_ships_the_policies(rendered):
    for name in ("base", *OVERLAYS):
        names = {r["metadata"]["name"] for r in rendered[name] if r["kind"] == "NetworkPolicy"}
        assert names == {"imagemesh-default-deny", "imagemesh-gateway", "imagemesh-workers", "imagemesh-redis"}, name


def test_clients_and_workers_reach_the_gateway_grpc_port_and_nothing_else_does(cluster):
    _, policies, pods = cluster
    gw = pods["imagemesh-gateway"]
    for source in ("client", "imagemesh-gen-worker", "imagemesh-enhance-worker"):
        assert can_connect(policies, pods[source], gw, 50051), source
    for source in ("stranger", "stranger-here", "prometheus", "internet"):
        assert not can_connect(policies, pods[source], gw, 50051), source
    assert not can_connect(policies, pods["client"], gw, gw.ports["metrics"])
    assert not can_connect(policies, pods["client"], gw, gw.ports["health"])  # probes come from the node


def test_prometheus_scrapes_every_metrics_port_and_only_that(cluster):
    _, policies, pods = cluster
    for name in ("imagemesh-gateway", "imagemesh-gen-worker", "imagemesh-enhance-worker"):
        pod = pods[name]
        assert can_connect(policies, pods["prometheus"], pod, pod.ports["metrics"]), name
        assert not can_connect(policies, pods["prometheus"], pod, pod.ports["health"]), name
        assert not can_connect(policies, pods["stranger"], pod, pod.ports["metrics"]), name


def test_workers_reach_the_gateway_dns_and_https_only(cluster):
    _, policies, pods = cluster
    for name in ("imagemesh-gen-worker", "imagemesh-enhance-worker"):
        worker = pods[name]
        assert can_connect(policies, worker, pods["internet"], 443), name       # provider APIs
        assert can_connect(policies, worker, pods["internet"], 53, "UDP"), name  # DNS
        assert not can_connect(policies, worker, pods["internet"], 80), name
        assert not can_connect(policies, worker, pods["internet"], 6379), name  # no Redis
        assert not can_connect(policies, worker, pods["stranger-here"], 8080), name
        assert not can_connect(policies, pods["imagemesh-gateway"], worker, worker.ports["health"]), name


def test_redis_answers_the_gateways_only(cluster):
    overlay, policies, pods = cluster
    gw = pods["imagemesh-gateway"]
    assert can_connect(policies, gw, pods["internet"], 6379)  # a managed Redis
    assert not can_connect(policies, gw, pods["internet"], 443)  # the gateway calls no provider
    redis = pods.get("imagemesh-redis")
    if overlay != "dev":
        assert redis is None
        return
    assert can_connect(policies, gw, redis, 6379)
    for source in ("imagemesh-gen-worker", "imagemesh-enhance-worker", "client", "stranger-here", "prometheus"):
        assert not can_connect(policies, pods[source], redis, 6379), source


def test_the_model_denies_what_no_policy_allows():
    """The evaluator itself: an isolated pod refuses; an unselected pod accepts."""
    deny = {"metadata": {"name": "d", "namespace": "ns"},
            "spec": {"podSelector": {"matchLabels": {"a": "1"}}, "policyTypes": ["Ingress"]}}
    isolated, open_pod = Pod("x", "ns", {"a": "1"}), Pod("y", "ns", {"a": "2"})
    source = Pod("s", "ns", {})
    assert not can_connect([deny], source, isolated, 80)
    assert can_connect([deny], source, open_pod, 80)
