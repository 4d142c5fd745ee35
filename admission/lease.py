"""A lease: the right to run one request on one backend, released exactly once."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from admission.quota import QuotaAsk, QuotaPart

Charger = Callable[[str, float], Awaitable[None]]
#: Adds a charge to those of a short window, sent together (admission/accrual.py)
Accruer = Callable[[str, float], None]
#: Ends a lease: (the lease, the service used or None, whether it may pass to the next request)
Releaser = Callable[["Lease", float | None, bool], Awaitable[None]]


class Lease:
    """Granted by admission; the gateway charges output to it while it runs and releases it.

    ``flow`` and ``tokens`` say which later requests could reuse it (see
    :mod:`admission.reuse`): those of the same flow that need no more tokens than it holds.
    Slotted: every open stream holds one.
    """

    __slots__ = (
        "request_id",
        "backend",
        "flow",
        "tokens",
        "quota",
        "_charge",
        "_release",
        "released",
        "correction",
        "granted_at",
        "_accrue",
    )

    def __init__(
        self,
        request_id: str,
        backend: str,
        charge: Charger,
        release: Releaser,
        flow: tuple[str, str, str] | None = None,
        tokens: int = 0,
        quota: QuotaAsk | None = None,
        accrue: Accruer | None = None,
    ) -> None:
        self.request_id = request_id
        self.backend = backend
        self.flow = flow
        self.tokens = tokens
        #: What its request asked of its tenant's quotas (None: none apply): a lease held for
        #: reuse takes the like ahead for the next request, as a credit (admission/reuse.py)
        self.quota = quota
        self._charge = charge
        self._release = release
        self.released = False
        #: What its request's quotas are owed at the release (the tokens used instead of those
        #: charged), applied by the releaser in the same step as the release
        self.correction: QuotaPart | None = None
        self.granted_at = time.monotonic()  # when admission let the request run
        self._accrue = accrue

    async def charge(self, service: float) -> None:
        """Charge output to the tenant as it is delivered (and renew the lease); never raises."""
        if not self.released:
            await self._charge(self.request_id, service)

    def charge_soon(self, service: float) -> None:
        """Charge output with the other charges of a short window (``charge_interval_s``),
        not in a call of its own: what a running stream's meter does. A lease without an
        accruer (the local limits of ``fail_mode: open``, which charge nothing) ignores it."""
        if not self.released and self._accrue is not None:
            self._accrue(self.request_id, service)

    async def release(
        self, service: float | None, reusable: bool = False, correction: QuotaPart | None = None
    ) -> None:
        """End the lease with the service actually used (None: keep what was charged).

        ``reusable``: the request ended well, so the lease may pass to the next request of its
        flow rather than go back at once. ``correction``: its request's quota correction, made
        with the release rather than in a Redis call of its own. Idempotent: only the first
        call releases.
        """
        if not self.released:
            self.released = True
            self.correction = correction
            await self._release(self, service, reusable)
