"""Why a task fails, as one small hierarchy shared by the gateway and both workers.

    TaskFailure                       code            retryable  fallback to next provider
     ├── InvalidInput                 INVALID_INPUT   no         no
     ├── AuthFailed                   AUTH            no         yes (another provider has another token)
     ├── RateLimited                  RATE_LIMITED    yes        yes
     ├── Timeout                      TIMEOUT         yes        yes
     ├── ProviderFailed               PROVIDER_ERROR  yes*       yes
     ├── Unavailable                  UNAVAILABLE     yes        yes
     ├── OutputTooLarge               OUTPUT_TOO_LARGE no        no
     ├── WorkerLost                   WORKER_LOST     no         no
     ├── Cancelled                    CANCELLED       no         no
     └── Internal                     INTERNAL        no         no

(*) a provider that says the job itself failed (e.g. Replicate status "failed") is not retried
with the same input; transport-level 5xx is.

Messages are for humans and must never contain a token: build them from field names, limits
and provider status codes only.
"""

from __future__ import annotations


class TaskFailure(Exception):
    code = "INTERNAL"
    retryable = False
    fallback_ok = False

    def __init__(self, message: str, *, retryable: bool | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        # Seconds the provider asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after


class InvalidInput(TaskFailure):
    code = "INVALID_INPUT"


class AuthFailed(TaskFailure):
    code = "AUTH"
    fallback_ok = True


class RateLimited(TaskFailure):
    code = "RATE_LIMITED"
    retryable = True
    fallback_ok = True


class Timeout(TaskFailure):
    code = "TIMEOUT"
    retryable = True
    fallback_ok = True


class ProviderFailed(TaskFailure):
    code = "PROVIDER_ERROR"
    retryable = True
    fallback_ok = True


class Unavailable(TaskFailure):
    code = "UNAVAILABLE"
    retryable = True
    fallback_ok = True


class OutputTooLarge(TaskFailure):
    """An output passed the size limit it was given (storage or inline): that task fails alone."""

    code = "OUTPUT_TOO_LARGE"


class WorkerLost(TaskFailure):
    code = "WORKER_LOST"


class Cancelled(TaskFailure):
    code = "CANCELLED"


class Internal(TaskFailure):
    code = "INTERNAL"
