"""When the collector's pacer runs a full collection: after growth, more growth after one that
freed nothing."""

from __future__ import annotations

from gateway.runtime import FullCollections


def test_a_full_collection_is_due_once_the_heap_has_grown_by_the_growth_allowed() -> None:
    full = FullCollections(least=1.0, most=4.0, settled=1000)
    assert not full.due(2000)
    assert full.due(2001)


def test_collections_that_free_nothing_double_the_growth_allowed_up_to_the_most() -> None:
    full = FullCollections(least=1.0, most=4.0)
    allowed = []
    for _ in range(4):
        full.collected(before=2000, after=1999)  # 0.05% freed: live objects, not garbage
        allowed.append(full.growth)
    assert allowed == [2.0, 4.0, 4.0, 4.0]
    assert full.settled == 1999
    assert not full.due(1999 * 5)
    assert full.due(1999 * 5 + 1)


def test_a_collection_that_frees_garbage_brings_the_least_growth_back() -> None:
    full = FullCollections(least=0.5, most=8.0)
    full.collected(before=1000, after=1000)
    full.collected(before=1000, after=1000)
    assert full.growth == 2.0
    full.collected(before=3000, after=2000)  # a third of the heap was cyclic garbage
    assert full.growth == 0.5
    assert full.settled == 2000
    assert full.due(3001)


def test_the_least_growth_stays_where_the_most_is_the_same() -> None:
    full = FullCollections(least=1.0, most=1.0)
    full.collected(before=1000, after=1000)
    assert full.growth == 1.0
