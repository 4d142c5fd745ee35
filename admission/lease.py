"""A lease: the right to run one request on one backend, released exactly once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Charger = Callable[[str, float], Awaitable[None]]
Releaser = Callable[[str, float | None], Awaitable[None]]


class Lease:
    """Granted by admission; the gateway charges streamed output to it and releases it."""

    def __init__(self, request_id: str, backend: str, charge: Charger, release: Releaser) -> None:
        self.request_id = request_id
        self.backend = backend
        self._charge = charge
        self._release = release
        self.released = False

    async def charge(self, service: float) -> None:
        """Charge streamed output to the tenant (and renew the lease); never raises."""
        if not self.released:
            await self._charge(self.request_id, service)

    async def release(self, service: float | None) -> None:
        """End the lease with the service actually used (None: keep what was charged).

        Idempotent: only the first call releases.
        """
        if not self.released:
            self.released = True
            await self._release(self.request_id, service)
