"""Charging a request's output to its tenant while it runs, not only when it ends.

Fair order is decided by what each tenant has been charged, so charges should follow the
service the engine delivers. A stream shows its output as it comes: :class:`StreamMeter`
charges the chunks relayed. A plain (non-streamed) response shows nothing until it ends, often
seconds later; charged only then, a tenant's counter would stand still while its requests run
and jump when they end, and long answers would reorder the queue in lumps.
:class:`PlainMeter` charges such a request the output its backend has been observed to deliver
to one request in as long (:class:`DeliveryRate`), for as long as it runs and up to its
``max_tokens``, all of them from one ticker per process (:class:`PlainMeters`); the release
then settles the total with the engine's ``usage`` (docs/fairness.md). Both add their charges to
those the replica sends together once per ``charge_interval_s`` (:mod:`admission.accrual`).

Not up to the request's *expected* length: that estimate comes from the tenant's history when
the request arrives, and a tenant whose requests waited in the queue while its history warmed
up would run them charged for the prior's length (256 tokens) while others' were charged for
their true 1,024; its counter then lagged the service it received and fair order favoured it
(issue 12). How long a request has run says more about its output than any estimate does, and
what it has not produced is returned at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from admission.lease import Lease
from backends.delivery import DeliveryRate
from estimators.cost import Cost
from fairgate.settings import Settings
from fairgate.tasks import cancel_all


class Host(Protocol):
    """What meters need of the gateway process (``gateway.state.Gateway`` is one): its
    settings, and somewhere to run charges off the response's path."""

    settings: Settings

    def in_background(self, work: Coroutine[Any, Any, Any]) -> None: ...


class StreamMeter:
    """Charges streamed output to the tenant in batches, off the relay's path.

    Every ``charge_every_tokens`` chunks relayed, a batch joins the charges this replica sends
    together once per ``charge_interval_s`` (:mod:`admission.accrual`): fair order needs
    charges while a long stream runs, not one call per token of each of thousands of streams
    (whatever is left is settled at release). On a backend with a prefill cap, the first
    output goes at once, in a call of its own: it ends the request's hold on the cap, so the
    next long prompt may start its prefill. The request's ``cost`` prices the output.

    The relay calls it only once the count of chunks has reached :attr:`due`, which is
    compared in the relay's loop, not in a call per chunk. Slotted: every open stream holds one.
    """

    __slots__ = ("_gateway", "_lease", "_cost", "_prefill_held", "_every", "_charged", "due")

    def __init__(self, gateway: Host, lease: Lease, cost: Cost, prefill_held: bool = False) -> None:
        self._gateway = gateway
        self._lease = lease
        self._cost = cost
        self._prefill_held = prefill_held
        self._every = gateway.settings.admission.charge_every_tokens
        self._charged = 0
        #: the count of chunks relayed at which the meter charges next
        self.due = 1 if prefill_held else self._every

    def __call__(self, chunks: int) -> None:
        batch, self._charged = chunks - self._charged, chunks
        self.due = chunks + self._every
        if self._prefill_held:
            self._prefill_held = False
            self._gateway.in_background(self._lease.charge(self._cost.output_service(batch)))
        else:
            self._lease.charge_soon(self._cost.output_service(batch))


class PlainMeter:
    """One plain response's output, charged while the caller waits for it.

    Made by :meth:`PlainMeters.start`; every tick charges the tokens the backend should have
    produced by now (its :class:`DeliveryRate` times the time since the upstream request, at
    most the request's ``max_output``: its ``max_tokens``), in batches of at least
    ``charge_every_tokens``, priced by the request's ``cost``.
    """

    __slots__ = ("_hub", "_lease", "_rate", "_cost", "_most", "_started", "_charged")

    def __init__(self, hub: PlainMeters, lease: Lease, rate: DeliveryRate, cost: Cost) -> None:
        self._hub = hub
        self._lease = lease
        self._rate = rate
        self._cost = cost
        self._most = cost.max_output
        self._started = time.monotonic()
        self._charged = 0

    def tick(self, now: float) -> float | None:
        """The service to charge now, if any; the meter is done once all is charged."""
        rate = self._rate.tokens_per_s
        if rate is None:
            return None
        due = min(self._most, int(rate * (now - self._started)))
        if due - self._charged < min(self._hub.every, self._most - self._charged):
            return None
        batch, self._charged = due - self._charged, due
        return self._cost.output_service(batch)

    @property
    def done(self) -> bool:
        return self._charged >= self._most

    def charge(self, service: float) -> None:
        """Charge ``service`` with the replica's other charges of the window."""
        self._lease.charge_soon(service)

    def stop(self) -> float:
        """Stop charging; the seconds since the upstream request (for the delivery rate)."""
        self._hub.discard(self)
        return time.monotonic() - self._started


class PlainMeters:
    """Every plain response running on this replica, charged by one ticker.

    One task wakes every ``charge_interval_s`` (at least 0.25 s) while any plain response runs
    and charges each what it is due; none runs while there is none. A response that ends
    before the first tick costs a set insertion and removal. Not used where the backend has a
    prefill cap, since a charge ends the request's hold on it.
    """

    def __init__(self, gateway: Host) -> None:
        config = gateway.settings.admission
        self.every = config.charge_every_tokens
        self._interval = max(config.charge_interval_s, 0.25)
        self._gateway = gateway
        self._running: set[PlainMeter] = set()
        self._ticker: asyncio.Task[None] | None = None

    def start(self, lease: Lease, rate: DeliveryRate, cost: Cost) -> PlainMeter:
        """Meter one plain response from now (when its upstream request is sent), for at most
        its ``cost.max_output`` output tokens."""
        meter = PlainMeter(self, lease, rate, cost)
        self._running.add(meter)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="plain-meters")
        return meter

    def discard(self, meter: PlainMeter) -> None:
        self._running.discard(meter)

    async def _tick(self) -> None:
        try:
            while self._running:
                await asyncio.sleep(self._interval)
                now = time.monotonic()
                for meter in list(self._running):
                    service = meter.tick(now)
                    if service:
                        meter.charge(service)
                    if meter.done:
                        self._running.discard(meter)
        finally:
            self._ticker = None

    async def stop(self) -> None:
        self._running.clear()
        await cancel_all([self._ticker] if self._ticker is not None else [])
