"""An attempt's life in this gateway, as a state machine with one pure decision function.

Every transition of an attempt is decided by `decide(attempt, event, policy)`, which does no
I/O: it returns the attempt's next phase and what must happen (an `Outcome` for Redis, a cancel
for the worker, what becomes of the lease). `gateway.inflight.InFlight` owns the attempts and
applies decisions; `gateway.outcomes.Outcomes` carries out the Redis side. Read this module
first: every state and transition of dispatch is here.

    queue entry ──read (+ lease) + START──▶ HELD ──credit──▶ ASSIGNED ──result──▶ SETTLING ─▶ gone
                                              │                 │  ▲
                                              │                 │  └── cancel sent (lease lost,
                                              │                 ▼      batch cancelled, race lost,
                                              │             CANCELLING  drain): the worker's
                                              │                 │       CANCELLED result comes
                                              └── lease lost, ──┴──▶ SETTLING  back here
                                                  no worker, drain,   (Finish | Requeue | Drop,
                                                  assignment failed    retried until Redis says
                                                                       done; the entry stays
                                                                       pending meanwhile)

    worker lost ─▶ SETTLING (Requeue; the lease is left to expire into a zombie: its provider
                   job may still run)
    drain past its grace, ASSIGNED or CANCELLING ─▶ SETTLING (cancel sent if not yet; Requeue,
                   or Drop for a cancelled batch; the lease left to expire, as for a lost worker)

What each outcome does in Redis (gateway.outcomes), in an order that a crash or a Redis error
between any two steps leaves recoverable by retrying, or by the gateway that claims the entry:
  Finish   FINISH script (fenced by the live attempt) ─▶ followers served ─▶ entry acked
  Requeue  NEXT script (idempotent per old attempt) ─▶ new entry pushed ─▶ old entry acked
  Drop     entry acked (its task is final, or another entry runs the attempt)
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from imagemesh.errors import TaskFailure, WorkerLost
from imagemesh.leases import Lease
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

from .entries import QueueEntry


class Pool(str, enum.Enum):
    GENERATE = "generate"
    ENHANCE = "enhance"


class Phase(enum.Enum):
    HELD = "held"                # read and started, lease held if any; waits for a worker credit
    ASSIGNED = "assigned"        # sent to a worker
    CANCELLING = "cancelling"    # a cancel was sent; waiting for the worker's result
    SETTLING = "settling"        # an outcome is being written to Redis (retried until done)


class Reason(str, enum.Enum):
    """Why an attempt is requeued or cancelled (also the `reason` label of the requeue metric)."""

    WORKER_LOST = "worker_lost"
    LEASE_LOST = "lease_lost"
    GATEWAY_LOST = "gateway_lost"
    DRAIN = "drain"
    NO_WORKER = "no_worker"
    FALLBACK = "fallback"
    THEN_ENHANCE = "then_enhance"
    BATCH_CANCELLED = "batch_cancelled"
    RACE_LOST = "race_lost"
    WORKER_CANCELLED = "worker_cancelled"


class LeaseFate(enum.Enum):
    KEEP = "keep"          # still held (the attempt goes on)
    RELEASE = "release"    # the job is known over: free the slot
    ABANDON = "abandon"    # the job may still run (worker lost) or the lease is gone: let it
                           # expire into a zombie, counted until its hard end


# -- outcomes: what must be written to Redis ------------------------------------------------------
@dataclass(frozen=True)
class Finish:
    """Record a final result. `retire`: a raced attempt that failed; if another attempt of the
    task still lives, this one only stops being live."""

    result: wpb.AttemptResult
    retire: bool = False


@dataclass(frozen=True)
class Requeue:
    """Replace the attempt by attempt + 1 in a queue; None fields keep the attempt's own."""

    reason: Reason
    provider_index: int | None = None
    stage: str | None = None
    counts: bool = True
    retire: bool = False  # a raced attempt: if another attempt lives, just stop this one
    result: wpb.AttemptResult | None = None  # what a stage move carries to the next stage


@dataclass(frozen=True)
class Drop:
    """Nothing to record: the task is final (cancelled, race won elsewhere) or the attempt is
    stale. The entry is acked."""

    reason: str


Outcome = Finish | Requeue | Drop


# -- events ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Assigned:
    worker_id: str


@dataclass(frozen=True)
class Result:
    result: wpb.AttemptResult


@dataclass(frozen=True)
class WorkerGone:
    """The worker's stream ended without handing the attempt back."""


@dataclass(frozen=True)
class Returned:
    """A draining worker gave the attempt back unstarted or cancelled."""


@dataclass(frozen=True)
class LeaseLost:
    pass


@dataclass(frozen=True)
class Cancel:
    reason: Reason  # BATCH_CANCELLED or RACE_LOST


@dataclass(frozen=True)
class Unassignable:
    """No worker took the attempt in time (HELD too long), or this gateway drains."""

    reason: Reason


@dataclass(frozen=True)
class Failed:
    """The attempt can't be run at all (its token can't be opened, its budget is spent)."""

    failure: TaskFailure


Event = Assigned | Result | WorkerGone | Returned | LeaseLost | Cancel | Unassignable | Failed


# -- the attempt ----------------------------------------------------------------------------------
@dataclass(eq=False)
class Attempt:
    """One attempt of one task, from the moment this gateway read its entry. Only
    `InFlight.apply` changes `phase`, `worker_id`, `cancel_reason` and `outcome`."""

    entry: QueueEntry
    task: pb.Task
    pool: Pool
    provider: str
    key_id: str
    lease: Lease | None = None
    phase: Phase = Phase.HELD
    worker_id: str | None = None
    cancel_reason: Reason | None = None
    outcome: Outcome | None = None
    hedged: bool = False
    # The batch's tenant (from the entry; looked up once for entries older than that field).
    tenant: str = ""
    read_at: float = field(default_factory=time.monotonic)
    leased_at: float = 0.0
    held_since: float = field(default_factory=time.monotonic)

    @property
    def attempt_id(self) -> str:
        return self.entry.attempt_id

    @property
    def raced(self) -> bool:
        return self.pool is Pool.GENERATE and not self.entry.stage and self.task.generate.race

    @property
    def then_enhance_due(self) -> bool:
        return self.pool is Pool.GENERATE and not self.entry.stage and self.task.HasField("then_enhance")


@dataclass(frozen=True)
class Policy:
    """What decide() needs to know beyond the attempt (no I/O behind it)."""

    max_attempts: int
    # The next usable provider index after the attempt's own, or None (generate pool).
    next_provider: int | None = None


@dataclass(frozen=True)
class Decision:
    phase: Phase
    lease: LeaseFate = LeaseFate.KEEP
    outcome: Outcome | None = None
    send_cancel: bool = False      # tell the attempt's worker to stop it
    cancel_reason: Reason | None = None
    ignored: bool = False          # the event does not apply in this phase (stale)


def _ignore(a: Attempt) -> Decision:
    return Decision(a.phase, ignored=True)


def _settle(outcome: Outcome, lease: LeaseFate, a: Attempt, policy: Policy) -> Decision:
    """SETTLING with `outcome`; a counted requeue past max_attempts becomes a final failure."""
    if isinstance(outcome, Requeue) and outcome.counts and a.entry.tries >= policy.max_attempts:
        outcome = Finish(_gave_up(a, outcome.reason, policy.max_attempts), retire=outcome.retire)
    return Decision(Phase.SETTLING, lease=lease, outcome=outcome)


def _gave_up(a: Attempt, reason: Reason, max_attempts: int) -> wpb.AttemptResult:
    n = a.entry.tries
    if reason is Reason.WORKER_LOST:
        failure: TaskFailure = WorkerLost(
            f"the task's worker was lost {n} times (limit: max_attempts={max_attempts})")
    else:
        failure = TaskFailure(f"gave up after {n} attempts (last: {reason.value}; limit: "
                              f"max_attempts={max_attempts})", retryable=True)
    return failed_result(a, failure)


def failed_result(a: Attempt, failure: TaskFailure) -> wpb.AttemptResult:
    return wpb.AttemptResult(
        attempt_id=a.attempt_id, task_id=a.entry.task_id, attempt=a.entry.attempt, state=pb.FAILED,
        provider=a.provider, error=pb.TaskError(code=failure.code, message=failure.message,
                                                retryable=failure.retryable))


def _on_result(a: Attempt, r: wpb.AttemptResult, policy: Policy) -> Decision:
    """A worker's result for an attempt that was ASSIGNED or CANCELLING. The job is over:
    the lease is released whatever comes next."""
    release = LeaseFate.RELEASE
    reason = a.cancel_reason
    if r.state == pb.CANCELLED:
        if reason in (Reason.BATCH_CANCELLED, Reason.RACE_LOST):
            return Decision(Phase.SETTLING, lease=release, outcome=Drop(reason.value))
        # Cancelled because its lease was lost or this gateway drains, or by the worker itself:
        # the task still needs a result. A drain is not the task's fault: it does not count.
        why = reason or Reason.WORKER_CANCELLED
        return _settle(Requeue(why, counts=why is not Reason.DRAIN, retire=a.raced), release, a, policy)
    if r.state == pb.SUCCEEDED:
        if a.then_enhance_due:
            return _settle(Requeue(Reason.THEN_ENHANCE, stage="enhance", counts=False, result=r), release, a, policy)
        return _settle(Finish(r), release, a, policy)
    # FAILED
    if reason is Reason.LEASE_LOST:
        return _settle(Requeue(Reason.LEASE_LOST, retire=a.raced), release, a, policy)
    if r.fallback_ok and a.pool is Pool.GENERATE and policy.next_provider is not None:
        return _settle(Requeue(Reason.FALLBACK, provider_index=policy.next_provider, retire=a.raced),
                       release, a, policy)
    return _settle(Finish(r, retire=a.raced), release, a, policy)


def decide(a: Attempt, event: Event, policy: Policy) -> Decision:
    """The attempt's next phase and what must happen, for `event` in its current phase."""
    phase = a.phase
    if phase is Phase.SETTLING:
        return _ignore(a)  # its outcome is decided; late events are stale
    if isinstance(event, Assigned):
        return Decision(Phase.ASSIGNED) if phase is Phase.HELD else _ignore(a)
    if isinstance(event, Result):
        return _on_result(a, event.result, policy) if phase is not Phase.HELD else _ignore(a)
    if isinstance(event, WorkerGone):
        if phase is Phase.HELD:
            return _ignore(a)
        return _settle(Requeue(Reason.WORKER_LOST, retire=a.raced), LeaseFate.ABANDON, a, policy)
    if isinstance(event, Returned):
        if phase is Phase.HELD:
            return _ignore(a)
        return _settle(Requeue(Reason.DRAIN, counts=False, retire=a.raced), LeaseFate.RELEASE, a, policy)
    if isinstance(event, LeaseLost):
        if phase is Phase.HELD:
            # Never ran: back to its queue under a new lease, without counting.
            return _settle(Requeue(Reason.LEASE_LOST, counts=False, retire=a.raced), LeaseFate.ABANDON, a, policy)
        if phase is Phase.ASSIGNED:
            return Decision(Phase.CANCELLING, lease=LeaseFate.ABANDON, send_cancel=True,
                            cancel_reason=Reason.LEASE_LOST)
        return Decision(Phase.CANCELLING, lease=LeaseFate.ABANDON, cancel_reason=a.cancel_reason)
    if isinstance(event, Cancel):
        if phase is Phase.HELD:
            return Decision(Phase.SETTLING, lease=LeaseFate.RELEASE, outcome=Drop(event.reason.value))
        if phase is Phase.ASSIGNED:
            return Decision(Phase.CANCELLING, send_cancel=True, cancel_reason=event.reason)
        return _ignore(a)  # already cancelling: the first reason stands
    if isinstance(event, Unassignable):
        if phase is Phase.HELD:
            return _settle(Requeue(event.reason, counts=False, retire=a.raced), LeaseFate.RELEASE, a, policy)
        if event.reason is Reason.DRAIN:
            # This gateway is going away: stop the worker's job (unless it was told already)
            # and settle now; the late CANCELLED result finds the attempt gone. The job may
            # still run at the provider until the cancel lands, so its slot stays counted (a
            # zombie until its hard end), as for a lost worker: the key's limit holds.
            if a.cancel_reason in (Reason.BATCH_CANCELLED, Reason.RACE_LOST):
                return Decision(Phase.SETTLING, lease=LeaseFate.ABANDON, outcome=Drop(a.cancel_reason.value))
            d = _settle(Requeue(Reason.DRAIN, counts=False, retire=a.raced), LeaseFate.ABANDON, a, policy)
            told = phase is Phase.CANCELLING
            return Decision(d.phase, lease=d.lease, outcome=d.outcome, send_cancel=not told,
                            cancel_reason=a.cancel_reason if told else Reason.DRAIN)
        return _ignore(a)
    if isinstance(event, Failed):
        if phase is Phase.HELD:
            return Decision(Phase.SETTLING, lease=LeaseFate.RELEASE,
                            outcome=Finish(failed_result(a, event.failure), retire=a.raced))
        return _ignore(a)
    raise TypeError(f"unknown event {event!r}")
