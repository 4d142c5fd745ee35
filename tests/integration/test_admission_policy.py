"""Admission's policy is composed from named Lua parts when the scripts load (admission.policy).

The order policies' behaviour is tested in test_admission_fairness and test_admission_properties;
placement's in test_engine_dispatch. Here: that every configured choice has its part, that
parts are resolved with what they require, that a bad name is a clear error, and that what is
composed is what runs (a policy without the affinity picker ignores the session's backend).
"""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator

import pytest

from admission.domain import publish_config
from admission.policy import AdmissionPolicy, UnknownPart, available
from admission.scripts import AdmissionScripts
from admission.ticket import Ticket
from fairgate.keys import AdmissionKeys
from fairgate.redis_client import GatewayRedis
from fairgate.settings import AdmissionConfig, Settings


def test_every_configurable_order_has_its_part_and_every_part_is_configurable() -> None:
    choices = typing.get_args(AdmissionConfig.model_fields["policy"].annotation)
    assert sorted(choices) == available("order")


def test_parts_come_after_what_they_require_each_once() -> None:
    parts = AdmissionPolicy(order="shadow").parts()
    assert parts[:3] == ["order/vtc", "order/fcfs", "order/shadow"]
    assert len(parts) == len(set(parts))
    assert parts[3:] == [
        "filter/open",
        "filter/budgets",
        "filter/prefill_cap",
        "score/outstanding_tokens",
        "score/engine_load",
        "pick/affinity",
        "pick/least_loaded",
    ]


def test_an_unknown_part_is_named_with_the_known_ones() -> None:
    with pytest.raises(
        UnknownPart, match=r"no admission order named 'drr' \(known: fcfs, shadow, vtc\)"
    ):
        AdmissionPolicy(order="drr").compose("enqueue")
    with pytest.raises(UnknownPart, match="no admission pick named 'random'"):
        AdmissionPolicy(pickers=("random",)).compose("enqueue")


def test_the_composed_script_binds_the_chosen_parts() -> None:
    source = AdmissionPolicy(order="fcfs", pickers=("least_loaded",)).compose("tick")
    assert "local ORDER = order_fcfs" in source
    assert "local PICKERS = {pick_least_loaded}" in source
    assert "local function pick_affinity" not in source  # parts not chosen are not loaded
    assert "local order_vtc" not in source


@pytest.mark.parametrize("order", available("order"))
async def test_every_entry_script_compiles_under_every_order(redis_url: str, order: str) -> None:
    redis = GatewayRedis.from_url(redis_url)
    try:
        for entry in ("enqueue", "release", "charge", "renew", "cancel", "tick", "engine", "reuse"):
            sha = await redis.script_load(AdmissionPolicy(order=order).compose(entry))
            assert (await redis.script_exists(sha)) == [True]
    finally:
        await redis.aclose()


@pytest.fixture
async def two_backends(redis_url: str) -> AsyncIterator[tuple[GatewayRedis, str]]:
    """A pool ``p`` of two idle backends, ``b0`` before ``b1``, on the test Redis."""
    redis = GatewayRedis.from_url(redis_url)
    backend = {"models": ["m"], "max_concurrency": 4, "max_inflight_tokens": 1000}
    settings = Settings(
        redis={"url": redis_url},
        pools={
            "p": {
                "backends": {
                    "b0": {"url": "http://127.0.0.1:9", **backend},
                    "b1": {"url": "http://127.0.0.1:10", **backend},
                }
            }
        },
        tenants={"a": {}},
    )
    keys = AdmissionKeys.of(settings.redis.key_prefix)
    await publish_config(redis, keys, settings)
    yield redis, keys.prefix
    await redis.flushdb()
    await redis.aclose()


@pytest.mark.parametrize(
    ("pickers", "second_goes_to"),
    [(("affinity", "least_loaded"), "b0"), (("least_loaded",), "b1")],
)
async def test_what_is_composed_is_what_places(
    two_backends: tuple[GatewayRedis, str], pickers: tuple[str, ...], second_goes_to: str
) -> None:
    """The session's backend ``b0`` holds 100 tokens, ``b1`` nothing: within the 500-token
    slack the affinity picker keeps the session on ``b0``; without it the least loaded wins."""
    redis, prefix = two_backends
    scripts = AdmissionScripts(redis, prefix, 60_000, 8, AdmissionPolicy(pickers=pickers))
    first = await scripts.enqueue(Ticket("r1", "a", 100, 1.0, "p", "", 60.0), "o")
    assert (first.state, first.backend) == ("granted", "b0")  # both idle: the first in order
    session = Ticket("r2", "a", 100, 1.0, "p", "", 60.0, prefer="b0", prefer_slack=500)
    second = await scripts.enqueue(session, "o")
    assert (second.state, second.backend) == ("granted", second_goes_to)
