"""Circuit breaker transitions, with a clock the test moves."""

from __future__ import annotations

from imagemesh import errors, metrics
from imagemesh.circuit import CircuitBreaker, classify


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def gauge(provider: str) -> float:
    return metrics.CIRCUIT_STATE.labels(provider)._value.get()


def breaker(name: str, clock: Clock, **kw) -> CircuitBreaker:
    kw.setdefault("failure_threshold", 3)
    kw.setdefault("cooldown", 10)
    return CircuitBreaker(name, clock=clock, **kw)


def test_opens_after_consecutive_failures_and_refuses_calls():
    clock = Clock()
    cb = breaker("cb-open", clock)
    for _ in range(2):
        assert cb.allow()
        cb.record(False)
    assert cb.state == "closed"
    cb.record(False)
    assert cb.state == "open" and gauge("cb-open") == 2
    assert not cb.allow()


def test_a_success_resets_the_consecutive_count():
    clock = Clock()
    cb = breaker("cb-reset", clock)
    for ok in (False, False, True, False, False):
        cb.record(ok)
    assert cb.state == "closed"


def test_half_open_admits_exactly_one_probe_and_closes_on_its_success():
    clock = Clock()
    cb = breaker("cb-probe-ok", clock)
    for _ in range(3):
        cb.record(False)
    clock.now += 9.9
    assert cb.state == "open" and not cb.allow()
    clock.now += 0.1
    assert cb.state == "half_open" and gauge("cb-probe-ok") == 1
    assert cb.allow()
    assert not cb.allow() and not cb.allow()  # only one probe
    cb.record(True)
    assert cb.state == "closed" and gauge("cb-probe-ok") == 0
    assert cb.allow() and cb.allow()


def test_failed_probe_reopens_for_another_cooldown():
    clock = Clock()
    cb = breaker("cb-probe-fail", clock)
    for _ in range(3):
        cb.record(False)
    clock.now += 10
    assert cb.allow()
    cb.record(False)
    assert cb.state == "open" and not cb.allow()
    clock.now += 9
    assert cb.state == "open"
    clock.now += 1
    assert cb.state == "half_open" and cb.allow()


def test_neutral_outcome_of_the_probe_frees_the_probe_slot():
    clock = Clock()
    cb = breaker("cb-neutral", clock)
    for _ in range(3):
        cb.record(False)
    clock.now += 10
    assert cb.allow() and not cb.allow()
    cb.record_outcome(errors.InvalidInput("bad prompt"))
    assert cb.state == "half_open"
    assert cb.allow()


def test_failure_rate_over_the_window_opens_the_circuit():
    clock = Clock()
    cb = breaker("cb-rate", clock, failure_threshold=100, window=60, min_calls=10, failure_rate=0.5)
    for i in range(9):
        cb.record(i % 2 == 0)  # alternate: never 2 consecutive failures
        clock.now += 1
    assert cb.state == "closed"
    cb.record(False)  # 10 calls, 5 failures
    assert cb.state == "open"


def test_old_outcomes_leave_the_window():
    clock = Clock()
    cb = breaker("cb-window", clock, window=30)
    cb.record(True)
    cb.record(False)
    assert cb.recent_counts() == (1, 1)
    clock.now += 31
    assert cb.recent_counts() == (0, 0)


def test_only_provider_health_failures_count():
    assert classify(None) is True
    for counted in (errors.ProviderFailed("503"), errors.Timeout("t"), errors.Unavailable("u"),
                    errors.ProviderFailed("job failed", retryable=False)):
        assert classify(counted) is False
    for neutral in (errors.InvalidInput("422"), errors.AuthFailed("401"),
                    errors.RateLimited("429"), errors.Cancelled("lost race"), ValueError("bug")):
        assert classify(neutral) is None
    clock = Clock()
    cb = breaker("cb-classify", clock)
    for _ in range(10):
        cb.record_outcome(errors.AuthFailed("401"))
        cb.record_outcome(errors.RateLimited("429"))
    assert cb.state == "closed" and cb.recent_counts() == (0, 0)
