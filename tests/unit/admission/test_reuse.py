"""admission/reuse.py: the lease shelf, which leases a replica holds for the next request of
their flow, which one a request takes, and which are let go."""

from __future__ import annotations

import asyncio

from admission.reuse import Flow, HeldLease, LeaseShelf

FLOW: Flow = ("acme", "chat", "")
OTHER: Flow = ("acme", "batch", "")


def held(lease_id: str, tokens: int = 100, backend: str = "b1") -> HeldLease:
    return HeldLease(lease_id, backend, tokens, used=1.0)


class LetGo:
    """The shelf's ``let_go``: records what it was given, and wakes who waits for a lease."""

    def __init__(self) -> None:
        self.leases: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, lease: HeldLease) -> None:
        self.leases.append(lease.lease_id)
        self._changed.set()

    async def until(self, lease_id: str) -> None:
        async with asyncio.timeout(10):
            while lease_id not in self.leases:
                self._changed.clear()
                await self._changed.wait()


def shelf(hold_s: float = 60.0) -> tuple[LeaseShelf, LetGo]:
    let_go = LetGo()
    return LeaseShelf(hold_s, let_go), let_go


async def test_a_request_takes_the_most_recently_held_lease_of_its_flow() -> None:
    leases, let_go = shelf()
    leases.put(FLOW, held("old"))
    leases.put(FLOW, held("new"))
    taken = leases.take(FLOW, 100)
    assert taken is not None and taken.lease_id == "new"
    taken = leases.take(FLOW, 100)
    assert taken is not None and taken.lease_id == "old"
    assert leases.take(FLOW, 100) is None
    assert let_go.leases == []


async def test_a_lease_too_small_for_the_request_is_passed_over() -> None:
    leases, _ = shelf()
    leases.put(FLOW, held("big", tokens=500))
    leases.put(FLOW, held("small", tokens=50))
    taken = leases.take(FLOW, 100)
    assert taken is not None and taken.lease_id == "big"
    assert leases.take(FLOW, 51) is None  # "small" stays for a request it fits
    taken = leases.take(FLOW, 50)
    assert taken is not None and taken.lease_id == "small"


async def test_a_request_with_a_preferred_backend_takes_only_a_lease_there() -> None:
    leases, _ = shelf()
    leases.put(FLOW, held("on-b1", backend="b1"))
    leases.put(FLOW, held("on-b2", backend="b2"))
    taken = leases.take(FLOW, 100, backend="b1")
    assert taken is not None and taken.lease_id == "on-b1"
    assert leases.take(FLOW, 100, backend="b1") is None
    taken = leases.take(FLOW, 100)  # no preference: any backend
    assert taken is not None and taken.lease_id == "on-b2"


async def test_flows_do_not_share_leases() -> None:
    leases, _ = shelf()
    leases.put(FLOW, held("chat"))
    assert leases.take(OTHER, 1) is None
    assert leases.take(("other-tenant", "chat", ""), 1) is None
    assert leases.take(("acme", "chat", "high"), 1) is None  # a band is a flow of its own
    taken = leases.take(FLOW, 1)
    assert taken is not None and taken.lease_id == "chat"


async def test_a_lease_nobody_takes_is_let_go_after_the_hold() -> None:
    leases, let_go = shelf(hold_s=0.0)
    leases.put(FLOW, held("idle"))
    await let_go.until("idle")
    assert let_go.leases == ["idle"]
    assert leases.take(FLOW, 1) is None  # and is no longer on the shelf


async def test_only_the_expired_lease_of_a_flow_is_let_go() -> None:
    leases, let_go = shelf(hold_s=60.0)
    leases.put(FLOW, held("stays"))
    leases.hold_s = 0.0
    leases.put(FLOW, held("expires"))
    await let_go.until("expires")
    taken = leases.take(FLOW, 1)
    assert taken is not None and taken.lease_id == "stays"
    assert let_go.leases == ["expires"]


async def test_a_taken_lease_is_never_let_go() -> None:
    leases, let_go = shelf(hold_s=0.0)
    leases.put(FLOW, held("taken"))
    assert leases.take(FLOW, 1) is not None
    leases.put(OTHER, held("witness"))  # its hold ends after the taken one's would have
    await let_go.until("witness")
    assert let_go.leases == ["witness"]


async def test_take_all_empties_the_shelf_and_nothing_is_let_go_twice() -> None:
    leases, let_go = shelf(hold_s=0.0)
    leases.put(FLOW, held("a"))
    leases.put(FLOW, held("b"))
    leases.put(OTHER, held("c"))
    assert sorted(lease.lease_id for lease in leases.take_all()) == ["a", "b", "c"]
    assert leases.take_all() == []
    assert leases.take(FLOW, 1) is None
    leases.put(OTHER, held("witness"))
    await let_go.until("witness")
    assert let_go.leases == ["witness"]  # the caller of take_all releases them, not the timers
