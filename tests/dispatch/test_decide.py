"""decide() (gateway/attempts.py), the pure core of dispatch: a table of the transitions that
matter, and a Hypothesis state machine that throws random event orders at an attempt and checks
what must always hold."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.attempts import (Assigned, Attempt, Cancel, Drop, Failed, Finish, LeaseFate, LeaseLost, Phase,
                              Policy, Pool, Reason, Requeue, Result, Returned, Unassignable, WorkerGone, decide)
from gateway.entries import QueueEntry
from gateway.inflight import InFlight
from imagemesh.errors import TaskFailure
from imagemesh.leases import Lease
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

POLICY = Policy(max_attempts=3)


def attempt(*, tries: int = 1, raced: bool = False, then_enhance: bool = False, leased: bool = True,
            stage: str = "") -> Attempt:
    task = pb.Task(generate=pb.GenerateSpec(prompt="p", race=raced, providers=["a", "b"]))
    if then_enhance:
        task.then_enhance.upscale = 2
    entry = QueueEntry(batch_id="b", index=0, attempt=tries, accepted_ms=0, task=task.SerializeToString(),
                       tries=tries, stage=stage, queue="im:q:{generate|a:x}", entry_id="1-0")
    lease = Lease("a:x", "l1", 1, "gw", deadline=1e12) if leased else None
    return Attempt(entry=entry, task=task, pool=Pool.GENERATE, provider="a", key_id="a:x", lease=lease)


def res(state: int, *, fallback: bool = False) -> Result:
    return Result(wpb.AttemptResult(attempt_id="b-0#1", state=state, fallback_ok=fallback))


def assigned(a: Attempt) -> Attempt:
    a.phase = Phase.ASSIGNED
    a.worker_id = "w"
    return a


# -- the table -----------------------------------------------------------------------------------
def test_a_result_before_assignment_is_ignored():
    assert decide(attempt(), res(pb.SUCCEEDED), POLICY).ignored


def test_success_finishes_and_releases_the_lease():
    d = decide(assigned(attempt()), res(pb.SUCCEEDED), POLICY)
    assert d.phase is Phase.SETTLING and isinstance(d.outcome, Finish) and d.lease is LeaseFate.RELEASE


def test_success_with_then_enhance_moves_to_the_enhance_stage_without_counting():
    d = decide(assigned(attempt(then_enhance=True, tries=3)), res(pb.SUCCEEDED), POLICY)
    assert isinstance(d.outcome, Requeue) and d.outcome.stage == "enhance" and not d.outcome.counts
    assert d.outcome.result is not None


def test_a_failure_falls_back_to_the_next_provider_when_the_provider_says_it_may():
    d = decide(assigned(attempt()), res(pb.FAILED, fallback=True), Policy(max_attempts=3, next_provider=1))
    assert isinstance(d.outcome, Requeue) and d.outcome.provider_index == 1
    d = decide(assigned(attempt()), res(pb.FAILED, fallback=True), POLICY)
    assert isinstance(d.outcome, Finish), "no next provider: the failure is the result"


def test_a_lost_worker_requeues_and_leaves_the_lease_to_expire():
    d = decide(assigned(attempt()), WorkerGone(), POLICY)
    assert isinstance(d.outcome, Requeue) and d.outcome.reason is Reason.WORKER_LOST
    assert d.lease is LeaseFate.ABANDON


def test_max_attempts_turns_a_counted_requeue_into_a_final_failure():
    d = decide(assigned(attempt(tries=3)), WorkerGone(), POLICY)
    assert isinstance(d.outcome, Finish) and d.outcome.result.state == pb.FAILED
    assert d.outcome.result.error.code == "WORKER_LOST" and "max_attempts=3" in d.outcome.result.error.message
    d = decide(assigned(attempt(tries=2)), WorkerGone(), POLICY)
    assert isinstance(d.outcome, Requeue)


def test_a_drain_never_counts_against_max_attempts():
    d = decide(assigned(attempt(tries=3)), Returned(), POLICY)
    assert isinstance(d.outcome, Requeue) and not d.outcome.counts


def test_a_drain_past_its_grace_cancels_at_the_worker_and_leaves_the_slot_counted():
    d = decide(assigned(attempt()), Unassignable(Reason.DRAIN), POLICY)
    assert isinstance(d.outcome, Requeue) and d.outcome.reason is Reason.DRAIN and not d.outcome.counts
    assert d.send_cancel and d.lease is LeaseFate.ABANDON, "the job may still run at the provider until the cancel lands"


def test_a_lease_lost_while_waiting_for_a_worker_requeues_the_task_instead_of_dropping_it():
    d = decide(attempt(), LeaseLost(), POLICY)
    assert isinstance(d.outcome, Requeue) and d.outcome.reason is Reason.LEASE_LOST and not d.outcome.counts


def test_a_lease_lost_while_running_cancels_at_the_worker_then_requeues():
    a = assigned(attempt())
    d = decide(a, LeaseLost(), POLICY)
    assert d.phase is Phase.CANCELLING and d.send_cancel and d.lease is LeaseFate.ABANDON
    a.phase, a.cancel_reason = d.phase, d.cancel_reason
    d = decide(a, res(pb.CANCELLED), POLICY)
    assert isinstance(d.outcome, Requeue) and d.outcome.reason is Reason.LEASE_LOST


def test_a_cancelled_batch_drops_the_attempt_and_never_records_the_workers_cancel():
    a = assigned(attempt())
    d = decide(a, Cancel(Reason.BATCH_CANCELLED), POLICY)
    assert d.phase is Phase.CANCELLING and d.send_cancel
    a.phase, a.cancel_reason = d.phase, d.cancel_reason
    assert isinstance(decide(a, res(pb.CANCELLED), POLICY).outcome, Drop)


def test_a_drain_while_cancelling_settles_without_a_second_cancel_and_keeps_a_cancelled_batch_dropped():
    for reason, outcome in ((Reason.BATCH_CANCELLED, Drop), (Reason.LEASE_LOST, Requeue)):
        a = assigned(attempt())
        d = decide(a, Cancel(reason) if reason is Reason.BATCH_CANCELLED else LeaseLost(), POLICY)
        a.phase, a.cancel_reason = d.phase, d.cancel_reason
        d = decide(a, Unassignable(Reason.DRAIN), POLICY)
        assert d.phase is Phase.SETTLING and isinstance(d.outcome, outcome), (reason, d)
        assert not d.send_cancel and d.lease is LeaseFate.ABANDON, (reason, d)


def test_a_cancel_the_worker_did_on_its_own_requeues():
    d = decide(assigned(attempt()), res(pb.CANCELLED), POLICY)
    assert isinstance(d.outcome, Requeue) and d.outcome.reason is Reason.WORKER_CANCELLED


def test_a_raced_attempt_retires_instead_of_failing_the_task():
    d = decide(assigned(attempt(raced=True)), res(pb.FAILED), POLICY)
    assert isinstance(d.outcome, Finish) and d.outcome.retire


def test_an_attempt_that_cannot_be_built_fails_alone():
    d = decide(attempt(), Failed(TaskFailure("no")), POLICY)
    assert isinstance(d.outcome, Finish) and d.outcome.result.error.message == "no"


# -- random event orders -------------------------------------------------------------------------
EVENTS = st.one_of(
    st.just(Assigned("w")),
    st.sampled_from([pb.SUCCEEDED, pb.FAILED, pb.CANCELLED]).flatmap(
        lambda s: st.booleans().map(lambda f: res(s, fallback=f))),
    st.just(WorkerGone()), st.just(Returned()), st.just(LeaseLost()),
    st.sampled_from([Reason.BATCH_CANCELLED, Reason.RACE_LOST]).map(Cancel),
    st.sampled_from([Reason.DRAIN, Reason.NO_WORKER]).map(Unassignable),
    st.just(Failed(TaskFailure("x"))),
)


class AttemptLife(RuleBasedStateMachine):
    """One attempt in InFlight, random events: the rules of the state machine hold."""

    @initialize(tries=st.integers(1, 4), raced=st.booleans(), then_enhance=st.booleans(),
                leased=st.booleans(), nxt=st.sampled_from([None, 1]))
    def start(self, tries, raced, then_enhance, leased, nxt):
        self.inflight = InFlight()
        self.a = attempt(tries=tries, raced=raced, then_enhance=then_enhance, leased=leased)
        self.policy = Policy(max_attempts=3, next_provider=nxt)
        self.leased = leased
        self.inflight.hold(self.a)
        self.outcomes = 0
        self.lease_gone = 0
        self.was_assigned = False
        self.cancels_sent = 0

    @rule(event=EVENTS)
    def event(self, event):
        before = self.a.phase
        lease_before = self.a.lease
        d = self.inflight.handle(self.a, event, self.policy)
        if d.ignored:
            assert self.a.phase is before
            return
        if isinstance(event, Assigned):
            self.was_assigned = True
        if d.outcome is not None:
            self.outcomes += 1
        if lease_before is not None and self.a.lease is None:
            self.lease_gone += 1
        if d.send_cancel:
            self.cancels_sent += 1
            assert before is Phase.ASSIGNED, "only a worker that has the attempt is told to cancel it"
        if isinstance(event, WorkerGone):
            assert d.lease is not LeaseFate.RELEASE, "a lost worker's job may still run: never free its slot"
        if d.send_cancel and d.phase is Phase.SETTLING:
            assert d.lease is not LeaseFate.RELEASE, "settled while the worker is only told to cancel: never free its slot"
        if isinstance(d.outcome, Finish) and d.outcome.result.state == pb.CANCELLED:
            raise AssertionError("a worker's CANCELLED never becomes the task's result")
        if isinstance(d.outcome, Requeue) and d.outcome.counts:
            assert self.a.entry.tries < 3, "max_attempts reached: must fail, not requeue"
        if isinstance(event, Result) and event.result.state == pb.SUCCEEDED and before is Phase.ASSIGNED:
            assert isinstance(d.outcome, (Finish, Requeue)), "a success is never dropped"

    @invariant()
    def one_outcome_at_most(self):
        assert self.outcomes <= 1

    @invariant()
    def settled_means_an_outcome(self):
        if self.a.phase is Phase.SETTLING:
            assert self.a.outcome is not None and self.outcomes == 1
            assert self.a.lease is None, "a settled attempt holds no lease"
            assert self.inflight.count("w") == 0, "a settled attempt is no longer on its worker"

    @invariant()
    def the_lease_goes_once(self):
        assert self.lease_gone <= (1 if self.leased else 0)
        assert len(self.inflight.releases_due) <= 1

    @invariant()
    def a_cancel_is_sent_at_most_once(self):
        assert self.cancels_sent <= 1


TestAttemptLife = AttemptLife.TestCase
TestAttemptLife.settings = settings(max_examples=300, stateful_step_count=12, deadline=None, derandomize=True)
