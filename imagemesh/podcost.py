"""Keeps this worker pod's `controller.kubernetes.io/pod-deletion-cost` at its in-flight count,
so that a scale-down removes idle workers first instead of ones in the middle of long jobs.

Runs only inside Kubernetes (IMAGEMESH_POD_NAME / IMAGEMESH_POD_NAMESPACE from the downward
API, and the service account token mounted); elsewhere it does nothing. The RBAC and the
admission policy that limit the worker to its own annotation are in k8s/ (k8s/README.md).

What can go wrong: the API refuses (no RBAC: 403) or is unreachable: logged once, the worker
goes on; the annotation is only a hint to the ReplicaSet controller. Updates are rate-limited
(at most one per `min_interval`) and only sent when the value changes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx

log = logging.getLogger("imagemesh.podcost")

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class PodDeletionCost:
    def __init__(self, *, namespace: str, pod: str, api_url: str, token: str,
                 verify: str | bool = True, min_interval: float = 5.0) -> None:
        self.url = f"{api_url.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}"
        self._headers = {"Authorization": f"Bearer {token}",
                         "Content-Type": "application/merge-patch+json"}
        self._client = httpx.AsyncClient(verify=verify, timeout=5.0,
                                         transport=httpx.AsyncHTTPTransport(retries=0))
        self.min_interval = min_interval
        self._sent: int | None = None
        self._last = 0.0
        self._warned = False

    @classmethod
    def from_environment(cls) -> "PodDeletionCost | None":
        pod, namespace = os.environ.get("IMAGEMESH_POD_NAME"), os.environ.get("IMAGEMESH_POD_NAMESPACE")
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token_file = SA_DIR / "token"
        if not (pod and namespace and host and token_file.exists()):
            return None
        ca = SA_DIR / "ca.crt"
        return cls(namespace=namespace, pod=pod, api_url=f"https://{host}:{port}",
                   token=token_file.read_text().strip(), verify=str(ca) if ca.exists() else True)

    async def update(self, in_flight: int) -> None:
        """Set the cost to `in_flight` if it changed and the last update is old enough."""
        now = time.monotonic()
        if in_flight == self._sent or now - self._last < self.min_interval:
            return
        self._last = now
        body = {"metadata": {"annotations": {ANNOTATION: str(in_flight)}}}
        try:
            reply = await self._client.patch(self.url, json=body, headers=self._headers)
            reply.raise_for_status()
            self._sent = in_flight
        except httpx.HTTPError as exc:
            if not self._warned:
                log.warning("could not update %s (%s); scale-down may pick busy workers", ANNOTATION,
                            type(exc).__name__)
                self._warned = True

    async def aclose(self) -> None:
        await self._client.aclose()
