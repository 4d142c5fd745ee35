"""When the collector's pacer collects the young generations and when it freezes them."""

from __future__ import annotations

from gateway.runtime import QUIET_COLLECTIONS, YoungTicks


def run(ticks: YoungTicks, garbage: list[int]) -> str:
    """Ticks in order until a collection has found each of ``garbage`` in turn: C collects,
    F freezes."""
    seen = ""
    for found in garbage:
        while not ticks.collects():
            seen += "F"
        seen += "C"
        ticks.found(found)
    return seen


def test_collections_that_find_nothing_give_way_to_freezing_and_probes() -> None:
    quiet = [0] * (QUIET_COLLECTIONS + 3)
    assert run(YoungTicks(probe_every=4), quiet) == "CCCC" + "FFFC" * 3


def test_a_probe_that_finds_garbage_brings_a_collection_every_tick_back() -> None:
    found = [0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0]
    assert run(YoungTicks(probe_every=4), found) == "CCCC" + "FFFC" * 2 + "CCCC" + "FFFC"


def test_no_probing_collects_every_tick() -> None:
    assert run(YoungTicks(probe_every=0), [0] * 10) == "C" * 10


def test_a_full_collection_starts_the_quiet_count_again() -> None:
    ticks = YoungTicks(probe_every=4)
    for _ in range(QUIET_COLLECTIONS):
        assert ticks.collects()
        ticks.found(0)
    assert not ticks.collects()
    ticks.found(None)  # a full collection ran
    assert [ticks.collects() for _ in range(QUIET_COLLECTIONS)] == [True] * QUIET_COLLECTIONS
