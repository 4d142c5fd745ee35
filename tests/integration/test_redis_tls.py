"""TLS and ACL authentication to a real redis-server, on both of fairgate's Redis paths.

The server listens on TLS only (its plain port off) and its ``default`` user is disabled, so
anything that works went over TLS as the ACL user: redis-py's pool (the tenant directory,
admission's configuration, pub/sub) and the pipelined script channel (admission, quotas). That
user has the rights docs/redis.md recommends: fairgate's own keys and channels, no dangerous
command.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import openai
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from fairgate.redis_client import connect
from fairgate.settings import RedisConfig
from tests.conftest import RunningSim, StartGateway, StartSim, gateway_config, inflight_state
from tests.redis_deployments import INSPECTOR, TlsRedis, tls_redis
from tests.unit.config import CERT, CERT_KEY

USER, PASSWORD = "fairgate", "s3cret/pass word"  # characters a URL must escape
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TlsRedis]:
    with tls_redis(tmp_path, CERT, CERT_KEY, USER, PASSWORD) as running:
        yield running


def url(
    server: TlsRedis,
    password: str = PASSWORD,
    query: str = f"ssl_ca_certs={CERT}",
    user: str = USER,
) -> str:
    return f"rediss://{user}:{quote(password, safe='')}@127.0.0.1:{server.port}/0?{query}"


@contextlib.asynccontextmanager
async def admin_client(server: TlsRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(url(server, user=INSPECTOR))
    try:
        yield client
    finally:
        await client.aclose()


async def test_both_paths_connect_over_tls_as_the_acl_user(server: TlsRedis) -> None:
    client = connect(RedisConfig(url=url(server)))
    try:
        assert await client.acl_whoami() == "fairgate"  # redis-py's pool (decoded)
        assert await client.scripts.execute("ACL", "WHOAMI") == b"fairgate"  # the channel
        async with admin_client(server) as admin:
            listed = await admin.client_list()
        assert {entry["user"] for entry in listed} == {USER, INSPECTOR}
        assert len([entry for entry in listed if entry["user"] == USER]) >= 2  # pool, channel
    finally:
        await client.aclose()


async def test_a_gateway_serves_through_a_tls_redis_and_leaves_no_state(
    server: TlsRedis, start_sim: StartSim, start_gateway: StartGateway
) -> None:
    sim: RunningSim = await start_sim(time_scale=100.0)
    config = gateway_config(url(server), {"interactive": [sim.url]})
    config["tenants"]["a"]["quotas"] = {"requests_per_minute": 100}  # the quota script too
    gateway = await start_gateway(config)
    client = gateway.client()
    for _ in range(3):
        reply = await client.chat.completions.create(
            model="llama-3-8b", messages=MESSAGES, max_tokens=2
        )
        assert reply.usage.completion_tokens == 2
    async with admin_client(server) as admin:
        assert await admin.hget("fairgate:{adm}:stats", "grants") == b"3"
        assert await admin.exists("fairgate:{adm}:quota:a")  # taken with admission
        assert await inflight_state(admin) == {}


@pytest.mark.parametrize(
    ("password", "query", "why"),
    [
        pytest.param("wrong", f"ssl_ca_certs={CERT}", "username-password", id="wrong-password"),
        pytest.param(PASSWORD, "", "certificate verify failed", id="server-cert-not-trusted"),
    ],
)
async def test_a_refused_connection_is_an_outage_per_fail_mode_not_a_crash(
    server: TlsRedis,
    start_sim: StartSim,
    start_gateway: StartGateway,
    password: str,
    query: str,
    why: str,
) -> None:
    client = connect(RedisConfig(url=url(server, password, query)))
    try:
        with pytest.raises(RedisError, match=why):
            await client.ping()
        with pytest.raises(RedisError, match=why):
            await client.scripts.execute("PING")
    finally:
        await client.aclose()
    sim = await start_sim(time_scale=100.0)
    gateway = await start_gateway(
        gateway_config(url(server, password, query), {"interactive": [sim.url]})
    )
    with pytest.raises(openai.InternalServerError) as refused:
        await gateway.client().chat.completions.create(
            model="llama-3-8b", messages=MESSAGES, max_tokens=2
        )
    assert refused.value.code == "admission_unavailable"
    async with gateway.http.get(f"{gateway.url}/readyz") as resp:
        assert resp.status == 503


async def test_a_client_certificate_is_presented_on_both_paths(tmp_path: Path) -> None:
    """With ``tls-auth-clients yes`` the server refuses a client without a certificate; the
    URL's ``ssl_certfile``/``ssl_keyfile`` are presented by redis-py and the channel alike."""
    with tls_redis(tmp_path, CERT, CERT_KEY, USER, PASSWORD, client_certs=True) as server:
        bare = connect(RedisConfig(url=url(server)))
        query = f"ssl_ca_certs={CERT}&ssl_certfile={CERT}&ssl_keyfile={CERT_KEY}"
        with_cert = connect(RedisConfig(url=url(server, query=query)))
        try:
            with pytest.raises(Exception):  # noqa: B017 - the TLS alert's wording varies
                await bare.scripts.execute("PING")
            assert await with_cert.ping()
            assert await with_cert.scripts.execute("ACL", "WHOAMI") == b"fairgate"
        finally:
            await bare.aclose()
            await with_cert.aclose()
