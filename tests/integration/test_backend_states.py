"""Backend state, one owner (backends/state.py): every report about a backend changes this
process's view and what every replica's dispatch reads in Redis, together.

Backends answer through fake transports (no engine runs); admission is the real one, on a
real Redis, so what a report means for dispatch is checked by what admission grants.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from redis.asyncio import Redis

from admission.controller import Admission
from admission.ticket import Ticket
from backends.backend import Backend
from backends.errors import BackendUnreachable
from backends.state import BackendStates
from backends.transport import EngineRequest, FakeResponse, FakeTransport
from fairgate.settings import Settings
from tests.conftest import MakeAdmission

PREFIX = "fairgate:{adm}:"
BACKOFF_S = 30.0


def settings_for(redis_url: str) -> Settings:
    return Settings(
        redis={"url": redis_url},
        pools={
            "p": {
                "backends": {
                    name: {"url": f"http://127.0.0.1:{9000 + i}", "models": ["m"]}
                    for i, name in enumerate(("b0", "b1"))
                }
            }
        },
        tenants={"t": {"api_keys": ["k"], "max_concurrency": 100, "max_inflight_tokens": 10**9}},
        server={"unhealthy_backoff_s": BACKOFF_S, "eject_after_failures": 2},
        admission={"upkeep_interval_s": 30, "lease_reuse_s": 0},
    )


class Engines:
    """Each backend's fake engine: its health answer and its metrics, as a test sets them."""

    def __init__(self) -> None:
        self.health = {"b0": 200, "b1": 200}
        self.metrics = {"b0": "", "b1": ""}

    def transport(self, name: str) -> FakeTransport:
        def answer(request: EngineRequest) -> FakeResponse:
            if request.path == "/metrics":
                return FakeResponse(200, self.metrics[name])
            return FakeResponse(self.health[name])

        return FakeTransport(answer)


Setup = tuple[BackendStates, dict[str, Backend], Admission, Engines, Redis]


@pytest.fixture
async def states(redis_url: str, admission_for: MakeAdmission) -> Setup:
    settings = settings_for(redis_url)
    admission = await admission_for(settings)
    engines = Engines()
    backends = {
        name: Backend(name, config, engines.transport(name))
        for name, (_, config) in settings.backends().items()
    }
    return (
        BackendStates(backends.values(), admission, settings),
        backends,
        admission,
        engines,
        Redis.from_url(redis_url),
    )


def ticket() -> Ticket:
    return Ticket(uuid.uuid4().hex, "t", 100, 100.0, "p", "", 30.0)


async def granted(admission: Admission, times: int = 3) -> set[str]:
    """The backends admission grants ``times`` requests to (each released at once)."""
    found = set()
    for _ in range(times):
        lease = await admission.acquire(ticket())
        found.add(lease.backend)
        await lease.release(None)
    return found


async def down_for_s(redis: Redis, backend: str) -> float:
    """How much longer Redis keeps ``backend`` out of dispatch (0: it does not)."""
    until = await redis.hget(PREFIX + "down", backend)
    return 0.0 if until is None else int(until) / 1000 - time.time()


async def test_a_refused_connection_takes_the_backend_out_everywhere(states: Setup) -> None:
    service, backends, admission, _, redis = states
    await service.connect_failed(backends["b0"], BackendUnreachable("b0: refused"))
    assert not backends["b0"].healthy and backends["b1"].healthy
    assert BACKOFF_S - 5 < await down_for_s(redis, "b0") <= BACKOFF_S
    assert await granted(admission) == {"b1"}
    service.connected(backends["b0"])  # a later connection made it: up again here
    assert backends["b0"].healthy
    await redis.aclose()


async def test_failed_requests_in_a_row_eject_and_a_passing_probe_does_not_end_it(
    states: Setup,
) -> None:
    service, backends, admission, _, redis = states
    b0 = backends["b0"]
    await service.request_failed(b0, "status 500")
    service.request_succeeded(b0)  # the run is broken: counting starts again
    await service.request_failed(b0, "status 500")
    assert b0.healthy and await down_for_s(redis, "b0") == 0
    await service.request_failed(b0, "status 500")  # two in a row: ejected
    assert not b0.healthy
    assert BACKOFF_S - 5 < await down_for_s(redis, "b0") <= BACKOFF_S
    await service.probed(b0, None)  # its health endpoint answers, yet it stays out
    assert not b0.healthy and await down_for_s(redis, "b0") > BACKOFF_S - 5
    assert await granted(admission) == {"b1"}
    for _ in range(2):  # ejected again, right after: the back-off doubles, here and in Redis
        await service.request_failed(b0, "status 500")
    assert 2 * BACKOFF_S - 5 < await down_for_s(redis, "b0") <= 2 * BACKOFF_S
    await redis.aclose()


async def test_probes_take_a_backend_out_and_bring_it_back(states: Setup) -> None:
    service, backends, admission, engines, redis = states
    await service.start()  # the first round of probes: both answer
    try:
        assert backends["b0"].healthy and await down_for_s(redis, "b0") == 0
        engines.health["b0"] = 503
        await service._probes.check_all()
        assert not backends["b0"].healthy
        assert BACKOFF_S - 5 < await down_for_s(redis, "b0") <= BACKOFF_S
        assert await granted(admission) == {"b1"}
        engines.health["b0"] = 200
        await service._probes.check_all()
        assert backends["b0"].healthy and await down_for_s(redis, "b0") == 0
        assert "b0" in await granted(admission)
    finally:
        await service.stop()
        await redis.aclose()


def vllm_metrics(waiting: int, blocks: int) -> str:
    return (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 4.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}.0\n'
        "# TYPE vllm:cache_config_info gauge\n"
        f'vllm:cache_config_info{{block_size="16",engine="0",num_gpu_blocks="{blocks}"}} 1.0\n'
    )


async def test_an_engine_that_queues_is_held_and_its_capacity_becomes_its_budget(
    states: Setup,
) -> None:
    service, backends, admission, engines, redis = states
    engines.metrics["b0"] = vllm_metrics(waiting=3, blocks=1000)
    engines.metrics["b1"] = vllm_metrics(waiting=0, blocks=2000)
    for backend in backends.values():
        await service._scrapes.scrape(backend)
    assert await redis.hexists(PREFIX + "engine", "b0:busy")
    assert not await redis.hexists(PREFIX + "engine", "b1:busy")
    budgets = {
        name: json.loads(raw)["mt"]
        for name, raw in (await redis.hgetall(PREFIX + "cfg:backends")).items()
    }
    assert budgets == {b"b0": 14_400, b"b1": 28_800}  # 16 tokens a block, 90 % of it
    assert await granted(admission) == {"b1"}
    engines.metrics["b0"] = vllm_metrics(waiting=0, blocks=1000)  # it drained
    await service._scrapes.scrape(backends["b0"])
    assert not await redis.hexists(PREFIX + "engine", "b0:busy")
    await redis.aclose()


async def test_a_drain_holds_until_lifted(states: Setup) -> None:
    service, _, admission, _, redis = states
    running = await admission.acquire(ticket())
    await service.drain(running.backend)
    assert await redis.hgetall(PREFIX + "drained") == {running.backend.encode(): b"1"}
    assert running.backend not in await granted(admission)
    assert await service.running(running.backend) == 1  # what runs there finishes
    await running.release(None)
    assert await service.running(running.backend) == 0
    await service.drain(running.backend, drained=False)
    assert await redis.hgetall(PREFIX + "drained") == {}
    await redis.aclose()
