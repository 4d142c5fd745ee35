"""admission/lease.py: a lease charges output while it runs and is released exactly once."""

from __future__ import annotations

from admission.lease import Lease


class Recorder:
    """The charger and releaser a lease is given, recording their calls."""

    def __init__(self) -> None:
        self.charged: list[tuple[str, float]] = []
        self.released: list[tuple[str, float | None, bool]] = []

    async def charge(self, request_id: str, service: float) -> None:
        self.charged.append((request_id, service))

    async def release(self, lease: Lease, service: float | None, reusable: bool) -> None:
        self.released.append((lease.request_id, service, reusable))


def lease(calls: Recorder) -> Lease:
    return Lease("r1", "b1", calls.charge, calls.release, flow=("t", "p", ""), tokens=64)


async def test_output_is_charged_while_the_lease_runs() -> None:
    calls = Recorder()
    running = lease(calls)
    await running.charge(2.5)
    await running.charge(1.0)
    assert calls.charged == [("r1", 2.5), ("r1", 1.0)]


async def test_release_happens_once_with_the_first_calls_service() -> None:
    calls = Recorder()
    running = lease(calls)
    await running.release(12.0, reusable=True)
    await running.release(99.0)
    await running.release(None)
    assert calls.released == [("r1", 12.0, True)]
    assert running.released


async def test_release_without_service_keeps_what_was_charged_and_is_not_reusable() -> None:
    calls = Recorder()
    await lease(calls).release(None)
    assert calls.released == [("r1", None, False)]


async def test_nothing_is_charged_after_release() -> None:
    calls = Recorder()
    running = lease(calls)
    await running.release(1.0)
    await running.charge(5.0)
    assert calls.charged == []


def test_a_lease_says_which_later_requests_could_reuse_it() -> None:
    running = lease(Recorder())
    assert (running.request_id, running.backend, running.flow, running.tokens) == (
        "r1",
        "b1",
        ("t", "p", ""),
        64,
    )
    assert not running.released
