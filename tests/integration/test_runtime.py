"""The gateway under the interpreter: no reference cycles per request, the collector's pauses
and the event loop's lag on ``/metrics``, the collector's settings applied at start-up.

A reference cycle per request is what made the cyclic collector pause thousands of open streams
at once (issue 17): with the collector off, requests are sent through a real gateway (in this
process, on a real redis-server, to a stand-in engine on loopback, by a client on raw sockets
that makes no garbage of its own), and what the collector then finds unreachable is counted.
Counts, not times.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp import web

from gateway import runtime
from tests.conftest import RunningGateway, ServeApp, StartGateway, gateway_config
from tests.integration.scrape import scrape, total, value

MODEL = "llama-3-8b"
CHUNKS = 4
#: The packages whose objects a request creates: none of them may end up in a cycle.
OURS = ("gateway.", "admission.", "backends.", "estimators.", "tenants.", "fairgate.")


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(**fields: object) -> dict[str, object]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL, **fields}


USAGE = {"prompt_tokens": 5, "completion_tokens": CHUNKS, "total_tokens": 5 + CHUNKS}


def engine_app(pace_s: float) -> web.Application:
    """A stand-in engine: streams :data:`CHUNKS` chunks ``pace_s`` apart, then the usage and
    ``[DONE]``; or a whole completion. Answers the health probe and the load scrape too, so
    that nothing in the background fails while garbage is counted."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            message = {"role": "assistant", "content": "hi " * CHUNKS}
            answer = {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": MODEL,
                "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
                "usage": USAGE,
            }
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(CHUNKS):
            choice = {"index": 0, "delta": {"content": "hi "}, "finish_reason": None}
            await response.write(_event(_chunk(choices=[choice])))
            await asyncio.sleep(pace_s)
        await response.write(_event(_chunk(choices=[], usage=USAGE)) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def empty(request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", empty)
    app.router.add_get("/metrics", empty)
    return app


def _port(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


async def raw_post(port: int, body: bytes, key: str = "key-a", leave_after: int = 0) -> bytes:
    """POST ``body`` on a connection of its own and read the answer to its end; or, with
    ``leave_after``, only until that many SSE events came, then drop the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    if leave_after:
        data = await reader.readuntil(b"\r\n\r\n")
        for _ in range(leave_after):
            data += await reader.readuntil(b"\n\n")
        writer.transport.abort()
        return data
    data = await reader.read()
    writer.close()
    return data


def _body(stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": CHUNKS,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


async def _every_kind(port: int, rounds: int) -> collections.Counter[str]:
    """``rounds`` each of: a stream, a plain completion, an unknown key (401), a body that is
    not JSON (400), a client that leaves mid-stream. The status lines seen, by kind."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(rounds):
        for kind, body, key, leave in (
            ("stream", _body(True), "key-a", 0),
            ("plain", _body(False), "key-a", 0),
            ("unknown key", _body(True), "nope", 0),
            ("not json", b"{nope", "key-a", 0),
            ("left", _body(True), "key-a", 1),
        ):
            answer = await raw_post(port, body, key, leave)
            seen[f"{kind} {answer.split(b' ', 2)[1].decode()}"] += 1
    return seen


async def _settled(gateway: RunningGateway, requests: int) -> None:
    """Wait until the gateway counted ``requests`` inference requests and has nothing left in
    flight (settlements run after the response)."""
    for _ in range(400):
        samples = await scrape(gateway)
        if total(samples, "fairgate_requests_total") >= requests:
            break
        await asyncio.sleep(0.025)
    else:
        raise AssertionError(f"the gateway did not count {requests} requests")
    await asyncio.sleep(0.3)  # the last settlements' background tasks


def _name(thing: object) -> str:
    return f"{type(thing).__module__}.{type(thing).__qualname__}"


def _without_selector_transports(garbage: list[object]) -> list[object]:
    """``garbage`` minus the asyncio selector loop's socket transports and what they hold.

    The standard loop's transport keeps a bound method of its own (``_read_ready_cb``): a
    cycle per connection, in Python 3.11's asyncio, which the tests run on. The gateway serves
    on uvloop, whose transports have none.
    """
    inside = {id(thing): thing for thing in garbage}
    seen: set[int] = set()
    todo = [thing for thing in garbage if _name(thing).endswith("._SelectorSocketTransport")]
    while todo:
        thing = todo.pop()
        if id(thing) not in seen:
            seen.add(id(thing))
            todo.extend(r for r in gc.get_referents(thing) if id(r) in inside)
    return [thing for thing in garbage if id(thing) not in seen]


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The cyclic collector off for the test (what is unreachable stays until asked for), and
    back as it was after."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    gc.set_debug(0)
    gc.garbage.clear()
    if was_enabled:
        gc.enable()


async def test_requests_leave_no_reference_cycles(
    start_gateway: StartGateway, serve_app: ServeApp, redis_url: str, collector_off: None
) -> None:
    engine = await serve_app(engine_app(pace_s=0.02))
    gateway = await start_gateway(gateway_config(redis_url, {"p": [engine]}))
    port = _port(gateway)
    await _every_kind(port, rounds=3)  # warm: connections, caches, scripts loaded
    await _settled(gateway, 15)
    gc.collect()

    rounds = 20
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collector finds, to look at it
    seen = await _every_kind(port, rounds)
    await _settled(gateway, 15 + 5 * rounds)
    gc.collect()
    garbage = [_name(o) for o in _without_selector_transports(gc.garbage)]

    assert seen == {
        "stream 200": rounds,
        "plain 200": rounds,
        "unknown key 401": rounds,
        "not json 400": rounds,
        "left 200": rounds,
    }
    ours = collections.Counter(name for name in garbage if name.startswith(OURS))
    assert not ours, f"objects of fairgate's own in reference cycles: {ours}"
    # aiohttp's server and client, redis-py, the background probes: a few stray cycles at
    # most, not one per request (there were 59 objects per request, every request).
    assert len(garbage) < rounds, collections.Counter(garbage).most_common(20)


async def test_gc_pauses_and_loop_lag_on_metrics(
    start_gateway: StartGateway, serve_app: ServeApp, redis_url: str
) -> None:
    engine = await serve_app(engine_app(pace_s=0.0))
    gateway = await start_gateway(gateway_config(redis_url, {"p": [engine]}))
    before = await scrape(gateway)

    class Knot:
        """Refers to itself: freed only by the cyclic collector."""

        def __init__(self) -> None:
            self.me = self

    knots = [Knot() for _ in range(1000)]
    del knots
    gc.collect(2)
    await asyncio.sleep(0.5)  # five wake-ups of the lag monitor at least
    after = await scrape(gateway)

    def grew(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)

    assert grew("fairgate_gc_pause_seconds_count", generation="2") >= 1
    assert grew("fairgate_gc_pause_seconds_sum", generation="2") > 0
    assert grew("fairgate_gc_collected_objects_total", generation="2") >= 1000
    assert grew("fairgate_event_loop_lag_seconds_count") >= 3
    lag_sum = value(after, "fairgate_event_loop_lag_seconds_sum")
    assert lag_sum is not None and lag_sum >= 0
    for generation in ("0", "1", "2"):  # every generation exported from the start
        assert value(after, "fairgate_gc_pause_seconds_count", generation=generation) is not None


async def test_startup_freezes_and_sets_the_young_threshold(
    start_gateway: StartGateway, serve_app: ServeApp, redis_url: str
) -> None:
    threshold = gc.get_threshold()
    engine = await serve_app(engine_app(pace_s=0.0))
    gc.unfreeze()
    try:
        await start_gateway(
            gateway_config(redis_url, {"p": [engine]}, server={"gc_young_threshold": 5000})
        )
        assert gc.get_threshold()[0] == 5000
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*threshold)


class _Knot:
    """Refers to itself: freed only by the cyclic collector; weakly referable, to see it go."""

    def __init__(self) -> None:
        self.me = self


def _paced(
    interval_s: float, growth: float, probe_every: int = 0, most: float | None = None
) -> dict[str, object]:
    """Server settings where only the pacer collects: CPython's own young trigger never fires
    (and, unless ``probe_every``, every tick collects); a full collection is due at ``growth``,
    or up to ``most`` after ones that freed nothing (by default it stays ``growth``)."""
    return {
        "gc_young_threshold": 2**30,
        "gc_young_interval_s": interval_s,
        "gc_full_growth": growth,
        "gc_full_growth_max": growth if most is None else most,
        "gc_probe_every": probe_every,
    }


StartPaced = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_paced(
    start_gateway: StartGateway, serve_app: ServeApp, redis_url: str
) -> AsyncIterator[StartPaced]:
    """A gateway whose collector only the pacer runs (:func:`_paced`'s settings), in front of
    an instant engine; the collector's thresholds put back as they were after the test."""
    threshold = gc.get_threshold()

    async def start(
        growth: float, probe_every: int = 0, most: float | None = None
    ) -> RunningGateway:
        engine = await serve_app(engine_app(pace_s=0.0))
        config = gateway_config(
            redis_url, {"p": [engine]}, server=_paced(0.05, growth, probe_every, most)
        )
        return await start_gateway(config)

    yield start
    gc.set_threshold(*threshold)


async def _collections(gateway: RunningGateway, generation: str) -> float:
    return value(await scrape(gateway), "fairgate_gc_pause_seconds_count", generation=generation)


async def _until(condition: Callable[[], bool], ticks: int = 400) -> bool:
    """Whether ``condition`` came true within ``ticks`` checks 0.05 s apart (at most 20 s)."""
    for _ in range(ticks):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def _gone_quiet(gateway: RunningGateway) -> bool:
    """Whether the pacer's ticks stopped collecting (five ticks of 0.05 s without one)."""
    last = await _collections(gateway, "1")
    for _ in range(80):
        await asyncio.sleep(0.25)
        now = await _collections(gateway, "1")
        if now == last:
            return True
        last = now
    return False


async def test_the_pacer_collects_young_garbage_the_allocation_counter_never_would(
    start_paced: StartPaced,
) -> None:
    """Thousands of streams allocate and free alike, so CPython's counter of net allocations
    stays below its threshold (here: never reached) while the young generation fills; the
    pacer collects it on its clock, and a cycle made now is freed by it."""
    gateway = await start_paced(1.0)
    assert gc.get_threshold()[2] == runtime.NEVER  # CPython's full collections: off
    knot = _Knot()
    gone = weakref.ref(knot)
    del knot
    assert await _until(lambda: gone() is None)
    assert await _collections(gateway, "1") >= 1


async def test_a_full_collection_follows_the_heap_growing_not_the_clock(
    start_paced: StartPaced,
) -> None:
    """Garbage that outlived a young collection sits in the oldest generation: young
    collections pass it by, however many run, until the heap has grown by the configured
    fraction; then a full collection frees it."""
    gateway = await start_paced(0.5)
    knot = _Knot()
    gone = weakref.ref(knot)
    gc.collect(1)  # alive: moved to the oldest generation, as a young tick would
    del knot
    young, full = await _collections(gateway, "1"), await _collections(gateway, "2")
    await _until(lambda: False, ticks=20)  # a second of young collections
    assert await _collections(gateway, "1") >= young + 5
    assert gone() is not None, "a young collection freed garbage of the oldest generation"
    assert await _collections(gateway, "2") == full

    grown = [object() for _ in range(sys.getallocatedblocks())]  # the heap, doubled
    assert await _until(lambda: gone() is None)
    assert await _collections(gateway, "2") >= full + 1
    del grown


async def test_a_full_collection_that_freed_nothing_waits_for_more_growth_next_time(
    start_paced: StartPaced,
) -> None:
    """More open streams grow the heap with live objects: the full collection that growth
    calls for frees next to nothing, and the next one waits for twice the growth (garbage made
    meanwhile waits with it), not another walk of everything at the same step."""
    gateway = await start_paced(0.5, most=2.0)
    full = await _collections(gateway, "2")
    live = [object() for _ in range(sys.getallocatedblocks() * 3 // 2)]  # grown 2.5x: alive
    assert await _full_collections(gateway, full + 1)  # one, that freed nothing

    knot = _Knot()
    gone = weakref.ref(knot)
    gc.collect(1)  # alive: moved to the oldest generation, as a young tick would
    del knot
    # grown by more than the growth that called for the last one, less than twice that
    more = [object() for _ in range(sys.getallocatedblocks() * 3 // 4)]
    await _until(lambda: False, ticks=20)  # a second of ticks
    assert gone() is not None, "a full collection ran at the growth allowed before"
    assert await _collections(gateway, "2") == full + 1

    most = [object() for _ in range(sys.getallocatedblocks())]  # and twice that: enough
    assert await _until(lambda: gone() is None)
    assert await _full_collections(gateway, full + 2)
    del live, more, most


async def _full_collections(gateway: RunningGateway, count: float) -> bool:
    """Whether the gateway has run ``count`` full collections within 20 s."""
    for _ in range(400):
        if await _collections(gateway, "2") >= count:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_quiet_ticks_freeze_and_the_full_collection_frees_what_they_froze(
    start_paced: StartPaced,
) -> None:
    """Young collections that keep finding nothing give way to freezing (no walk, no pause):
    garbage made then is out of the young collections' view, and the full collection that
    the heap's growth calls for thaws it and frees it."""
    gateway = await start_paced(0.5, 1_000)
    assert await _gone_quiet(gateway)
    young, full = await _collections(gateway, "1"), await _collections(gateway, "2")
    knot, witness = _Knot(), _Knot()  # made on the same tick: the witness stays alive
    gone = weakref.ref(knot)
    del knot
    await _until(lambda: False, ticks=20)  # a second of ticks
    assert gone() is not None, "a young collection ran on a quiet tick"
    assert await _collections(gateway, "1") == young  # every tick froze, none walked
    # frozen: in none of the collector's generations (the frozen count itself also falls as
    # objects frozen earlier, by other gateways of this test process, are freed)
    assert gc.is_tracked(witness)
    assert not any(o is witness for o in gc.get_objects())

    grown = [object() for _ in range(sys.getallocatedblocks())]  # the heap, grown
    assert await _until(lambda: gone() is None)
    assert await _collections(gateway, "2") >= full + 1
    del grown


async def test_the_pacer_stays_off_while_the_collector_is_disabled(
    start_paced: StartPaced, collector_off: None
) -> None:
    """gc.disable() means no automatic collection: the pacer's included."""
    gateway = await start_paced(1.0)
    young = await _collections(gateway, "1")
    knot = _Knot()
    gone = weakref.ref(knot)
    del knot
    await _until(lambda: False, ticks=10)
    assert gone() is not None
    assert await _collections(gateway, "1") == young
