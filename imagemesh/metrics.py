"""Every Prometheus metric ImageMesh exports, in one place.

Conventions: base units (`_seconds`, `_bytes`), counters end in `_total`, no token or raw key in
any label. Per-key series are labelled with the key's alias (configured) or its fingerprint,
and the number of keys is bounded by configuration, so their cardinality is too.

Gauges computed from Redis (queue depth, backlog, lease state) hold mesh-wide values: every
gateway replica exports the same figure, so autoscaling queries take `max()` over replicas.
Gauges about connected workers are per gateway: queries `sum()` them.

Each process exports only the families of its role (`ROLES`): a generation worker has no
Redis, so it must not export `imagemesh_redis_up 0`, nor a gateway's empty queue gauges.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

# --- gateway: tasks and queues -------------------------------------------------------------
TASKS_ACCEPTED = Counter(
    "imagemesh_tasks_accepted_total", "Tasks accepted into a batch.", ["pool"])
TASKS_FINISHED = Counter(
    "imagemesh_tasks_finished_total", "Tasks that reached their final result.", ["pool", "outcome"])
TASK_DURATION = Histogram(
    "imagemesh_task_duration_seconds", "Accepted to final result.", ["pool"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
ATTEMPTS_REQUEUED = Counter(
    "imagemesh_attempts_requeued_total", "Attempts put back in a queue.", ["pool", "reason"])
QUEUE_DEPTH = Gauge(
    "imagemesh_queue_depth", "Tasks queued and not yet dispatched (mesh-wide).", ["pool"])
QUEUE_OLDEST_AGE = Gauge(
    "imagemesh_queue_oldest_age_seconds", "Age of the oldest queued task (mesh-wide).", ["pool"])
SCHEDULABLE_BACKLOG = Gauge(
    "imagemesh_schedulable_backlog",
    "Queued tasks that could start now: their key has a free slot (mesh-wide). The HPA signal.",
    ["pool"])
CLIENT_STREAMS = Gauge(
    "imagemesh_client_streams", "Client RPC streams open on this gateway.")

# --- gateway: workers -------------------------------------------------------------------------
POOL_WORKERS = Gauge(
    "imagemesh_pool_workers", "Workers connected to this gateway.", ["pool"])
POOL_CAPACITY = Gauge(
    "imagemesh_pool_capacity", "Task slots of the workers connected to this gateway.", ["pool"])
POOL_IN_FLIGHT = Gauge(
    "imagemesh_pool_in_flight", "Tasks running on workers connected to this gateway.", ["pool"])
POOL_UTILIZATION = Gauge(
    "imagemesh_pool_utilization_ratio", "In-flight tasks / capacity on this gateway.", ["pool"])

# --- gateway: leases --------------------------------------------------------------------------
LEASE_IN_USE = Gauge(
    "imagemesh_lease_in_use", "Leases counted against the key's limit (zombies included).", ["key"])
LEASE_LIMIT = Gauge("imagemesh_lease_limit", "Concurrency limit of the key.", ["key"])
LEASE_WAITERS = Gauge("imagemesh_lease_waiters", "Tickets waiting for a slot.", ["key"])
LEASE_WAIT = Histogram(
    "imagemesh_lease_wait_seconds", "Time from asking for a lease to holding it.", ["key"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
LEASE_QUARANTINED = Gauge(
    "imagemesh_lease_quarantined", "1 while the key is quarantined after Redis lost state.", ["key"])
QUEUES_COLLECTED = Counter(
    "imagemesh_queues_collected_total", "Empty, idle task queues (flows) this gateway removed.")
LEASES_LOST = Counter(
    "imagemesh_leases_lost_total", "Leases whose renewal failed; their work was cancelled.")
REDIS_UP = Gauge(
    "imagemesh_redis_up", "1 when the last Redis call succeeded. At 0 no lease is granted (fail closed).")

# --- providers and circuits ---------------------------------------------------------------------
PROVIDER_REQUEST = Histogram(
    "imagemesh_provider_request_seconds", "One provider call, polling included.", ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
PROVIDER_ERRORS = Counter(
    "imagemesh_provider_errors_total", "Failed provider calls by error code.", ["provider", "code"])
CIRCUIT_STATE = Gauge(
    "imagemesh_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", ["provider"])

# --- workers ----------------------------------------------------------------------------------
WORKER_CAPACITY = Gauge("imagemesh_worker_capacity", "Tasks this worker runs at once.", ["pool"])
WORKER_IN_FLIGHT = Gauge("imagemesh_worker_in_flight", "Tasks running on this worker.", ["pool"])
WORKER_CONNECTED = Gauge("imagemesh_worker_connected", "1 while the gateway stream is up.", ["pool"])

# --- enhance ----------------------------------------------------------------------------------
ENHANCE_INFERENCE = Histogram(
    "imagemesh_enhance_inference_seconds", "Model time for one image.", ["device"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
ENHANCE_MEGAPIXELS = Counter(
    "imagemesh_enhance_input_megapixels_total", "Input megapixels enhanced.", ["device"])
ENHANCE_GPU_MEMORY = Gauge(
    "imagemesh_enhance_gpu_memory_bytes", "GPU memory allocated by torch (0 on CPU).", ["device"])
ENHANCE_OOM_RETRIES = Counter(
    "imagemesh_enhance_oom_retries_total", "Images retried with smaller tiles after out-of-memory.",
    ["device"])
ENHANCE_COST_IN_USE = Gauge(
    "imagemesh_enhance_admitted_cost", "Cost (megapixels x upscale^2) of the images admitted now.", ["device"])
ENHANCE_COST_BUDGET = Gauge(
    "imagemesh_enhance_cost_budget", "The worker's admission budget (megapixels x upscale^2).", ["device"])
ENHANCE_WAITING = Gauge(
    "imagemesh_enhance_admission_waiting", "Images waiting for admission within this worker.", ["device"])


_WORKER = (WORKER_CAPACITY, WORKER_IN_FLIGHT, WORKER_CONNECTED)
# The families each kind of process exports; every metric above is in at least one role.
ROLES = {
    "gateway": (TASKS_ACCEPTED, TASKS_FINISHED, TASK_DURATION, ATTEMPTS_REQUEUED, QUEUE_DEPTH,
                QUEUE_OLDEST_AGE, SCHEDULABLE_BACKLOG, CLIENT_STREAMS, POOL_WORKERS, POOL_CAPACITY,
                POOL_IN_FLIGHT, POOL_UTILIZATION, LEASE_IN_USE, LEASE_LIMIT, LEASE_WAITERS, LEASE_WAIT,
                LEASE_QUARANTINED, LEASES_LOST, REDIS_UP, CIRCUIT_STATE, QUEUES_COLLECTED),
    "gen-worker": (*_WORKER, PROVIDER_REQUEST, PROVIDER_ERRORS),
    "enhance-worker": (*_WORKER, ENHANCE_INFERENCE, ENHANCE_MEGAPIXELS, ENHANCE_GPU_MEMORY,
                       ENHANCE_OOM_RETRIES, ENHANCE_COST_IN_USE, ENHANCE_COST_BUDGET, ENHANCE_WAITING),
}


class RoleView:
    """The default registry as one role sees it: that role's ImageMesh families, and the
    process/Python collectors every process has."""

    def __init__(self, role: str) -> None:
        self.names = {family.name for metric in ROLES[role] for family in metric.describe()}

    def collect(self):
        for family in REGISTRY.collect():
            if not family.name.startswith("imagemesh_") or family.name in self.names:
                yield family


def serve(port: int, addr: str = "0.0.0.0", *, role: str | None = None) -> int:
    """Expose /metrics on `addr`:`port` (0 picks a free one); returns the bound port. `role`:
    export only that role's families (None: every family). Raises OSError (port in use)."""
    registry = RoleView(role) if role else REGISTRY
    server, _thread = start_http_server(port, addr, registry=registry)  # type: ignore[arg-type]
    return server.server_address[1]
