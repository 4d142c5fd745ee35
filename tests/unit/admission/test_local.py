"""admission/local.py: per-replica limits while Redis is unreachable (fail-open admission).

The configuration (``tests.unit.config.settings``): tenant ``t`` may run 3 requests at once,
``u`` 32; pool ``p`` has backends ``b1`` and ``b2``, 2 requests at once each.
"""

from __future__ import annotations

import pytest

from admission.errors import AtLimit, Refused
from admission.lease import Lease
from admission.local import LocalLimits
from admission.ticket import Ticket
from tests.unit.config import settings


def ticket(request_id: str, tenant: str = "t") -> Ticket:
    return Ticket(request_id, tenant, tokens=100, service=10.0, pool="p", band="", timeout_s=30)


@pytest.fixture
def limits() -> LocalLimits:
    return LocalLimits(settings())


def test_requests_go_to_the_least_busy_backend(limits: LocalLimits) -> None:
    backends = [limits.admit(ticket(f"r{i}", "u")).backend for i in range(4)]
    assert backends == ["b1", "b2", "b1", "b2"]


def test_a_tenant_at_its_concurrency_is_refused_with_429(limits: LocalLimits) -> None:
    for i in range(3):
        limits.admit(ticket(f"r{i}"))
    with pytest.raises(AtLimit, match="Tenant 't' is at its concurrency limit.") as caught:
        limits.admit(ticket("r3"))
    assert isinstance(caught.value, Refused) and caught.value.retry_after_s == 1.0
    assert limits.admit(ticket("other", "u")).backend == "b2"  # other tenants still run


def test_a_full_pool_is_refused_whoever_asks(limits: LocalLimits) -> None:
    for i in range(4):
        limits.admit(ticket(f"r{i}", "u"))
    with pytest.raises(AtLimit, match="Pool 'p' is at capacity."):
        limits.admit(ticket("r4", "u"))
    with pytest.raises(AtLimit, match="Pool 'p' is at capacity."):
        limits.admit(ticket("r5", "t"))


async def test_a_released_lease_frees_its_tenant_and_backend(limits: LocalLimits) -> None:
    leases = [limits.admit(ticket(f"r{i}", "u")) for i in range(4)]
    await leases[1].release(5.0)  # the one on b2
    assert limits.admit(ticket("r4", "u")).backend == "b2"
    with pytest.raises(AtLimit):
        limits.admit(ticket("r5", "u"))


async def test_a_lease_released_twice_frees_its_place_once(limits: LocalLimits) -> None:
    leases: list[Lease] = [limits.admit(ticket(f"r{i}")) for i in range(3)]
    await leases[0].release(None)
    await leases[0].release(None)
    limits.admit(ticket("r3"))
    with pytest.raises(AtLimit, match="Tenant 't'"):
        limits.admit(ticket("r4"))


async def test_charging_is_accepted_and_changes_nothing(limits: LocalLimits) -> None:
    lease = limits.admit(ticket("r0", "u"))
    await lease.charge(50.0)
    assert [limits.admit(ticket(f"r{i}", "u")).backend for i in (1, 2, 3)] == ["b2", "b1", "b2"]


def test_replicas_keep_their_own_counts() -> None:
    """Each replica enforces the limits alone: N replicas may admit N times the limit."""
    config = settings()
    first, second = LocalLimits(config), LocalLimits(config)
    for i in range(3):
        first.admit(ticket(f"a{i}"))
        second.admit(ticket(f"b{i}"))
    for replica in (first, second):
        with pytest.raises(AtLimit):
            replica.admit(ticket("more"))
