"""Charging a request's output to its tenant while it runs, not only when it ends.

Fair order is decided by what each tenant has been charged, so charges should follow the
service the engine delivers. A stream shows its output as it comes: :class:`StreamMeter`
charges the chunks relayed. A plain (non-streamed) response shows nothing until it ends, often
seconds later; charged only then, a tenant's counter would stand still while its requests run
and jump when they end, and long answers would reorder the queue in lumps.
:class:`PlainMeter` charges such a request's expected output at the rate its backend has been
observed to deliver output (:class:`DeliveryRate`), up to the request's expected length; the
release then settles the total with the engine's ``usage`` (docs/fairness.md).
"""

from __future__ import annotations

import asyncio
import time

from admission.lease import Lease
from backends.delivery import DeliveryRate
from gateway.state import Gateway

class StreamMeter:
    """Charges streamed output to the tenant in batches, off the relay's path.

    A batch goes when it holds ``charge_every_tokens`` and ``charge_interval_s`` has passed
    since the last one: fair order needs charges while a long stream runs, not one per token
    of a fast one (whatever is left is settled at release). On a backend with a prefill cap,
    the first output also goes at once: it ends the request's hold on the cap, so the next
    long prompt may start its prefill.
    """

    def __init__(self, gateway: Gateway, lease: Lease, prefill_held: bool = False) -> None:
        self._gateway = gateway
        self._lease = lease
        self._prefill_held = prefill_held
        self._every = gateway.settings.admission.charge_every_tokens
        self._interval = gateway.settings.admission.charge_interval_s
        self._weight = gateway.settings.estimation.output_weight
        self._charged = 0
        self._last = time.monotonic()

    def __call__(self, chunks: int) -> None:
        if self._prefill_held:
            self._prefill_held = False
            self._charged, self._last = chunks, time.monotonic()
            self._gateway.in_background(self._lease.charge(self._weight * chunks))
        elif chunks - self._charged >= self._every:
            now = time.monotonic()
            if now - self._last >= self._interval:
                batch, self._charged, self._last = chunks - self._charged, chunks, now
                self._gateway.in_background(self._lease.charge(self._weight * batch))


class PlainMeter:
    """Charges a plain response's expected output while the caller waits for it.

    Every ``charge_interval_s`` (at least 0.25 s) the tokens the backend should have produced
    by now (its :class:`DeliveryRate` times the time since the upstream request, at most
    ``expected_output``) are charged, in batches of at least ``charge_every_tokens``. A timer
    handle per request, no task: a fast response costs nothing. It starts when the upstream
    request is sent. Not used where the backend has a prefill cap, since a charge ends the
    request's hold on it.
    """

    def __init__(self, gateway: Gateway, lease: Lease, rate: DeliveryRate, expected: int) -> None:
        self._gateway = gateway
        self._lease = lease
        self._rate = rate
        self._expected = expected
        self._every = gateway.settings.admission.charge_every_tokens
        self._interval = max(gateway.settings.admission.charge_interval_s, 0.25)
        self._weight = gateway.settings.estimation.output_weight
        self._started = time.monotonic()
        self._charged = 0
        self._timer: asyncio.TimerHandle | None = None
        if self._rate.tokens_per_s is not None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def _tick(self) -> None:
        rate = self._rate.tokens_per_s or 0.0
        due = min(self._expected, int(rate * (time.monotonic() - self._started)))
        if due - self._charged >= min(self._every, self._expected - self._charged):
            batch, self._charged = due - self._charged, due
            self._gateway.in_background(self._lease.charge(self._weight * batch))
        if self._charged < self._expected:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)
        else:
            self._timer = None

    def stop(self) -> float:
        """Stop charging; the seconds since the upstream request (for the delivery rate)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return time.monotonic() - self._started
