"""Fail-open admission: per-replica limits while Redis is unreachable.

No fairness and no shared limits are possible without Redis; this keeps each replica within
the configured concurrency of every tenant and backend (so N replicas may admit up to N times
the configured limits), refuses what does not fit with 429 rather than queueing, and the
controller logs loudly while it is in use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from admission.errors import AtLimit
from admission.lease import Lease
from admission.ticket import Ticket
from fairgate.settings import Settings, TenantSettings


class LocalLimits:
    """In-process request counts per tenant and backend."""

    def __init__(
        self,
        settings: Settings,
        tenants: Callable[[], Mapping[str, TenantSettings]] | None = None,
    ) -> None:
        """``tenants`` gives the tenants as they are now (the settings file's if not given)."""
        self._settings = settings
        self._tenants_now = tenants or (lambda: settings.tenants)
        self._tenants: Counter[str] = Counter()
        self._backends: Counter[str] = Counter()
        self._held: dict[str, tuple[str, str]] = {}

    def admit(self, ticket: Ticket) -> Lease:
        tenant = self._tenants_now().get(ticket.tenant)
        if tenant is None or self._tenants[ticket.tenant] >= tenant.max_concurrency:
            raise AtLimit(f"Tenant '{ticket.tenant}' is at its concurrency limit.")
        pool = self._settings.pools[ticket.pool]
        free = [
            (self._backends[name], name)
            for name, backend in pool.backends.items()
            if self._backends[name] < backend.max_concurrency
        ]
        if not free:
            raise AtLimit(f"Pool '{ticket.pool}' is at capacity.")
        backend = min(free)[1]
        self._tenants[ticket.tenant] += 1
        self._backends[backend] += 1
        self._held[ticket.request_id] = (ticket.tenant, backend)
        return Lease(ticket.request_id, backend, self._charge, self._release)

    async def _charge(self, request_id: str, service: float) -> None:
        return None  # no fairness without Redis: nothing to charge

    async def _release(self, lease: Lease, service: float | None, reusable: bool) -> None:
        tenant, backend = self._held.pop(lease.request_id)
        self._tenants[tenant] -= 1
        self._backends[backend] -= 1
