"""Values reused and refreshed in the background: one read per key at a time, failures kept
from the callers that did not wait for them."""

from __future__ import annotations

import asyncio

import pytest

from estimators.refreshing import Refreshing


class Reads:
    """A read function that counts its calls, answers ``value`` and fails when told to."""

    def __init__(self) -> None:
        self.calls = 0
        self.value = 1
        self.error: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, key: str) -> int:
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


async def settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_callers_of_a_key_never_read_share_one_read() -> None:
    reads = Reads()
    reads.gate.clear()
    values = Refreshing(reads, fresh_s=60, timeout_s=5)
    waiting = [asyncio.ensure_future(values.get("k")) for _ in range(20)]
    await settled()
    reads.gate.set()
    assert await asyncio.gather(*waiting) == [1] * 20
    assert reads.calls == 1
    assert values.peek("k") == 1 and reads.calls == 1  # fresh: no read


async def test_a_failed_first_read_reaches_every_caller_and_the_next_call_reads_again() -> None:
    reads = Reads()
    reads.error = ConnectionError("down")
    values = Refreshing(reads, fresh_s=60, timeout_s=5)
    outcomes = await asyncio.gather(*(values.get("k") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes) and reads.calls == 1
    reads.error = None
    assert await values.get("k") == 1 and reads.calls == 2


async def test_a_stale_value_answers_and_a_failed_refresh_keeps_it_for_another_period() -> None:
    reads = Reads()
    values = Refreshing(reads, fresh_s=0.01, timeout_s=5)
    assert await values.get("k") == 1
    await asyncio.sleep(0.02)
    reads.error, reads.value = ConnectionError("down"), 2
    assert values.peek("k") == 1 and values.peek("k") == 1  # stale, one refresh started
    await settled()
    assert reads.calls == 2
    assert values.peek("k") == 1 and reads.calls == 2  # kept fresh again after the failure
    await asyncio.sleep(0.02)
    reads.error = None
    assert values.peek("k") == 1  # stale again: the next refresh starts, and succeeds
    await settled()
    assert values.peek("k") == 2 and reads.calls == 3


async def test_a_caller_that_leaves_does_not_end_the_read() -> None:
    reads = Reads()
    reads.gate.clear()
    values = Refreshing(reads, fresh_s=60, timeout_s=5)
    leaving = asyncio.ensure_future(values.get("k"))
    await settled()
    leaving.cancel()
    reads.gate.set()
    assert await values.get("k") == 1 and reads.calls == 1


async def test_no_reuse_reads_on_every_call() -> None:
    reads = Reads()
    values = Refreshing(reads, fresh_s=0, timeout_s=5)
    assert [await values.get("k") for _ in range(3)] == [1, 1, 1] and reads.calls == 3
    assert values.peek("k") is None


async def test_a_read_that_never_answers_times_out() -> None:
    reads = Reads()
    reads.gate.clear()
    values = Refreshing(reads, fresh_s=60, timeout_s=0.01)
    with pytest.raises(TimeoutError):
        await values.get("k")
    await values.close()
