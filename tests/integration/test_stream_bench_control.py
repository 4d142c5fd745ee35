"""The slow-stream benchmark's control: the forwarder told to spend fairgate's extra CPU, which
it still forwards byte for byte."""

from __future__ import annotations

import time

import aiohttp
import pytest

from loadtest.proxy_overhead.workload import CHAT_PATH, Burn, forwarder_app, spend
from loadtest.stream_bench import measurement
from loadtest.stream_bench.measurement import CONTROL_PER_REQUEST, Turn, TurnResult
from loadtest.stream_bench.stack import CONTROL, FAIRGATE, FORWARDER, Target
from loadtest.stream_bench.workload import Shape, upstream_app
from tests.conftest import ServeApp

SHAPE = Shape(3, 0.0, 0.01)


def _spent(path: str, chunks: int, cpu_s: float) -> TurnResult:
    result = TurnResult(Turn(path, 100, SHAPE), 1.0, 10.0, chunks=chunks)
    result.cpu = {"gateway": cpu_s}
    return result


async def _control(serve_app: ServeApp) -> tuple[Burn, str, str]:
    """The control in front of the benchmark's upstream: its burn, its URL, the upstream's."""
    upstream = await serve_app(upstream_app())
    burn = Burn()
    return burn, await serve_app(forwarder_app(upstream, burn)), upstream


async def test_the_control_is_told_what_fairgate_spent_more_per_request_and_per_chunk(
    serve_app: ServeApp,
) -> None:
    burn, url, _ = await _control(serve_app)
    target = Target(CONTROL, int(url.rsplit(":", 1)[1]), {"gateway": (1,)})
    turn = Turn(CONTROL, 100, SHAPE)
    results = {
        Turn(FORWARDER, 100, SHAPE): _spent(FORWARDER, 1_000, 0.010),  # 10 µs a chunk
        Turn(FAIRGATE, 100, SHAPE): _spent(FAIRGATE, 1_000, 0.040),  # 40 µs a chunk
    }
    async with aiohttp.ClientSession() as http:
        told = await measurement.set_burn(http, target, turn, results)
        assert told == pytest.approx(30e-6)
        per_request = 30e-6 * SHAPE.chunks * CONTROL_PER_REQUEST
        assert burn.start_s == pytest.approx(per_request / 2)
        assert burn.end_s == pytest.approx(per_request / 2)
        assert burn.chunk_s == pytest.approx(30e-6 * (1 - CONTROL_PER_REQUEST))
        # what it spends per stream in all: the extra per chunk, times the chunks
        spent = burn.start_s + burn.end_s + burn.chunk_s * SHAPE.chunks
        assert spent == pytest.approx(30e-6 * SHAPE.chunks)

        # its first turn added 40 µs where it was told 30: it is told less from now on
        ran = results[turn] = _spent(CONTROL, 1_000, 0.050)
        ran.burns = [30e-6]
        assert await measurement.set_burn(http, target, turn, results) == pytest.approx(22.5e-6)
        assert burn.chunk_s == pytest.approx(22.5e-6 * (1 - CONTROL_PER_REQUEST))

        # before the forwarder and fairgate have run at this K: nothing to spend
        assert await measurement.set_burn(http, target, Turn(CONTROL, 5, SHAPE), results) == 0.0
        assert (burn.start_s, burn.chunk_s, burn.end_s) == (0.0, 0.0, 0.0)


async def test_the_control_forwards_the_stream_byte_for_byte_while_it_burns(
    serve_app: ServeApp,
) -> None:
    burn, url, upstream = await _control(serve_app)
    burn.start_s = burn.chunk_s = burn.end_s = 0.001
    request = {"user": SHAPE.user, "seed": 3, "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(upstream + CHAT_PATH, json=request) as direct:
            expected = await direct.read()
        async with http.post(url + CHAT_PATH, json=request) as relayed:
            assert relayed.status == 200
            assert relayed.content_type == "text/event-stream"
            assert await relayed.read() == expected
    assert expected.endswith(b"data: [DONE]\n\n")


def test_spend_holds_the_thread_for_at_least_the_cpu_asked() -> None:
    before = time.thread_time()
    spend(0.005)
    assert time.thread_time() - before >= 0.005
