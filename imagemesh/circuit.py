"""A circuit breaker per provider: stop sending work to a provider that is failing.

    closed ──(N consecutive failures, or failure rate ≥ R over the window)──▶ open
    open ──(cool-down elapsed)──▶ half_open: exactly ONE probe call is admitted
    half_open ──probe succeeds──▶ closed      half_open ──probe fails──▶ open (cool-down again)

Which outcomes count (`classify`):
- failures: `ProviderFailed` (5xx, failed jobs), `Timeout`, `Unavailable` (connection errors).
  They say something about the provider's health.
- neutral (ignored, neither success nor failure): `InvalidInput` and `AuthFailed` (the caller's
  input or token is wrong, the provider answered coherently), `RateLimited` (429 is about one
  key's quota, and keys have their own leases; opening the circuit for every key because one
  key is throttled would punish the others), `Cancelled` (a lost race says nothing) and
  non-`TaskFailure` exceptions (our bugs).
  A neutral outcome of the half-open probe frees the probe slot so another call can probe.
- success: the call returned outputs.

Not thread-safe: one breaker lives on one event loop. The clock is injectable so tests move time
instead of sleeping. A probe that never reports back (its caller forgot `record`) would keep
the breaker half-open with no slot; callers must record every admitted call, and
`probe_timeout` re-admits a probe after that long as a safety net.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Literal

from imagemesh import errors, metrics

State = Literal["closed", "open", "half_open"]
_GAUGE = {"closed": 0, "half_open": 1, "open": 2}


def classify(error: BaseException | None) -> bool | None:
    """True: success, False: a failure that counts against the provider, None: neutral."""
    if error is None:
        return True
    if isinstance(error, (errors.ProviderFailed, errors.Timeout, errors.Unavailable)):
        return False
    return None


class CircuitBreaker:
    def __init__(self, provider: str, *, failure_threshold: int = 5, cooldown: float = 30.0,
                 window: float = 60.0, min_calls: int = 20, failure_rate: float = 0.5,
                 probe_timeout: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.window = window
        self.min_calls = min_calls
        self.failure_rate = failure_rate
        self.probe_timeout = probe_timeout
        self._clock = clock
        self._state: State = "closed"
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        # (time, ok) of recent counted outcomes, for the failure rate and ListProviders.
        self._recent: deque[tuple[float, bool]] = deque()
        metrics.CIRCUIT_STATE.labels(provider).set(0)

    # --- reading ----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown:
            self._set("half_open")
            self._probe_started = None
        return self._state

    def recent_counts(self) -> tuple[int, int]:
        """(successes, failures) counted within the window."""
        self._trim()
        ok = sum(1 for _, good in self._recent if good)
        return ok, len(self._recent) - ok

    # --- admitting and recording -------------------------------------------------------------
    def allow(self) -> bool:
        """May a call go to this provider now? In half-open, True exactly once per probe."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        if self._probe_started is None or now - self._probe_started >= self.probe_timeout:
            self._probe_started = now
            return True
        return False

    def record(self, success: bool) -> None:
        now = self._clock()
        self._recent.append((now, success))
        self._trim()
        state = self.state
        if state == "half_open":
            self._probe_started = None
            if success:
                self._close()
                self._recent.append((now, True))
            else:
                self._open()
            return
        if success:
            self._consecutive_failures = 0
            return
        self._consecutive_failures += 1
        if state == "closed" and (self._consecutive_failures >= self.failure_threshold
                                  or self._rate_exceeded()):
            self._open()

    def record_outcome(self, error: BaseException | None) -> None:
        """Record a call's outcome by its error (None: success), following `classify`."""
        verdict = classify(error)
        if verdict is None:
            self.release_probe()
        else:
            self.record(verdict)

    def release_probe(self) -> None:
        """An admitted call ended without evidence either way: let another call probe."""
        if self._state == "half_open":
            self._probe_started = None

    # --- internals ------------------------------------------------------------------------------
    def _rate_exceeded(self) -> bool:
        if len(self._recent) < self.min_calls:
            return False
        failures = sum(1 for _, good in self._recent if not good)
        return failures / len(self._recent) >= self.failure_rate

    def _trim(self) -> None:
        horizon = self._clock() - self.window
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probe_started = None
        self._set("open")

    def _close(self) -> None:
        self._consecutive_failures = 0
        # Start the rate window afresh: the failures that opened the circuit are history.
        self._recent.clear()
        self._set("closed")

    def _set(self, state: State) -> None:
        self._state = state
        metrics.CIRCUIT_STATE.labels(self.provider).set(_GAUGE[state])
