"""The simulator spends time like a GPU running vLLM: checked on its own (simulated) clock.

Every figure here is read from the simulator's timelines (``/sim/requests/{id}``) or metrics,
which are in simulated seconds, so the assertions hold on a slow or loaded machine.
"""

from __future__ import annotations

import asyncio
import itertools

import aiohttp

from tests.conftest import RunningSim, StartSim

_ids = itertools.count()


async def generate(
    sim: RunningSim, prompt_tokens: int, output_tokens: int, **extra: object
) -> dict:
    """Send a completion with an exact prompt length and output length; return its timeline."""
    request_id = f"req-{next(_ids)}"
    body = {
        "model": "llama-3-8b",
        "prompt": [7] * prompt_tokens,
        "max_tokens": output_tokens,
        "ignore_eos": True,
        **extra,
    }
    async with sim.http.post(
        f"{sim.url}/v1/completions", json=body, headers={"X-Request-Id": request_id}
    ) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
    return await sim.timeline(request_id)


async def wait_until(condition, sim: RunningSim) -> dict:
    """Poll the simulator's state until ``condition(state)`` holds; return that state."""
    while True:
        state = await sim.state()
        if condition(state):
            return state
        await asyncio.sleep(0.005)


async def test_time_to_first_token_grows_with_prompt_length(start_sim: StartSim) -> None:
    sim = await start_sim(time_scale=20.0)
    ttfts = [(await generate(sim, n, 1))["ttft"] for n in (100, 2_000, 8_000, 28_000)]
    assert ttfts == sorted(ttfts) and len(set(ttfts)) == 4
    # 28k tokens need four 8192-token prefill chunks; 100 tokens need one tiny step.
    assert ttfts[3] > 20 * ttfts[0]


async def test_a_long_prompt_blocks_a_short_one_behind_it(start_sim: StartSim) -> None:
    sim = await start_sim(time_scale=5.0)
    alone = (await generate(sim, 100, 1))["ttft"]

    long_request = asyncio.create_task(generate(sim, 28_000, 1))
    await wait_until(lambda s: s["running"] == 1, sim)  # the long prefill is in the engine
    short = await generate(sim, 100, 1)
    long = await long_request

    assert short["first_token"] >= long["first_token"]  # it had to wait for the prefill chunks
    assert short["ttft"] > 10 * alone


async def test_throughput_saturates_as_concurrency_rises(start_sim: StartSim) -> None:
    sim = await start_sim(time_scale=10.0, **{"scheduler.max_num_seqs": 16})

    async def run(concurrency: int) -> tuple[float, float]:
        timelines = await asyncio.gather(*(generate(sim, 32, 256) for _ in range(concurrency)))
        span = max(t["finished"] for t in timelines) - min(t["arrival"] for t in timelines)
        waited = max(t["first_scheduled"] - t["arrival"] for t in timelines)
        return 256 * concurrency / span, waited

    one, _ = await run(1)
    sixteen, waited16 = await run(16)
    sixty_four, waited64 = await run(64)

    assert sixteen > 10 * one  # batching: 16 sequences share each step's fixed cost
    assert sixty_four < 1.15 * sixteen  # max_num_seqs=16 caps the batch: no more throughput
    assert waited64 > 10 * max(waited16, 0.01)  # ...the extra requests queue instead


async def test_kv_exhaustion_leaves_requests_waiting_and_preempts(start_sim: StartSim) -> None:
    # 64 blocks of 16 = 1,024 tokens of KV: three 300-token prompts fill most of it.
    sim = await start_sim(time_scale=5.0, **{"kv_cache.num_blocks": 64, "max_model_len": 1024})
    requests = [asyncio.create_task(generate(sim, 300, 300)) for _ in range(6)]
    crowded = await wait_until(lambda s: s["waiting"] > 0 and s["running"] > 0, sim)
    waiting_metric = await sim.metric("vllm:num_requests_waiting")
    timelines = await asyncio.gather(*requests)

    assert crowded["kv_used_blocks"] <= 64
    assert waiting_metric > 0
    assert await sim.metric("vllm:num_preemptions_total") > 0
    assert all(t["output_tokens"] == 300 and t["status"] == "finished" for t in timelines)
    assert any(t["preemptions"] > 0 for t in timelines)
    state = await sim.state()
    assert (state["running"], state["waiting"], state["kv_used_blocks"]) == (0, 0, 0)


async def test_stream_disconnect_aborts_and_frees_kv(start_sim: StartSim) -> None:
    sim = await start_sim(time_scale=1.0)
    body = {
        "model": "llama-3-8b",
        "prompt": [7] * 2000,
        "max_tokens": 5000,
        "ignore_eos": True,
        "stream": True,
    }
    resp = await sim.http.post(
        f"{sim.url}/v1/completions", json=body, headers={"X-Request-Id": "gone-stream"}
    )
    for _ in range(3):
        await resp.content.readuntil(b"\n\n")
    assert (await sim.state())["kv_used_blocks"] > 0
    resp.close()  # the client hangs up mid-stream

    state = await wait_until(lambda s: s["running"] == 0, sim)
    assert state["kv_used_blocks"] == 0
    timeline = await sim.timeline("gone-stream")
    assert timeline["status"] == "aborted" and 3 <= timeline["output_tokens"] < 5000
    assert await sim.metric("vllm:request_success_total", finished_reason="abort") == 1


async def test_disconnect_while_waiting_or_not_streaming_aborts(start_sim: StartSim) -> None:
    sim = await start_sim(time_scale=1.0, **{"scheduler.max_num_seqs": 1})
    body = {"model": "llama-3-8b", "prompt": [7] * 100, "max_tokens": 5000, "ignore_eos": True}

    async def post(request_id: str) -> None:
        async with sim.http.post(
            f"{sim.url}/v1/completions", json=body, headers={"X-Request-Id": request_id}
        ) as resp:
            await resp.read()

    running = asyncio.create_task(post("running"))
    queued = asyncio.create_task(post("queued"))
    await wait_until(lambda s: s["running"] == 1 and s["waiting"] == 1, sim)
    queued.cancel()
    await wait_until(lambda s: s["waiting"] == 0, sim)
    running.cancel()
    state = await wait_until(lambda s: s["running"] == 0, sim)

    assert state["kv_used_blocks"] == 0
    assert (await sim.timeline("queued"))["status"] == "aborted"
    assert (await sim.timeline("running"))["status"] == "aborted"
    assert await sim.metric("vllm:request_success_total", finished_reason="abort") == 2
    # the engine is still healthy afterwards
    assert (await generate(sim, 10, 2))["output_tokens"] == 2
    for task in (running, queued):
        try:
            await task
        except (asyncio.CancelledError, aiohttp.ClientError):
            pass


async def test_peak_requests_are_counted_overall_and_per_tenant(start_sim: StartSim) -> None:
    """Running and waiting requests both count; aborted and finished ones leave the count."""
    sim = await start_sim(time_scale=1.0, **{"scheduler.max_num_seqs": 2})
    body = {"model": "llama-3-8b", "prompt": [7] * 50, "max_tokens": 5000, "ignore_eos": True}

    async def open_stream(tenant: str | None) -> aiohttp.ClientResponse:
        headers = {"X-Fairgate-Tenant": tenant} if tenant else {}
        resp = await sim.http.post(
            f"{sim.url}/v1/completions", json={**body, "stream": True}, headers=headers
        )
        assert resp.status == 200  # headers come after the request entered the engine
        return resp

    streams = [await open_stream(t) for t in ("a", "a", "b", None, "a")]
    state = await wait_until(lambda s: s["running"] == 2, sim)
    assert state["waiting"] == 3
    assert state["peak_requests"] == 5
    assert state["peak_requests_by_tenant"] == {"a": 3, "b": 1}
    for resp in streams:
        resp.close()
    await wait_until(lambda s: s["running"] == 0 and s["waiting"] == 0, sim)

    # aborted requests left: two new ones of b make b's peak 2, not 3; the overall peak stays
    streams = [await open_stream("b") for _ in range(2)]
    state = await sim.state()
    assert state["peak_requests"] == 5
    assert state["peak_requests_by_tenant"] == {"a": 3, "b": 2}
    for resp in streams:
        resp.close()
    await wait_until(lambda s: s["running"] == 0 and s["waiting"] == 0, sim)

    # finished requests leave too: one after the other, tenant c never has two at once
    for _ in range(2):
        async with sim.http.post(
            f"{sim.url}/v1/completions",
            json={**body, "max_tokens": 3},
            headers={"X-Fairgate-Tenant": "c", "X-Request-Id": f"c-{next(_ids)}"},
        ) as resp:
            assert resp.status == 200
            await resp.read()
    state = await sim.state()
    assert state["peak_requests_by_tenant"] == {"a": 3, "b": 2, "c": 1}
    assert state["peak_requests"] == 5
    last = await sim.timeline(resp.headers["X-Request-Id"])
    assert last["tenant"] == "c" and last["status"] == "finished"
