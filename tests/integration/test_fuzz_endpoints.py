"""The OpenAI endpoints under generated input: JSON bodies of every shape and wrong type,
huge numbers, deep nesting, invalid UTF-8, odd headers. Whatever arrives, the answer is a 2xx
or a 4xx in the OpenAI envelope, never a 5xx, and the gateway keeps serving (issue 16).

Real parts: one in-process gateway in front of a simulated engine and a real redis-server;
hypothesis generates the requests (derandomized, so a failure reproduces).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningGateway, StartGateway, StartSim, gateway_config

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | JSON},
    optional={
        "content": st.text(max_size=60) | JSON,
        "tool_calls": JSON,
        "name": JSON,
    },
)
FIELDS = {
    "model": st.just("llama-3-8b") | JSON,
    "messages": st.lists(MESSAGE, max_size=3) | JSON,
    "prompt": st.text(max_size=60) | st.lists(st.integers(0, 50_000), max_size=20) | JSON,
    "input": st.text(max_size=60) | JSON,
    "max_tokens": st.integers(-5, 10) | JSON,
    "max_completion_tokens": st.integers(-5, 10) | JSON,
    "n": st.integers(-2, 3) | JSON,
    "best_of": st.integers(-2, 3) | JSON,
    "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": JSON}) | JSON,
    "tools": JSON,
    "priority": JSON,
    "reasoning_effort": JSON,
    "chat_template_kwargs": JSON,
}
#: A valid request of each endpoint, which the generated fields then change: most examples
#: get past parsing and reach estimation, routing, admission and the engine.
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
    },
    "/v1/completions": {"model": "llama-3-8b", "prompt": "hi", "max_tokens": 3},
    "/v1/embeddings": {"model": "llama-3-8b", "input": "hi"},
}
CHANGES = st.dictionaries(st.sampled_from(sorted(FIELDS)), st.nothing(), max_size=0).flatmap(
    lambda _: st.fixed_dictionaries({}, optional=FIELDS)
)


def raw_bodies(endpoint: str) -> st.SearchStrategy[bytes]:
    changed = CHANGES.map(lambda changes: json.dumps({**VALID[endpoint], **changes}).encode())
    return st.one_of(
        changed,
        changed,
        changed,
        st.fixed_dictionaries({}, optional=FIELDS).map(lambda body: json.dumps(body).encode()),
        st.binary(max_size=200),
        JSON.map(lambda value: json.dumps(value).encode()),
        st.integers(1, 3000).map(lambda depth: b'{"model":' + b"[" * depth + b"]" * depth + b"}"),
    )


HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "X-Fairgate-Priority": st.text(max_size=12),
        "X-Fairgate-Queue-Timeout": st.text(max_size=12),
        "X-Fairgate-Pool": st.text(max_size=12),
        "X-Fairgate-Session": st.text(max_size=12),
        "X-Request-Id": st.text(max_size=40),
        "Content-Type": st.sampled_from(["application/json", "text/plain", "x/y"]),
    },
)


@pytest.fixture
async def gateway(
    start_gateway: StartGateway, start_sim: StartSim, redis_url: str
) -> AsyncIterator[RunningGateway]:
    sim = await start_sim(time_scale=1000.0)
    yield await start_gateway(gateway_config(redis_url, {"interactive": [sim.url]}))


def _latin1(headers: dict[str, str]) -> dict[str, str]:
    """Header values a client can send at all (HTTP carries bytes; aiohttp encodes latin-1)."""
    return {k: v for k, v in headers.items() if v.isprintable() and v.isascii() and v.strip() == v}


async def _ask(
    gateway: RunningGateway, endpoint: str, raw: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    sent = {"Authorization": "Bearer key-a", **_latin1(headers)}
    async with gateway.http.post(gateway.url + endpoint, data=raw, headers=sent) as response:
        text = await response.text(errors="replace")
        return response.status, text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_generated_requests_never_get_a_server_error(
    gateway: RunningGateway, endpoint: str
) -> None:
    failures: list[tuple[int, bytes, dict[str, str], str]] = []
    statuses: list[tuple[int, bytes]] = []

    @settings(
        max_examples=150,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(raw=raw_bodies(endpoint), headers=HEADERS)
    def generated(raw: bytes, headers: dict[str, str]) -> None:
        cases.append((raw, headers))

    cases: list[tuple[bytes, dict[str, str]]] = []
    generated()
    for raw, headers in cases:
        status, text = await _ask(gateway, endpoint, raw, headers)
        statuses.append((status, raw))
        if status >= 500:
            failures.append((status, raw[:300], headers, text[:300]))
        elif status >= 400:
            assert json.loads(text)["error"]["message"], (raw[:200], text[:200])
    assert not failures, failures[:5]
    async with aiohttp.ClientSession() as http:  # still serving
        async with http.get(gateway.url + "/healthz") as response:
            assert response.status == 200
