"""The admin API keeps the promises of its own OpenAPI document, on any input.

schemathesis reads ``/admin/v1/openapi.json`` from a live gateway and, for every operation the
document lists (whoever declared it), generates requests from the schemas, valid ones and
invalid ones, and checks each answer: never a 5xx, a status and a content type the document
declares, a body that matches the declared schema. The run is bounded and derandomized, so a
failure is reproducible and the test takes seconds.

Real parts: an in-process gateway on loopback with a real redis-server and a simulated engine.
schemathesis sends with ``requests`` (blocking), so it runs in a worker thread while the
gateway answers on the test's event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, strategies
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import RunningSim, StartGateway, StartSim, gateway_config

ADMIN = {"Authorization": "Bearer admin-secret"}
#: Examples per operation and generation mode: enough to find the odd input, bounded in time.
EXAMPLES = 40
#: The tenants the gateway starts with; an operation that deletes one gets it back.
SEEDS = {"a": {"api_keys": ["key-a"]}, "b": {"api_keys": ["key-b"], "weight": 2}}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
async def sim(start_sim: StartSim) -> RunningSim:
    return await start_sim(time_scale=100.0)


async def test_every_admin_operation_keeps_to_the_document(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(
        gateway_config(
            redis_url,
            {"interactive": [sim.url]},
            admin={"tokens": ["admin-secret"]},
            tenants=SEEDS,
        )
    )
    async with gateway.http.get(f"{gateway.url}/admin/v1/openapi.json") as response:
        document = await response.json()
    async with gateway.http.post(
        f"{gateway.url}/admin/v1/tenants/a/keys", json={"name": "seed"}, headers=ADMIN
    ) as response:
        key_id = (await response.json())["id"]
    # Path parameters that name something that exists (others are generated, mostly 404s).
    known = {"tenant_id": "a", "key_id": key_id, "backend": "interactive-0", "pool": "interactive"}
    fuzzer = Fuzzer(document, gateway.url, known)
    await asyncio.to_thread(fuzzer.run)
    assert not fuzzer.failures, "\n\n".join(fuzzer.failures)
    # Each operation whose ids could be named was also answered with success, so its success
    # schema was checked on real answers (not only its error schema).
    assert fuzzer.reachable and fuzzer.reachable - fuzzer.succeeded == set()


async def test_what_the_fuzzing_found_is_400_naming_the_problem(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    """Inputs that once answered 500 or invalid JSON (a regression test for each)."""
    gateway = await start_gateway(
        gateway_config(redis_url, {"interactive": [sim.url]}, admin={"tokens": ["admin-secret"]})
    )

    async def call(method: str, path: str, raw: str, **headers: str) -> tuple[int, str]:
        async with gateway.http.request(
            method, f"{gateway.url}{path}", data=raw, headers={**ADMIN, **headers}
        ) as response:
            return response.status, (await response.json())["error"]["message"]

    status, message = await call("POST", "/admin/v1/tenants/a/keys", '{"expires_in_s": 1e308}')
    assert status == 400 and "expires_in_s" in message  # was 500: past year 9999
    for raw in ('{"weight": 1e400}', '{"weight": NaN}', '{"weight": -Infinity}'):
        status, message = await call("PATCH", "/admin/v1/tenants/a", raw)
        assert status == 400 and "number JSON cannot carry" in message  # was 200, Infinity
        status, message = await call("POST", "/admin/v1/tenants", raw.replace("{", '{"id": "x",'))
        assert status == 400 and "number JSON cannot carry" in message
    status, message = await call("DELETE", "/admin/v1/tenants/a", "", **{"If-Match": 'W/")#"'})
    assert status == 400 and "If-Match" in message  # now in the document
    async with gateway.http.get(f"{gateway.url}/admin/v1/tenants/a", headers=ADMIN) as response:
        assert (await response.json())["weight"] == 1


class Fuzzer:
    """Runs every operation of a document against a gateway, collecting what failed."""

    def __init__(self, document: dict[str, Any], base_url: str, known: dict[str, str]) -> None:
        self.schema = schemathesis.openapi.from_dict(document, config=schemathesis.Config())
        self.schema.validate()  # a valid OpenAPI 3.1 document, or this raises saying why
        self.operations = [result.ok() for result in self.schema.get_all_operations()]
        assert len(self.operations) == sum(len(methods) for methods in document["paths"].values())
        self.base_url = base_url
        self.known = known
        self.failures: list[str] = []
        self.succeeded: set[str] = set()
        self.reachable = {
            op.label for op in self.operations if all(p.name in known for p in op.path_parameters)
        }
        self.session = requests.Session()

    def run(self) -> None:
        # Deleting operations last, so the others meet the seeded tenants and keys; the deeper
        # first (a tenant's keys go with it).
        self.operations.sort(key=_deleting_last)
        with self.session:
            for operation in self.operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    try:
                        self._fuzz(operation, mode)
                    except hypothesis.errors.Unsatisfiable:
                        assert mode is GenerationMode.NEGATIVE  # nothing in it can be invalid
                    except (Exception, BaseExceptionGroup) as exc:  # every operation's, together
                        self.failures.append(f"{operation.label} ({mode.value}):\n{exc}")

    def _fuzz(self, operation: Any, mode: GenerationMode) -> None:
        """Generated requests; in positive mode half of them with the known ids in the path."""
        strategy = operation.as_strategy(generation_mode=mode)
        seeded = {p.name: self.known[p.name] for p in operation.path_parameters}
        if mode is GenerationMode.POSITIVE and operation.label in self.reachable and seeded:
            strategy = strategies.one_of(
                strategy, operation.as_strategy(generation_mode=mode, path_parameters=seeded)
            )

        @hypothesis.settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=strategy.map(_without_framing_headers))
        def fuzz(case: Any) -> None:
            try:
                response = case.call_and_validate(
                    base_url=self.base_url, session=self.session, headers=ADMIN, checks=CHECKS
                )
                if response.status_code < 300:
                    self.succeeded.add(operation.label)
            finally:
                if operation.method.upper() == "DELETE":
                    self._restore()

        fuzz()

    def _restore(self) -> None:
        """Put back a seeded tenant that a fuzzed DELETE removed."""
        listed = self.session.get(f"{self.base_url}/admin/v1/tenants", headers=ADMIN).json()
        present = {tenant["id"] for tenant in listed["data"]}
        for tenant_id, settings in SEEDS.items():
            if tenant_id not in present:
                body = {"id": tenant_id, **{k: v for k, v in settings.items() if k != "api_keys"}}
                self.session.post(f"{self.base_url}/admin/v1/tenants", json=body, headers=ADMIN)


def _deleting_last(operation: Any) -> tuple[bool, int]:
    deleting = operation.method.upper() == "DELETE"
    return deleting, -operation.path.count("/") if deleting else 0


#: Headers that frame the HTTP message itself: a garbled one is refused by the HTTP parser
#: (400, text) before the API sees the request, so it tests the server library, not the API.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade"}


def _without_framing_headers(case: Any) -> Any:
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() not in FRAMING}
    return case
