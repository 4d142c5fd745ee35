"""Output charges of running requests, gathered over a short window and sent as one call.

A stream's output is charged to its tenant while it flows (``gateway/metering.py``), every
``charge_every_tokens`` of it; a plain response's every ``charge_interval_s``. Sent one by one, each
charge cost the replica a task, a handful of coroutines and a Redis round trip, and Redis a script
call of its own: at 2,000 open streams emitting tokens at an LLM's pace, thousands a second.
Here a charge adds to its request's sum, and once per window (``charge_interval_s``) the sums go
to Redis together, as calls of ``batch.lua`` of at most :data:`MOST_PER_CALL` charges, each run
exactly as a call of ``charge.lua`` would be. A charge reaches its tenant's counter at most one
window later than it was made: the granularity the meter already had per request.

A request's sum that is not sent yet when the request ends is taken back
(:meth:`ChargeAccrual.take`): its release settles the whole service the request used, so the
sum must not also reach Redis, where the lease may already serve the next request of its flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fairgate.tasks import cancel_all

#: Charges in one script call: Redis runs a call to its end before any other command, so a
#: window's charges of thousands of streams go as several calls, not one long one.
MOST_PER_CALL = 256

#: Sends charges (request id, service), one script call; never raises (a charge that fails is
#: settled at its request's release, which carries the whole service used).
Send = Callable[[list[tuple[str, float]]], Awaitable[None]]


class ChargeAccrual:
    """The charges of this replica's running requests not sent yet, and the task that sends
    them every ``window_s`` (alive only while some are due)."""

    def __init__(self, window_s: float, send: Send) -> None:
        self._window_s = window_s
        self._send = send
        self._due: dict[str, float] = {}  # request id -> service charged since the last send
        self._sender: asyncio.Task[None] | None = None

    def add(self, request_id: str, service: float) -> None:
        """Charge ``service`` to ``request_id``'s lease with the window's other charges."""
        due = self._due
        due[request_id] = due.get(request_id, 0.0) + service
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_every_window(), name="charges")

    def take(self, request_id: str) -> float:
        """What ``request_id`` has been charged and not sent yet, no longer to be sent (its
        request ended: its release settles what it used)."""
        return self._due.pop(request_id, 0.0)

    async def _send_every_window(self) -> None:
        try:
            while self._due:
                await asyncio.sleep(self._window_s)
                charges, self._due = list(self._due.items()), {}
                for start in range(0, len(charges), MOST_PER_CALL):
                    await self._send(charges[start : start + MOST_PER_CALL])
        finally:
            self._sender = None

    async def close(self) -> None:
        """Stop; what is due now is not sent (the releases that follow settle it)."""
        await cancel_all([self._sender])
