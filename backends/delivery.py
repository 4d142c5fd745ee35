"""How fast a backend delivers output to one request: what plain responses are charged by."""

from __future__ import annotations

#: Weight of the newest observation in a backend's delivery rate (a moving average).
_RATE_SMOOTHING = 0.2


class DeliveryRate:
    """Output tokens per second that one backend delivers to one request, on average.

    Learned from the requests that completed there (output tokens over the time from the
    upstream request to its end), so it includes the engine's queueing and prefill: what a
    caller waiting for a plain response sees. Unknown until the first observation.
    """

    def __init__(self) -> None:
        self.tokens_per_s: float | None = None

    def observe(self, output_tokens: int, seconds: float) -> None:
        if output_tokens <= 0 or seconds <= 0:
            return
        rate = output_tokens / seconds
        if self.tokens_per_s is None:
            self.tokens_per_s = rate
        else:
            self.tokens_per_s += _RATE_SMOOTHING * (rate - self.tokens_per_s)
