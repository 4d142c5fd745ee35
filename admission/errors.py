"""Why admission refused a request, in admission's own terms.

The gateway maps each of these to an HTTP status and the OpenAI error body in one place
(``gateway/middleware.py``); nothing here knows about HTTP. A refusal that may succeed later
says after how long (``retry_after_s``), which the gateway sends as ``Retry-After``.
"""

from __future__ import annotations


class AdmissionError(Exception):
    """A request admission will not run; ``str(exc)`` is the message for the client."""


class Refused(AdmissionError):
    """Not now: a queue or a limit is full; worth asking again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(Refused):
    """The tenant already has ``max_queued`` requests waiting."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"Too many requests of tenant '{tenant}' are already waiting.", 1.0)


class QueueTimeout(Refused):
    """The request waited its tenant's ``queue_timeout_s`` without being admitted."""

    def __init__(self, tenant: str, waited_s: float) -> None:
        super().__init__(
            f"The request waited {waited_s:g} s in the queue of tenant '{tenant}' without "
            "being admitted.",
            waited_s / 2,
        )


class AtLimit(Refused):
    """Fail-open admission (Redis unreachable): a per-replica limit is reached."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 1.0)


class AdmissionUnavailable(AdmissionError):
    """Admission cannot decide: Redis is unreachable (fail closed), or lost the request."""
