"""Engine-aware dispatch: what engines report of their own load steers admission.

An engine with requests waiting inside it gets no more work until it drains (the queue stays
in fairgate, where it is fair); the KV usage an engine reports corrects the least-loaded
choice; the KV capacity it reports becomes its token budget. Real Redis, the real scripts, a
real simulator and gateway for the end-to-end case.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import yaml
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from admission.domain import backend_load, set_drained
from admission.ticket import Ticket
from backends.affinity import SESSION_HEADER, preferred_backend, session_key
from fairgate import cli
from fairgate.keys import AdmissionKeys
from fairgate.settings import Settings
from tests.conftest import StartGateway, StartSim, gateway_config

PREFIX = "fairgate:{adm}:"


def settings_for(redis_url: str, backends: int = 2, max_tokens: int = 100_000) -> Settings:
    return Settings(
        redis={"url": redis_url},
        pools={
            "p": {
                "backends": {
                    f"b{i}": {
                        "url": f"http://127.0.0.1:{9000 + i}",
                        "models": ["m"],
                        "max_concurrency": 10,
                        "max_inflight_tokens": max_tokens,
                    }
                    for i in range(backends)
                }
            }
        },
        tenants={"t": {"api_keys": ["k"], "max_concurrency": 100, "max_inflight_tokens": 10**9}},
        admission={"upkeep_interval_s": 30},  # no polling: grants come from the scripts
    )


def ticket(tokens: int = 100) -> Ticket:
    return Ticket(uuid.uuid4().hex, "t", tokens, float(tokens), "p", "", 30.0)


async def test_a_busy_engine_gets_no_work_until_it_drains(redis_url: str, admission_for) -> None:
    admission = await admission_for(settings_for(redis_url))
    await admission.engine_reported("b0", 60.0, None, None, 60.0)
    leases = [await admission.acquire(ticket()) for _ in range(4)]
    assert {lease.backend for lease in leases} == {"b1"}  # b0 is saturated: not even least-loaded
    await admission.engine_reported("b0", 0.0, None, None, 60.0)
    leases.append(await admission.acquire(ticket()))
    assert leases[-1].backend == "b0"  # drained: the least loaded again
    for lease in leases:
        await lease.release(None)


async def test_work_held_for_a_busy_engine_is_granted_when_it_drains(
    redis_url: str, admission_for
) -> None:
    admission = await admission_for(settings_for(redis_url, backends=1))
    await admission.engine_reported("b0", 60.0, None, None, 60.0)
    waiting = asyncio.ensure_future(admission.acquire(ticket()))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # queued in fairgate, though b0 has room in its budgets
    await admission.engine_reported("b0", 0.0, None, None, 60.0)
    lease = await asyncio.wait_for(waiting, 10)  # dispatched by the report itself
    assert lease.backend == "b0"
    await lease.release(None)


async def test_reported_kv_usage_corrects_the_least_loaded_choice(
    redis_url: str, admission_for
) -> None:
    admission = await admission_for(settings_for(redis_url))
    first = await admission.acquire(ticket(1_000))  # fairgate's own accounting: one each...
    second = await admission.acquire(ticket(1_000))
    assert {first.backend, second.backend} == {"b0", "b1"}
    # ...but b0's engine says it holds 50k tokens (work from elsewhere, longer outputs)
    await admission.engine_reported("b0", 0.0, 50_000, None, 60.0)
    await admission.engine_reported("b1", 0.0, 2_000, None, 60.0)
    third = await admission.acquire(ticket(1_000))
    assert third.backend == "b1"
    for lease in (first, second, third):
        await lease.release(None)


async def test_the_kv_capacity_an_engine_reports_becomes_its_token_budget(
    redis_url: str, admission_for
) -> None:
    admission = await admission_for(settings_for(redis_url, backends=1, max_tokens=100_000))
    await admission.engine_reported("b0", 0.0, None, 1_000, 60.0)
    first = await admission.acquire(ticket(800))
    second = asyncio.ensure_future(admission.acquire(ticket(800)))
    await asyncio.sleep(0.2)
    assert not second.done()  # 800 + 800 > the engine's 1,000 tokens
    await first.release(None)
    lease = await asyncio.wait_for(second, 10)
    await lease.release(None)


async def test_gateway_holds_requests_while_the_engine_queues_them(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    """One sequence at a time inside the engine: the engine queues the 2nd and 3rd request;
    once its metrics say so, the 4th waits in fairgate instead, until the engine drains."""
    sim = await start_sim(time_scale=1.0, **{"scheduler.max_num_seqs": 1})
    config = gateway_config(redis_url, {"interactive": [sim.url]})
    config["server"]["engine_load_interval_s"] = (
        0.25  # busy held 2 scrapes (0.5 s): a loaded machine delays some
    )
    gateway = await start_gateway(config)
    client = gateway.client()
    redis = Redis.from_url(redis_url)

    async def ask() -> int:
        reply = await client.chat.completions.create(
            model="llama-3-8b",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=250,
            extra_body={"ignore_eos": True},
        )
        return reply.usage.completion_tokens

    try:
        first = [asyncio.ensure_future(ask()) for _ in range(3)]
        await _until(lambda: redis.hexists(PREFIX + "engine", "interactive-0:busy"))
        fourth = asyncio.ensure_future(ask())
        await _until(lambda: redis.hlen(PREFIX + "req"))  # queued in fairgate, not the engine
        assert await asyncio.gather(*first, fourth) == [250] * 4
        assert sim.sim.engine.peak_requests == 3  # the engine never held the 4th with the rest
    finally:
        await redis.aclose()


async def _until(probe, attempts: int = 400) -> None:  # noqa: ANN001 - an async predicate
    for _ in range(attempts):
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition never held")


# ------------------------------------------------------------------------- prefill cap


def capped_settings(redis_url: str, cap: int) -> Settings:
    settings = settings_for(redis_url, backends=1).model_dump(mode="json")
    settings["pools"]["p"]["backends"]["b0"]["max_prefill_tokens"] = cap
    settings["tenants"]["u"] = {"api_keys": ["k2"], "max_concurrency": 100}
    return Settings(**settings)


def prompt_ticket(prompt: int, tenant: str = "t") -> Ticket:
    return Ticket(uuid.uuid4().hex, tenant, prompt + 100, float(prompt), "p", "", 30.0, prompt)


async def test_long_prefills_wait_for_each_other_but_not_for_decodes(
    redis_url: str, admission_for
) -> None:
    admission = await admission_for(capped_settings(redis_url, cap=10_000))
    first = await admission.acquire(prompt_ticket(8_000))
    short = await admission.acquire(prompt_ticket(1_000))  # fits beside the first
    second = asyncio.ensure_future(admission.acquire(prompt_ticket(8_000, "u")))
    await asyncio.sleep(0.2)
    assert not second.done()  # 8k + 8k in prefill at once would pass the 10k cap
    await first.charge(0.0)  # its first output: its prefill is over, the second may start
    second_lease = await asyncio.wait_for(second, 10)
    await short.charge(0.0)
    await second_lease.charge(0.0)
    giant = await admission.acquire(prompt_ticket(50_000))  # larger than the cap: runs alone
    for lease in (first, short, second_lease, giant):
        await lease.release(None)


async def test_engine_never_prefills_two_long_prompts_at_once(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    sim = await start_sim(time_scale=1.0)
    config = gateway_config(redis_url, {"interactive": [sim.url]})
    config["pools"]["interactive"]["backends"]["interactive-0"]["max_prefill_tokens"] = 8_000
    gateway = await start_gateway(config)
    client = gateway.client()

    async def stream(word: str) -> str:
        chunks = await client.chat.completions.create(
            model="llama-3-8b",
            messages=[{"role": "user", "content": f"{word} " * 6_000}],
            max_tokens=20,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        ids = [chunk.id async for chunk in chunks]
        return ids[0]

    ids = await asyncio.gather(stream("alpha"), stream("beta"))
    timelines = []
    for request_id in ids:
        async with sim.http.get(f"{sim.url}/sim/requests/{request_id}") as response:
            timelines.append(await response.json())
    first, second = sorted(timelines, key=lambda t: t["arrival"])
    assert first["prompt_tokens"] > 5_000 and second["prompt_tokens"] > 5_000
    # the second long prompt reached the engine only once the first was past its prefill
    assert second["arrival"] >= first["first_token"]


# ----------------------------------------------------------------------------- lending


def lending_settings(redis_url: str, cap: int) -> Settings:
    def pool(name: str, port: int, concurrency: int, **extra: object) -> dict:
        backend = {"url": f"http://127.0.0.1:{port}", "models": ["m"]}
        return {"backends": {name: {**backend, "max_concurrency": concurrency}}, **extra}

    return Settings(
        redis={"url": redis_url},
        pools={"chat": pool("c0", 9100, 1), "long": pool("l0", 9101, 2, lend_to={"chat": cap})},
        # a tenant per pool: within one tenant, FCFS holds one pool's work behind the other's
        tenants={
            "chatter": {"api_keys": ["k"], "max_concurrency": 100},
            "batcher": {"api_keys": ["k2"], "max_concurrency": 100},
        },
        admission={"upkeep_interval_s": 30},
    )


def pool_ticket(pool: str) -> Ticket:
    tenant = "chatter" if pool == "chat" else "batcher"
    return Ticket(uuid.uuid4().hex, tenant, 100, 100.0, pool, "", 30.0)


async def test_an_idle_pool_lends_within_its_cap_and_takes_its_capacity_back_first(
    redis_url: str, admission_for
) -> None:
    admission = await admission_for(lending_settings(redis_url, cap=1))
    own = await admission.acquire(pool_ticket("chat"))
    lent = await admission.acquire(pool_ticket("chat"))  # chat is full: long lends its engine
    assert (own.backend, lent.backend) == ("c0", "l0")
    capped = asyncio.ensure_future(admission.acquire(pool_ticket("chat")))
    long_first = await admission.acquire(pool_ticket("long"))  # the lender's own work fits
    long_second = asyncio.ensure_future(admission.acquire(pool_ticket("long")))
    await asyncio.sleep(0.2)
    assert not capped.done()  # at most one request lent at once
    assert not long_second.done()  # l0 is full: one lent, one of its own
    await lent.release(None)  # the lent slot returns to the lender's own queue, not to chat
    assert (await asyncio.wait_for(long_second, 10)).backend == "l0"
    assert not capped.done()
    await own.release(None)  # chat's own engine frees: the waiting chat request runs there
    assert (await asyncio.wait_for(capped, 10)).backend == "c0"
    for lease in (long_first, long_second.result(), capped.result()):
        await lease.release(None)


def test_a_pool_lends_only_to_pools_its_engines_can_serve() -> None:
    with pytest.raises(ValueError, match=r"pools.long.lend_to: backend 'l0' does not serve"):
        Settings(
            pools={
                "chat": {"backends": {"c0": {"url": "http://127.0.0.1:9100", "models": ["m"]}}},
                "long": {
                    "backends": {"l0": {"url": "http://127.0.0.1:9101", "models": ["other"]}},
                    "lend_to": {"chat": 1},
                },
            }
        )


# ------------------------------------------------------------------------------- drain


async def test_a_drained_backend_gets_no_new_work_but_finishes_its_own(
    redis_url: str, admission_for
) -> None:
    admission = await admission_for(settings_for(redis_url))
    running = await admission.acquire(ticket())  # the least loaded: b0
    assert running.backend == "b0"
    redis = Redis.from_url(redis_url)
    await set_drained(redis, AdmissionKeys(PREFIX), "b0", True)
    later = [await admission.acquire(ticket()) for _ in range(3)]
    assert {lease.backend for lease in later} == {"b1"}
    assert await backend_load(redis, AdmissionKeys(PREFIX), "b0") == (1, 100)  # still running there
    await running.release(None)
    await set_drained(redis, AdmissionKeys(PREFIX), "b0", False)
    later.append(await admission.acquire(ticket()))
    assert later[-1].backend == "b0"
    for lease in later:
        await lease.release(None)
    await redis.aclose()


def test_fairgate_drain_marks_and_unmarks_a_backend(redis_url: str, tmp_path) -> None:  # noqa: ANN001
    config = tmp_path / "fairgate.yaml"
    config.write_text(yaml.safe_dump(settings_for(redis_url).model_dump(mode="json")))
    redis = SyncRedis.from_url(redis_url)
    assert cli.main(["drain", "b1", "--config", str(config)]) == 0
    assert redis.hgetall(PREFIX + "drained") == {b"b1": b"1"}
    assert cli.main(["drain", "b1", "--undo", "--config", str(config)]) == 0
    assert redis.hgetall(PREFIX + "drained") == {}
    assert cli.main(["drain", "nope", "--config", str(config)]) == 2
    redis.close()


# ------------------------------------------------------------------------ session affinity


def test_session_keys_and_their_rendezvous_backend() -> None:
    turn1 = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}
    turn2 = {"messages": [*turn1["messages"], {"role": "assistant", "content": "yo"},
                          {"role": "user", "content": "more"}]}  # fmt: skip
    other = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}
    assert session_key("off", {SESSION_HEADER: "abc"}, turn1) == ""
    assert session_key("header", {SESSION_HEADER: "abc"}, turn1) == "abc"
    assert session_key("header", {}, turn2) == ""
    assert session_key("prefix", {}, turn1) == session_key("prefix", {}, turn2) != ""
    assert session_key("prefix", {}, other) != session_key("prefix", {}, turn1)
    assert session_key("prefix", {}, {"messages": [{"role": "user", "content": "a"}]}) == ""
    backends = ["b0", "b1", "b2"]
    chosen = {s: preferred_backend(f"s{s}", backends) for s in range(300)}
    assert set(chosen.values()) == set(backends)  # sessions spread over every backend
    fewer = {s: preferred_backend(f"s{s}", ["b0", "b1"]) for s in range(300)}
    moved = [s for s in chosen if chosen[s] != fewer[s]]
    assert moved and all(chosen[s] == "b2" for s in moved)  # only b2's sessions move


async def test_a_session_keeps_its_backend_while_the_load_allows(
    redis_url: str, admission_for
) -> None:
    admission = await admission_for(settings_for(redis_url, backends=3))

    def session_ticket(tokens: int) -> Ticket:
        return Ticket(uuid.uuid4().hex, "t", tokens, 1.0, "p", "", 30.0, 0, 0, "b2", 2_500)

    held = [await admission.acquire(session_ticket(1_000)) for _ in range(3)]
    assert [lease.backend for lease in held] == ["b2"] * 3  # 0, 1,000, 2,000 ahead: in slack
    spill = await admission.acquire(session_ticket(1_000))  # b2 would be 3,000 ahead
    assert spill.backend != "b2"
    for lease in (*held, spill):
        await lease.release(None)


async def test_turns_of_a_conversation_reach_the_same_engine(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    sims = [await start_sim(time_scale=100.0) for _ in range(2)]
    config = gateway_config(redis_url, {"interactive": [sim.url for sim in sims]})
    config["pools"]["interactive"]["affinity"] = "prefix"
    gateway = await start_gateway(config)
    client = gateway.client()

    async def turn(messages: list[dict[str, str]]) -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model="llama-3-8b", messages=messages, max_tokens=2
        )
        return raw.headers["X-Fairgate-Backend"]

    engines = set()
    for topic in range(8):
        history = [
            {"role": "system", "content": "helpful"},
            {"role": "user", "content": f"t{topic}"},
        ]
        served = []
        for step in range(3):
            served.append(await turn(history))
            history += [
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": f"{step}"},
            ]
        assert len(set(served[1:])) == 1, served  # every turn after the first on one engine
        engines.update(served[1:])
    assert engines == {"interactive-0", "interactive-1"}  # conversations spread over both
