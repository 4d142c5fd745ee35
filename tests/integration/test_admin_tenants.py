"""The admin API's tenants and keys: Redis holds the truth, the file seeds it, every replica
follows within a second, concurrent changes conflict cleanly, nothing secret is stored.

Real parts: gateways in-process on loopback (two replicas on one real redis-server), a
simulated engine, the official ``openai`` client for the tenants' side.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from multidict import CIMultiDict
from redis.asyncio import Redis

from fairgate.settings import hash_api_key, load_settings
from tests.conftest import (
    RunningGateway,
    RunningSim,
    StartGateway,
    StartSim,
    gateway_config,
    redis_contents,
)

ADMIN = {"Authorization": "Bearer admin-secret"}
MODEL = "llama-3-8b"


@pytest.fixture
async def sim(start_sim: StartSim) -> RunningSim:
    return await start_sim(time_scale=100.0)


def config(redis_url: str, sim: RunningSim, **sections: Any) -> dict:
    return gateway_config(
        redis_url, {"interactive": [sim.url]}, admin={"tokens": ["admin-secret"]}, **sections
    )


async def call(
    gateway: RunningGateway,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, CIMultiDict[str]]:
    """An admin call: status, parsed JSON body (or text), headers."""
    async with gateway.http.request(
        method, f"{gateway.url}{path}", json=body, headers=headers if headers is not None else ADMIN
    ) as response:
        text = await response.text()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return response.status, parsed, response.headers.copy()


async def models_status(gateway: RunningGateway, key: str) -> int:
    """The status a tenant's key gets for ``GET /v1/models``."""
    async with gateway.http.get(
        f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        return response.status


async def eventually(check: Any, within_s: float = 1.0) -> None:
    """Wait until ``check()`` is true, for at most ``within_s`` (the directory's promise)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        assert loop.time() < deadline, f"not true within {within_s} s"
        await asyncio.sleep(0.02)


async def test_admin_calls_need_an_admin_token_never_a_tenant_key(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, sim))
    status, body, headers = await call(gateway, "GET", "/admin/v1/tenants", headers={})
    assert status == 401 and body["error"]["code"] == "invalid_admin_token"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer admin-secreT"}
    assert (await call(gateway, "GET", "/admin/v1/tenants", headers=wrong))[0] == 401
    tenant = {"Authorization": "Bearer key-a"}
    status, body, _ = await call(gateway, "GET", "/admin/v1/tenants", headers=tenant)
    assert status == 403 and body["error"]["type"] == "permission_error"
    status, body, _ = await call(gateway, "GET", "/admin/v1/tenants")
    assert status == 200
    assert [t["id"] for t in body["data"]] == ["a", "b"]
    assert body["data"][1]["pools"] == ["interactive"]
    assert "api_keys" not in body["data"][0]


async def test_without_admin_tokens_the_api_says_how_to_enable_it(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [sim.url]}))
    status, body, _ = await call(gateway, "GET", "/admin/v1/tenants")
    assert status == 401 and body["error"]["code"] == "admin_disabled"
    assert "admin.tokens" in body["error"]["message"]


async def test_create_a_tenant_and_a_key_the_key_works_and_only_its_hash_is_stored(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, sim))
    status, tenant, headers = await call(
        gateway, "POST", "/admin/v1/tenants", {"id": "acme", "weight": 3, "max_concurrency": 5}
    )
    assert status == 201, tenant
    assert (tenant["id"], tenant["weight"], tenant["max_concurrency"]) == ("acme", 3, 5)
    assert headers["ETag"] == f'"{tenant["version"]}"'
    status, made, _ = await call(gateway, "POST", "/admin/v1/tenants/acme/keys", {"name": "ci"})
    assert status == 201, made
    secret = made["key"]
    assert made["prefix"] == secret[:8] and made["name"] == "ci" and made["tenant"] == "acme"
    client = gateway.client(secret)
    answer = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert answer.choices[0].message.content
    status, listed, _ = await call(gateway, "GET", "/admin/v1/tenants/acme/keys")
    assert status == 200 and [k["id"] for k in listed["data"]] == [made["id"]]
    assert "key" not in listed["data"][0]
    client_redis = Redis.from_url(redis_url)
    try:
        dumped = repr(await redis_contents(redis_url)).encode()
        assert secret.encode() not in dumped
        assert hash_api_key(secret).encode() in dumped
        entry = json.loads(await client_redis.hget("fairgate:{adm}:cfg:tenants", "acme"))
        assert (entry["w"], entry["mc"]) == (3, 5)  # the admission scripts see it at once
    finally:
        await client_redis.aclose()


async def test_bad_bodies_are_400_naming_the_field_and_duplicates_409(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, sim))
    cases = [
        ({"id": "acme", "weight": -1}, "weight"),
        ({"id": "acme", "wieght": 2}, "wieght"),
        ({"id": "Not Valid"}, "id"),
        ({"id": "acme", "pools": ["nowhere"]}, "pools"),
        (
            {"id": "acme", "quotas": {"models": {"no-such-model": {"requests_per_minute": 1}}}},
            "quotas",
        ),
    ]
    for body, field in cases:
        status, answer, _ = await call(gateway, "POST", "/admin/v1/tenants", body)
        assert status == 400, (body, answer)
        assert field in answer["error"]["message"], answer
    for raw in (b"{not json", b"[1, 2]", b"[" * 10_000):
        async with gateway.http.post(
            f"{gateway.url}/admin/v1/tenants", data=raw, headers=ADMIN
        ) as response:
            assert response.status == 400
    status, answer, _ = await call(gateway, "POST", "/admin/v1/tenants", {"id": "a"})
    assert status == 409 and answer["error"]["code"] == "tenant_exists"
    status, answer, _ = await call(gateway, "PATCH", "/admin/v1/tenants/a", {"weight": "x"})
    assert status == 400 and "weight" in answer["error"]["message"]
    for method, path in (
        ("GET", "/admin/v1/tenants/nobody"),
        ("PATCH", "/admin/v1/tenants/nobody"),
        ("DELETE", "/admin/v1/tenants/nobody"),
        ("POST", "/admin/v1/tenants/nobody/keys"),
        ("DELETE", "/admin/v1/tenants/a/keys/key_0000000000000000"),
    ):
        status, answer, _ = await call(gateway, method, path, {} if method != "GET" else None)
        assert status == 404, (method, path, answer)


async def test_updates_carry_versions_and_a_stale_if_match_is_409(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, sim))
    _, tenant, headers = await call(gateway, "GET", "/admin/v1/tenants/a")
    etag = headers["ETag"]
    status, changed, after = await call(
        gateway, "PATCH", "/admin/v1/tenants/a", {"weight": 4}, {**ADMIN, "If-Match": etag}
    )
    assert status == 200 and changed["weight"] == 4 and after["ETag"] != etag
    status, answer, _ = await call(
        gateway, "PATCH", "/admin/v1/tenants/a", {"weight": 5}, {**ADMIN, "If-Match": etag}
    )
    assert status == 409 and answer["error"]["code"] == "version_conflict"
    status, reset, _ = await call(gateway, "PATCH", "/admin/v1/tenants/a", {"weight": None})
    assert status == 200 and reset["weight"] == 1.0  # null puts the default back
    # Two operators change the same version at once: exactly one wins.
    _, _, headers = await call(gateway, "GET", "/admin/v1/tenants/b")
    both = await asyncio.gather(
        *(
            call(
                gateway,
                "PATCH",
                "/admin/v1/tenants/b",
                {"weight": w},
                {**ADMIN, "If-Match": headers["ETag"]},
            )
            for w in (2, 3)
        )
    )
    assert sorted(status for status, _, _ in both) == [200, 409]
    winner = next(body for status, body, _ in both if status == 200)
    assert (await call(gateway, "GET", "/admin/v1/tenants/b"))[1]["weight"] == winner["weight"]


async def test_a_change_through_one_replica_holds_on_the_other_within_a_second(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    one = await start_gateway(config(redis_url, sim))
    two = await start_gateway(config(redis_url, sim))
    _, made, _ = await call(one, "POST", "/admin/v1/tenants/a/keys", {"name": "rotating"})

    async def works_on_two() -> bool:
        return await models_status(two, made["key"]) == 200

    await eventually(works_on_two)
    status, _, _ = await call(one, "DELETE", f"/admin/v1/tenants/a/keys/{made['id']}")
    assert status == 200
    assert await models_status(one, made["key"]) == 401  # applied before the answer

    async def refused_on_two() -> bool:
        return await models_status(two, made["key"]) == 401

    await eventually(refused_on_two)
    await call(one, "PATCH", "/admin/v1/tenants/b", {"weight": 7})

    async def weight_on_two() -> bool:
        return (await call(two, "GET", "/admin/v1/tenants/b"))[1]["weight"] == 7

    await eventually(weight_on_two)


async def test_a_replica_hears_a_change_whose_message_was_lost(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    """The periodic version check: a change written without its pub/sub message still lands."""
    gateway = await start_gateway(config(redis_url, sim))
    client = Redis.from_url(redis_url)
    try:
        record = json.loads(await client.hget("fairgate:{adm}:dir:tenants", "a"))
        record["config"]["weight"] = 9
        record["version"] = int(await client.get("fairgate:{adm}:dir:version")) + 1
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset("fairgate:{adm}:dir:tenants", "a", json.dumps(record))
            pipe.set("fairgate:{adm}:dir:version", record["version"])  # no PUBLISH
            await pipe.execute()
    finally:
        await client.aclose()

    async def applied() -> bool:
        return (await call(gateway, "GET", "/admin/v1/tenants/a"))[1]["weight"] == 9

    await eventually(applied, within_s=2.0)  # admin.sync_interval_s (1 s) and one reload


async def test_redis_wins_over_an_older_file_and_survives_a_flush(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    first = await start_gateway(config(redis_url, sim))
    await call(first, "PATCH", "/admin/v1/tenants/a", {"weight": 6})
    await call(first, "POST", "/admin/v1/tenants", {"id": "made-at-run-time"})
    older = config(redis_url, sim)
    older["tenants"]["a"]["weight"] = 2
    older["tenants"]["c"] = {"api_keys": ["key-c"]}
    later = await start_gateway(older)
    _, listed, _ = await call(later, "GET", "/admin/v1/tenants")
    by_id = {t["id"]: t for t in listed["data"]}
    assert sorted(by_id) == ["a", "b", "made-at-run-time"]
    assert by_id["a"]["weight"] == 6
    assert await models_status(later, "key-c") == 401
    # Redis restarted without persistence: the replicas write back what they hold.
    client = Redis.from_url(redis_url)
    try:
        await client.flushall()
    finally:
        await client.aclose()

    client = Redis.from_url(redis_url)
    try:

        async def restored() -> bool:
            return bool(await client.hexists("fairgate:{adm}:dir:tenants", "made-at-run-time"))

        await eventually(restored, within_s=2.0)  # the next version check finds it missing
        assert json.loads(await client.hget("fairgate:{adm}:cfg:tenants", "a"))["w"] == 6
    finally:
        await client.aclose()
    status, body, _ = await call(first, "GET", "/admin/v1/tenants/a")
    assert (status, body["weight"]) == (200, 6)


async def test_deleting_a_tenant_lets_its_running_stream_finish_and_refuses_new_work(
    start_gateway: StartGateway, start_sim: StartSim, redis_url: str
) -> None:
    slow = await start_sim(time_scale=1.0)
    gateway = await start_gateway(config(redis_url, slow))
    stream = await gateway.client("key-a").chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "tell me a story"}],
        max_tokens=40,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = [await anext(aiter(stream))]
    status, _, _ = await call(gateway, "DELETE", "/admin/v1/tenants/a")
    assert status == 200
    assert await models_status(gateway, "key-a") == 401
    async for chunk in stream:
        chunks.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length" and text
    with pytest.raises(openai.AuthenticationError):
        await gateway.client("key-a").models.list()


async def test_expired_keys_are_refused(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, sim))
    _, past, _ = await call(
        gateway, "POST", "/admin/v1/tenants/a/keys", {"expires_at": "2020-01-01T00:00:00Z"}
    )
    _, future, _ = await call(gateway, "POST", "/admin/v1/tenants/a/keys", {"expires_in_s": 3600})
    assert await models_status(gateway, past["key"]) == 401
    assert await models_status(gateway, future["key"]) == 200


async def test_export_is_a_valid_config_file_with_the_directory_and_no_secret(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str, tmp_path: Path
) -> None:
    gateway = await start_gateway(config(redis_url, sim))
    await call(gateway, "POST", "/admin/v1/tenants", {"id": "acme", "weight": 2.5})
    _, made, _ = await call(gateway, "POST", "/admin/v1/tenants/acme/keys", {"name": "app"})
    status, text, headers = await call(gateway, "GET", "/admin/v1/config")
    assert status == 200 and headers["Content-Type"].startswith("application/yaml")
    assert made["key"] not in text and "admin-secret" not in text and "key-a" not in text
    path = tmp_path / "exported.yaml"
    path.write_text(text)
    exported = load_settings(path)
    assert exported.tenants["acme"].weight == 2.5
    assert [k.id for k in exported.tenants["acme"].keys] == [made["id"]]
    assert exported.tenants["acme"].key_hashes() == [hash_api_key(made["key"])]
    assert exported.tenants["a"].key_hashes() == [hash_api_key("key-a")]
    assert exported.admin.token_digests() == [hash_api_key("admin-secret")]


async def test_a_separate_admin_port_serves_only_the_admin_api(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str, unused_tcp_port: int
) -> None:
    proxy = await start_gateway(config(redis_url, sim, server={"admin_port": unused_tcp_port}))
    status, _, _ = await call(proxy, "GET", "/admin/v1/tenants")
    assert status == 404
    assert await models_status(proxy, "key-a") == 200
    async with aiohttp.ClientSession() as http:
        admin = RunningGateway(
            f"http://127.0.0.1:{unused_tcp_port}", proxy.settings, http, proxy.app
        )
        assert (await call(admin, "GET", "/admin/v1/tenants"))[0] == 200
        assert await models_status(admin, "key-a") == 404
