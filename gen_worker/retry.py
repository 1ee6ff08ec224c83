"""The one retry loop of the generation worker: exponential backoff with full jitter.

Adapters never retry (see `gen_worker.providers.base`); this loop does, with these rules:

- only a `TaskFailure` whose `retryable` is true is retried (5xx, 429, timeouts, connection
  errors); input and auth errors, and anything that is not a `TaskFailure`, end the loop at once;
- the delay before try n+1 is drawn by a `Backoff` strategy (full jitter by default), and is at
  least the provider's `retry_after` when it sent one;
- the loop never sleeps past the deadline: when the next try could not start before it, it gives
  up with the last error instead of sleeping;
- the exception that ends the loop carries `tries` (how many calls were made), so the result
  can report its attempts.

Backoff strategies are tiny classes injected into the policy (the shape of redis-py's
`backoff.py`), so tests can use a deterministic one.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, TypeVar

from imagemesh.errors import TaskFailure, Timeout

T = TypeVar("T")


class Backoff(Protocol):
    def compute(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1-based)."""
        ...


@dataclass(frozen=True)
class FullJitterBackoff:
    """uniform(0, min(cap, base * 2**(failures-1))): spreads retries of many workers that failed
    together (AWS architecture blog, "Exponential Backoff And Jitter")."""

    base: float = 0.2
    cap: float = 10.0
    rng: Callable[[], float] = random.random

    def compute(self, failures: int) -> float:
        return self.rng() * min(self.cap, self.base * (2 ** max(failures - 1, 0)))


@dataclass(frozen=True)
class ExponentialBackoff:
    """min(cap, base * 2**(failures-1)), no jitter: deterministic, for tests and single callers."""

    base: float = 0.2
    cap: float = 10.0

    def compute(self, failures: int) -> float:
        return min(self.cap, self.base * (2 ** max(failures - 1, 0)))


@dataclass(frozen=True)
class ConstantBackoff:
    delay: float = 0.0

    def compute(self, failures: int) -> float:
        return self.delay


@dataclass(frozen=True)
class RetryPolicy:
    max_tries: int = 4
    base: float = 0.2
    cap: float = 10.0
    # None: full jitter over (base, cap).
    backoff: Backoff | None = field(default=None)

    def strategy(self) -> Backoff:
        return self.backoff if self.backoff is not None else FullJitterBackoff(self.base, self.cap)


# on_attempt(tries_so_far, error or None on success): e.g. to feed a circuit breaker or log.
OnAttempt = Callable[[int, BaseException | None], None]


async def with_retries(call: Callable[[], Awaitable[T]], *, policy: RetryPolicy, deadline: float,
                       on_attempt: OnAttempt | None = None,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                       ) -> tuple[T, int]:
    """Call `call()` until it succeeds, fails for good, runs out of tries or of time.

    Returns (result, tries). Raises the last error with `error.tries` set. `deadline` is a
    `clock()` instant; when it has already passed before the first try, raises `Timeout` with
    `tries == 0`. asyncio cancellation propagates at once (no `tries` bookkeeping).
    """
    strategy = policy.strategy()
    tries = 0
    if clock() >= deadline:
        exc = Timeout("deadline passed before the first attempt")
        exc.tries = 0  # type: ignore[attr-defined]
        raise exc
    while True:
        tries += 1
        try:
            result = await call()
        except TaskFailure as exc:
            if on_attempt is not None:
                on_attempt(tries, exc)
            if not exc.retryable or tries >= policy.max_tries:
                exc.tries = tries  # type: ignore[attr-defined]
                raise
            delay = strategy.compute(tries)
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            if clock() + delay >= deadline:
                # Sleeping would reach the deadline: the next try could not run. Give up now
                # with the real reason rather than a Timeout that hides it.
                exc.tries = tries  # type: ignore[attr-defined]
                raise
            await sleep(delay)
            continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug in an adapter (not a TaskFailure): never retried, reported as INTERNAL above.
            if on_attempt is not None:
                on_attempt(tries, exc)
            try:
                exc.tries = tries  # type: ignore[attr-defined]
            except AttributeError:
                pass
            raise
        if on_attempt is not None:
            on_attempt(tries, None)
        return result, tries
