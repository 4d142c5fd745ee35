"""Per-tenant usage: requests and the engine's tokens per model and UTC day, refusals by
reason, shared by replicas in Redis with a retention TTL; read by operators through the admin
API and by each tenant, for itself only, through ``GET /v1/tenant``.

Real parts: simulated engines and small stand-in engines on loopback, gateways in-process
(two replicas on one real redis-server), the official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import openai
import pytest
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from fairgate.keys import usage as usage_key
from fairgate.keys import usage_batches
from fairgate.settings import Settings
from gateway.admin.usage import UsageReport
from tenants.usage import FLUSH_EVENTS, REASONS, SEP, Counts, Usage, day_of
from tests.conftest import (
    RunningGateway,
    RunningSim,
    ServeApp,
    StartGateway,
    StartSim,
    gateway_config,
)

ADMIN = {"Authorization": "Bearer admin-secret"}
MODEL, OTHER = "llama-3-8b", "other-model"
MESSAGES = [{"role": "user", "content": "Write a haiku about queues."}]
NO_REJECTIONS = dict.fromkeys(REASONS, 0)


@pytest.fixture
async def sim(start_sim: StartSim) -> RunningSim:
    return await start_sim(time_scale=100.0, models=[MODEL, OTHER])


def config(redis_url: str, pools: dict[str, list[str]], **sections: Any) -> dict:
    """Tenants ``a`` and ``b`` (keys ``key-a``, ``key-b``); every backend serves both models."""
    admin = {"tokens": ["admin-secret"], **sections.pop("admin", {})}
    cfg = gateway_config(redis_url, pools, admin=admin, **sections)
    for pool in cfg["pools"].values():
        for backend in pool["backends"].values():
            backend["models"] = [MODEL, OTHER]
    return cfg


def today() -> str:
    return datetime.now(UTC).date().isoformat()


async def get(gateway: RunningGateway, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with gateway.http.get(f"{gateway.url}{path}", headers=headers) as response:
        return response.status, json.loads(await response.text())


async def usage(gateway: RunningGateway, tenant: str, query: str = "") -> dict[str, Any]:
    """The admin API's usage report of ``tenant`` (asserted 200)."""
    status, body = await get(gateway, f"/admin/v1/tenants/{tenant}/usage{query}", ADMIN)
    assert status == 200, body
    return body


async def own(gateway: RunningGateway, key: str, query: str = "") -> tuple[int, Any]:
    return await get(gateway, f"/v1/tenant{query}", {"Authorization": f"Bearer {key}"})


def rows(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The report's rows by (date, model), without those two keys."""
    return {
        (r["date"], r["model"]): {k: v for k, v in r.items() if k not in ("date", "model")}
        for r in report["data"]
    }


def counts(requests: int = 0, prompt: int = 0, completion: int = 0, **rejected: int) -> dict:
    return {
        "requests": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "rejections": {**NO_REJECTIONS, **rejected},
    }


async def chat(gateway: RunningGateway, key: str = "key-a", **body: Any) -> Any:
    arguments: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, **body}
    return await gateway.client(key).chat.completions.create(**arguments)


async def streamed_usage(gateway: RunningGateway, key: str = "key-a", **body: Any) -> Any:
    """A streamed chat completion, read to its end; the usage of its final chunk."""
    stream = await chat(gateway, key, stream=True, stream_options={"include_usage": True}, **body)
    found = None
    async for chunk in stream:
        found = chunk.usage or found
    assert found is not None
    return found


async def test_streamed_and_plain_requests_count_the_engines_tokens_per_model(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, {"interactive": [sim.url]}))
    used = [(await chat(gateway)).usage, (await chat(gateway, max_tokens=3)).usage]
    used.append(await streamed_usage(gateway, max_tokens=5))
    other = (await chat(gateway, model=OTHER)).usage
    b_used = (await chat(gateway, "key-b")).usage

    report = await usage(gateway, "a")
    day = report["to"]
    assert day in (today(), (date.fromisoformat(today()) - timedelta(days=1)).isoformat())
    assert {k: report[k] for k in ("object", "tenant", "from")} == {
        "object": "usage",
        "tenant": "a",
        "from": day,
    }
    prompt = sum(u.prompt_tokens for u in used)
    completion = sum(u.completion_tokens for u in used)
    assert completion == 8 + 3 + 5  # the premise: the engine's exact counts
    assert rows(report) == {
        (day, MODEL): counts(3, prompt, completion),
        (day, OTHER): counts(1, other.prompt_tokens, other.completion_tokens),
    }
    assert report["total"] == counts(
        4, prompt + other.prompt_tokens, completion + other.completion_tokens
    )
    assert [r["model"] for r in report["data"]] == [MODEL, OTHER]  # by day, then model
    UsageReport.model_validate(report)  # the documented shape, "from" and "to" included

    assert rows(await usage(gateway, "b")) == {
        (day, MODEL): counts(1, b_used.prompt_tokens, b_used.completion_tokens)
    }


async def test_refusals_count_by_reason_under_the_model_asked_for(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    cfg = config(redis_url, {"interactive": [sim.url]})
    cfg["tenants"]["a"]["quotas"] = {"models": {OTHER: {"requests_per_minute": 1}}}
    gateway = await start_gateway(cfg)
    client = gateway.client()
    await chat(gateway, model=OTHER)
    with pytest.raises(openai.RateLimitError):  # quota
        await chat(gateway, model=OTHER)
    with pytest.raises(openai.BadRequestError):  # invalid_request, before any model: ""
        await client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.NotFoundError):  # invalid_request: no pool serves it, so ""
        await chat(gateway, model="gpt-5")
    with pytest.raises(openai.BadRequestError):  # invalid_request, the model known
        await chat(gateway, extra_headers={"X-Fairgate-Queue-Timeout": "soon"})
    with pytest.raises(openai.BadRequestError, match="max_tokens"):  # the engine's own 400
        await chat(gateway, max_tokens=-1)
    with pytest.raises(openai.PermissionDeniedError):  # permission
        await chat(gateway, extra_headers={"X-Fairgate-Pool": "interactive"})
    with pytest.raises(openai.AuthenticationError):  # no tenant: counted nowhere
        await chat(gateway, "key-unknown")

    report = await usage(gateway, "a")
    day = report["to"]
    assert rows(report) == {
        (day, ""): counts(invalid_request=2),
        (day, MODEL): counts(invalid_request=2, permission=1),
        (day, OTHER): counts(1, *_tokens(report, OTHER), quota=1),
    }
    assert report["total"]["rejections"] == {
        **NO_REJECTIONS,
        "quota": 1,
        "invalid_request": 4,
        "permission": 1,
    }
    client_redis = Redis.from_url(redis_url)
    keys = [k.decode() async for k in client_redis.scan_iter(match="fairgate:{usage:*")]
    await client_redis.aclose()
    # nothing for anyone else (beside the day's usage, the batches it holds)
    assert sorted(keys) == [usage_key("fairgate", "a", day), usage_batches("fairgate", "a", day)]


def _tokens(report: dict[str, Any], model: str) -> tuple[int, int]:
    row = next(r for r in report["data"] if r["model"] == model)
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    return row["prompt_tokens"], row["completion_tokens"]


async def test_queue_full_and_queue_timeout_and_the_tenants_queue_now(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    """One slow request holds the engine's only slot: ``a`` (no queue) is refused at once,
    ``b`` waits (its own endpoint shows it queued) until its queue timeout."""
    sim = await start_sim(time_scale=1.0, models=[MODEL, OTHER])
    cfg = config(redis_url, {"interactive": [sim.url]})
    cfg["pools"]["interactive"]["backends"]["interactive-0"]["max_concurrency"] = 1
    cfg["tenants"]["a"].update(max_concurrency=1, max_queued=0)
    gateway = await start_gateway(cfg)
    running = await chat(gateway, stream=True, max_tokens=2000, extra_body={"ignore_eos": True})
    await anext(aiter(running))  # admitted and running
    with pytest.raises(openai.RateLimitError, match="already waiting"):
        await chat(gateway)
    waiting = asyncio.create_task(
        chat(gateway, "key-b", extra_headers={"X-Fairgate-Queue-Timeout": "1"})
    )
    for _ in range(200):
        status, body = await own(gateway, "key-b")
        assert status == 200, body
        if body["queue"]["queued"] == 1:
            break
        await asyncio.sleep(0.005)
    assert body["queue"] == {"queued": 1, "in_flight_requests": 0, "in_flight_tokens": 0}
    running_a = (await own(gateway, "key-a"))[1]["queue"]
    assert running_a["in_flight_requests"] == 1 and running_a["in_flight_tokens"] > 0
    with pytest.raises(openai.RateLimitError, match="waited 1 s"):
        await waiting
    await running.close()  # abandoned by its client: neither served nor refused

    day = (await usage(gateway, "a"))["to"]
    assert rows(await usage(gateway, "a")) == {(day, MODEL): counts(queue_full=1)}
    assert rows(await usage(gateway, "b")) == {(day, MODEL): counts(queue_timeout=1)}
    assert (await own(gateway, "key-b"))[1]["queue"]["queued"] == 0


async def test_engine_failures_and_unreachable_engines_count_as_upstream(
    start_gateway: StartGateway,
    sim: RunningSim,
    serve_app: ServeApp,
    redis_url: str,
    unused_tcp_port: int,
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", broken)
    app.router.add_get("/health", health)
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    pools = {"interactive": [sim.url], "broken": [await serve_app(app)], "dead": [dead]}
    cfg = config(redis_url, pools)
    cfg["tenants"].update(
        c={"api_keys": ["key-c"], "pools": ["broken"]},
        d={"api_keys": ["key-d"], "pools": ["dead"]},
    )
    gateway = await start_gateway(cfg)
    with pytest.raises(openai.InternalServerError, match="CUDA"):  # the engine's 500, relayed
        await chat(gateway, "key-c")
    with pytest.raises(openai.InternalServerError) as unreachable:
        await chat(gateway, "key-d")
    assert unreachable.value.code == "backend_unavailable"

    day = (await usage(gateway, "c"))["to"]
    assert rows(await usage(gateway, "c")) == {(day, MODEL): counts(upstream=1)}
    assert rows(await usage(gateway, "d")) == {(day, MODEL): counts(upstream=1)}


async def test_replicas_count_into_the_same_day_which_expires_after_the_retention(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    cfg = config(
        redis_url,
        {"interactive": [sim.url]},
        admin={"usage_retention_days": 7, "usage_flush_s": 0.05},
    )
    first, second = await start_gateway(cfg), await start_gateway(cfg)
    used = [(await chat(replica)).usage for replica in (first, second, second)]
    expected = counts(3, sum(u.prompt_tokens for u in used), sum(u.completion_tokens for u in used))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0  # the second replica writes within usage_flush_s
    while (report := await usage(first, "a"))["total"] != expected:
        assert loop.time() < deadline, report
        await asyncio.sleep(0.02)
    assert len(report["data"]) == 1

    client = Redis.from_url(redis_url)
    ttl = await client.ttl(usage_key("fairgate", "a", report["to"]))
    await client.aclose()
    assert 6 * 86400 <= ttl <= 7 * 86400  # kept while among the last 7 days


async def test_days_are_reported_apart_and_bad_ranges_are_400(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, {"interactive": [sim.url]}))
    used = (await chat(gateway)).usage
    day = date.fromisoformat((await usage(gateway, "a"))["to"])
    yesterday = day - timedelta(days=1)
    client = Redis.from_url(redis_url)  # what a replica wrote yesterday
    key = usage_key("fairgate", "a", yesterday.isoformat())
    await client.hset(
        key,
        mapping={
            f"{MODEL}{SEP}requests": 2,
            f"{MODEL}{SEP}prompt_tokens": 100,
            f"{MODEL}{SEP}completion_tokens": 7,
            f"{SEP}rejected:invalid_request": 1,
            f"{MODEL}{SEP}rejected:a_reason_of_a_newer_version": 5,
        },
    )
    await client.aclose()

    report = await usage(gateway, "a", f"?from={yesterday}")
    assert (report["from"], report["to"]) == (yesterday.isoformat(), day.isoformat())
    assert rows(report) == {
        (yesterday.isoformat(), ""): counts(invalid_request=1),
        (yesterday.isoformat(), MODEL): counts(2, 100, 7),
        (day.isoformat(), MODEL): counts(1, used.prompt_tokens, used.completion_tokens),
    }
    assert report["total"] == counts(
        3, 100 + used.prompt_tokens, 7 + used.completion_tokens, invalid_request=1
    )
    only = await usage(gateway, "a", f"?to={yesterday}")  # from defaults to to
    assert [(r["date"], r["model"]) for r in only["data"]] == [
        (yesterday.isoformat(), ""),
        (yesterday.isoformat(), MODEL),
    ]

    oldest = day - timedelta(days=89)  # the default retention: 90 days, today included
    assert (await usage(gateway, "a", f"?from={oldest}"))["data"]
    bad = {
        "?from=2026-13-01": "from",
        "?from=20261101": "from",
        "?to=tomorrow": "to",
        f"?from={day}&to={yesterday}": "from",
        f"?from={oldest - timedelta(days=1)}": "from",
        f"?from={day}&to={day + timedelta(days=90)}": "to",
    }
    for query, param in bad.items():
        status, body = await get(gateway, f"/admin/v1/tenants/a/usage{query}", ADMIN)
        assert (status, body["error"]["param"]) == (400, param), (query, body)
        status, body = await own(gateway, "key-a", query)  # the tenant's own view too
        assert (status, body["error"]["param"]) == (400, param), (query, body)


async def test_unknown_tenants_are_404_and_a_deleted_tenants_usage_stays_readable(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, {"interactive": [sim.url]}))
    status, body = await get(gateway, "/admin/v1/tenants/nobody/usage", ADMIN)
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert (await usage(gateway, "b"))["data"] == []  # a tenant without usage: 200, empty
    status, _ = await get(gateway, "/admin/v1/tenants/b/usage", {})
    assert status == 401  # an admin operation

    await chat(gateway, "key-b")
    async with gateway.http.delete(f"{gateway.url}/admin/v1/tenants/b", headers=ADMIN) as resp:
        assert resp.status == 200
    report = await usage(gateway, "b")
    assert report["total"]["requests"] == 1
    yesterday = date.fromisoformat(report["to"]) - timedelta(days=1)
    assert (await usage(gateway, "b", f"?to={yesterday}"))["data"] == []  # still 200

    async with gateway.http.get(f"{gateway.url}/admin/v1/openapi.json", headers=ADMIN) as resp:
        document = await resp.json()
    operation = document["paths"]["/admin/v1/tenants/{tenant_id}/usage"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"tenant_id", "from", "to"}


async def test_a_tenant_sees_its_own_limits_quotas_and_usage_and_nobody_elses(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    cfg = config(redis_url, {"interactive": [sim.url]})
    cfg["tenants"]["a"].update(
        weight=3,
        max_queued=5,
        quotas={"requests_per_minute": 10, "models": {OTHER: {"tokens_per_day": 50_000}}},
    )
    gateway = await start_gateway(cfg)
    used = (await chat(gateway)).usage
    await chat(gateway, "key-b", model=OTHER)

    status, mine = await own(gateway, "key-a")
    assert status == 200, mine
    assert (mine["object"], mine["id"]) == ("tenant", "a")
    assert mine["limits"] == {
        "weight": 3.0,
        "priority": 0,
        "max_concurrency": 32,
        "max_inflight_tokens": 262_144,
        "max_queued": 5,
        "queue_timeout_s": 30.0,
        "pools": None,
    }
    rpm, tpd = mine["quotas"]
    assert (rpm["name"], rpm["model"], rpm["kind"], rpm["limit"]) == (
        "requests_per_minute",
        None,
        "requests",
        10,
    )
    assert rpm["remaining"] == 9 and 0 < rpm["reset_ms"] <= 6000 and rpm["reset"].endswith("s")
    assert (tpd["name"], tpd["model"], tpd["limit"], tpd["remaining"], tpd["reset_ms"]) == (
        "tokens_per_day",
        OTHER,
        50_000,
        50_000,  # a's requests were all for the other model
        0,
    )
    assert mine["queue"] == {"queued": 0, "in_flight_requests": 0, "in_flight_tokens": 0}
    day = mine["usage"]["to"]
    assert mine["usage"]["tenant"] == "a"
    assert rows(mine["usage"]) == {
        (day, MODEL): counts(1, used.prompt_tokens, used.completion_tokens)
    }
    again = (await own(gateway, "key-a", "?tenant=b"))[1]  # asking changes nothing
    assert again["id"] == "a" and again["quotas"][0]["remaining"] == 9  # a peek takes nothing
    assert again["usage"] == mine["usage"]

    status, theirs = await own(gateway, "key-b")
    assert status == 200 and theirs["id"] == "b" and theirs["quotas"] == []
    assert [(r["model"], r["requests"]) for r in theirs["usage"]["data"]] == [(OTHER, 1)]
    for headers in ({}, {"Authorization": "Bearer key-unknown"}, ADMIN):
        status, body = await get(gateway, "/v1/tenant", headers)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    status, _ = await get(gateway, "/v1/tenant/b", {"Authorization": "Bearer key-a"})
    assert status == 404


# ------------------------------------------------------------- the recorder, on its own


def recorder(redis_url: str, client: Redis, clock: Any = None, **admin: Any) -> Usage:
    settings = Settings(**config(redis_url, {"interactive": ["http://127.0.0.1:9"]}, admin=admin))
    return Usage(client, settings, clock) if clock is not None else Usage(client, settings)


async def test_each_event_counts_on_the_utc_day_it_happens(redis_url: str) -> None:
    midnight = (int(time.time()) // 86400 + 1) * 86400  # the next one: kept, not expired
    now = [midnight - 0.5]
    client = Redis.from_url(redis_url)
    usage = recorder(redis_url, client, lambda: now[0])
    usage.completed("a", MODEL, 10, 2)
    now[0] = midnight + 0.5
    usage.completed("a", MODEL, 5, 1)
    usage.rejected("a", "a-model-nobody-serves", "invalid_request")  # no new hash fields
    await usage.flush()
    before, after = day_of(midnight - 1), day_of(midnight)
    read = await usage.read("a", before, after)
    await usage.close()
    await client.aclose()
    assert [(r.day, r.model, r.counts) for r in read] == [
        (before, MODEL, Counts(1, 10, 2)),
        (after, "", Counts(rejections={**NO_REJECTIONS, "invalid_request": 1})),
        (after, MODEL, Counts(1, 5, 1)),
    ]


async def test_events_are_written_in_batches_of_one_hincrby_per_counter(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    usage = recorder(redis_url, client, usage_flush_s=60)  # only the event count flushes here
    await client.config_resetstat()
    for _ in range(FLUSH_EVENTS - 1):
        usage.completed("a", MODEL, 3, 1)
    key = usage_key("fairgate", "a", usage.today().isoformat())
    assert not await client.exists(key)  # pending, in memory
    usage.completed("a", MODEL, 3, 1)  # the last one sends the batch without waiting
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not await client.exists(key):
        assert loop.time() < deadline, "the batch was not sent"
        await asyncio.sleep(0.01)
    assert await client.hgetall(key) == {
        f"{MODEL}{SEP}requests".encode(): str(FLUSH_EVENTS).encode(),
        f"{MODEL}{SEP}prompt_tokens".encode(): str(3 * FLUSH_EVENTS).encode(),
        f"{MODEL}{SEP}completion_tokens".encode(): str(FLUSH_EVENTS).encode(),
    }
    stats = await client.info("commandstats")
    assert stats["cmdstat_hincrby"]["calls"] == 3  # one per counter, not per event
    await usage.close()
    await client.aclose()


async def test_counts_redis_does_not_take_are_kept_not_raised(
    redis_url: str, unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0")
    usage = recorder(redis_url, client)
    usage.completed("a", MODEL, 10, 2)
    usage.rejected("a", MODEL, "quota")
    await usage.flush()  # fails: kept for the next batch
    assert "usage not written yet" in caplog.text
    await usage.close()  # the last chance: lost, and said so
    lost = "{'requests': 1, 'prompt_tokens': 10, 'completion_tokens': 2, 'rejected': 1}"
    assert f"usage not written at shutdown (Redis unreachable), lost: {lost}" in caplog.text
    await client.aclose()


async def test_a_batch_whose_answer_was_lost_is_sent_again_and_counted_once(
    redis_url: str,
) -> None:
    """A timeout, a cut connection or a Cluster slot moving can lose the answer of a batch
    Redis ran: it is sent again, as it was, and Redis skips it; the tenant's newer counts wait
    behind it and follow."""
    client = Redis.from_url(redis_url)
    usage = recorder(redis_url, client)
    apply = usage._script
    answers_lost = [1]

    async def answer_lost_once(keys: list[str], args: list[Any]) -> Any:
        result = await apply(keys=keys, args=args)  # it ran in Redis ...
        if answers_lost[0]:
            answers_lost[0] -= 1
            raise RedisTimeoutError("Timeout reading from socket")  # ... the answer is lost
        return result

    usage._script = answer_lost_once  # type: ignore[assignment]
    usage.completed("a", MODEL, 10, 2)
    await usage.flush()  # ran, but not known to have: sent again
    usage.completed("a", MODEL, 5, 1)  # waits behind it
    await usage.flush()
    today = usage.today()
    read = await usage.read("a", today, today)
    await usage.close()
    await client.aclose()
    assert [(r.model, r.counts) for r in read] == [(MODEL, Counts(2, 15, 3))]
