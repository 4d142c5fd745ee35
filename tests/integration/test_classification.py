"""Classification into pools: rules on estimated cost, the pool header, and what shows it.

The end-to-end tests run a real gateway in front of two real simulated engines (an interactive
and a reasoning pool) with a real Redis, and check where each request went twice: by the
gateway's response headers and by which engine has the request's timeline.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import yaml

from backends.classify import DEFAULT_ROUTE, Classifier, Route, matches
from estimators.cost import Cost
from fairgate.settings import ConfigError, RoutingRule, Settings, load_settings
from loadtest.kit.shapes import prompt_text
from tests.conftest import RunningSim, StartGateway, StartSim, gateway_config

MODEL = "llama-3-8b"

#: The demo's thresholds (config/fairgate.yaml), in rule form.
RULES = [
    {"name": "reasoning", "pool": "reasoning", "reasoning": True},
    {"name": "long-prompt", "pool": "reasoning", "min_prompt_tokens": 4096},
    {"name": "long-output", "pool": "reasoning", "min_max_output": 4096},
]


def cost(prompt: int = 100, expected: int = 50, cap: int = 256, reasoning: bool = False) -> Cost:
    return Cost(
        prompt_tokens=prompt,
        counted_prompt_tokens=prompt,
        prompt_source="tiktoken",
        expected_output=expected,
        likely_output=expected,
        max_output=cap,
        reasoning=reasoning,
        input_weight=1.0,
        output_weight=2.0,
    )


def rule(**fields: object) -> RoutingRule:
    return RoutingRule(**{"name": "r", "pool": "long", **fields})


# ---------------------------------------------------------------------- rule matching


def test_a_rule_without_conditions_matches_everything() -> None:
    assert matches(rule(), MODEL, "t", cost())


@pytest.mark.parametrize(
    ("fields", "request_cost", "expected"),
    [
        ({"min_prompt_tokens": 4096}, cost(prompt=4096), True),  # bounds are inclusive
        ({"min_prompt_tokens": 4096}, cost(prompt=4095), False),
        ({"max_prompt_tokens": 512}, cost(prompt=512), True),
        ({"max_prompt_tokens": 512}, cost(prompt=513), False),
        ({"min_expected_output": 1000}, cost(expected=999), False),
        ({"max_expected_output": 1000}, cost(expected=999), True),
        ({"min_max_output": 4096}, cost(cap=8192), True),
        ({"max_max_output": 4096}, cost(cap=8192), False),
        ({"reasoning": True}, cost(reasoning=True), True),
        ({"reasoning": True}, cost(), False),
        ({"reasoning": False}, cost(reasoning=True), False),
        ({"min_prompt_tokens": 4096, "reasoning": True}, cost(prompt=9000), False),  # all hold
    ],
)
def test_conditions_on_the_cost(fields: dict, request_cost: Cost, expected: bool) -> None:
    assert matches(rule(**fields), MODEL, "t", request_cost) is expected


def test_conditions_on_model_and_tenant_take_a_name_or_a_list() -> None:
    assert matches(rule(models=MODEL), MODEL, "t", cost())
    assert not matches(rule(models=["other"]), MODEL, "t", cost())
    assert matches(rule(tenants="batch"), MODEL, "batch", cost())
    assert not matches(rule(tenants=["batch", "etl"]), MODEL, "chat", cost())


def test_the_first_matching_rule_wins_else_the_first_usable_pool() -> None:
    rules = [
        RoutingRule(name="batch", pool="batch", tenants=["etl"]),
        RoutingRule(name="long", pool="long", min_prompt_tokens=4096),
        RoutingRule(name="also-long", pool="batch", min_prompt_tokens=1000),
    ]
    pools = {"chat": frozenset({MODEL}), "long": frozenset({MODEL}), "batch": frozenset({MODEL})}
    classifier = Classifier(rules, pools)
    assert classifier.classify(MODEL, "etl", None, cost(prompt=9000)) == Route("batch", "batch")
    assert classifier.classify(MODEL, "t", None, cost(prompt=9000)) == Route("long", "long")
    assert classifier.classify(MODEL, "t", None, cost(prompt=2000)) == Route("batch", "also-long")
    assert classifier.classify(MODEL, "t", None, cost()) == Route("chat", DEFAULT_ROUTE)


def test_rules_skip_pools_the_tenant_may_not_use_or_that_lack_the_model() -> None:
    rules = [RoutingRule(name="long", pool="long", min_prompt_tokens=4096)]
    classifier = Classifier(rules, {"chat": frozenset({MODEL, "m2"}), "long": frozenset({MODEL})})
    assert classifier.classify(MODEL, "t", ["chat"], cost(prompt=9000)) == Route("chat", "default")
    assert classifier.classify("m2", "t", None, cost(prompt=9000)) == Route("chat", "default")
    assert classifier.classify("m3", "t", None, cost()) is None


# ---------------------------------------------------------------------- configuration


def two_pools(**sections: object) -> dict:
    return gateway_config(
        "redis://127.0.0.1:1/0",
        {"interactive": ["http://127.0.0.1:1"], "reasoning": ["http://127.0.0.1:2"]},
        **sections,
    )


@pytest.mark.parametrize(
    ("rules", "field", "reason"),
    [
        ([{"name": "x", "pool": "nowhere"}], "routing.rules.0.pool", "unknown pool 'nowhere'"),
        (
            [{"name": "x", "pool": "reasoning", "models": "gpt-9"}],
            "routing.rules.0.models",
            "does not serve 'gpt-9'",
        ),
        (
            [{"name": "x", "pool": "reasoning", "tenants": ["z"]}],
            "routing.rules.0.tenants",
            "unknown tenant 'z'",
        ),
        (
            [{"name": "x", "pool": "reasoning", "tenants": "b"}],  # b may use interactive only
            "routing.rules.0.tenants",
            "may not use pool 'reasoning'",
        ),
        (
            [{"name": "x", "pool": "reasoning", "min_prompt": 4096}],
            "routing.rules.0.min_prompt",
            "Extra inputs are not permitted",
        ),
        (
            [{"name": "x", "pool": "reasoning", "min_prompt_tokens": 9, "max_prompt_tokens": 1}],
            "routing.rules.0",
            "min_prompt_tokens (9) is above max_prompt_tokens (1)",
        ),
        ([{"name": "default", "pool": "reasoning"}], "routing.rules.0.name", "reserved"),
        ([{"pool": "reasoning"}], "routing.rules.0.name", "Field required"),
        (
            [{"name": "x", "pool": "reasoning"}, {"name": "x", "pool": "interactive"}],
            "routing.rules",
            "rule name must be unique",
        ),
    ],
)
def test_bad_rules_stop_start_up_naming_the_field(
    tmp_path: Path, rules: list, field: str, reason: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(two_pools(routing={"rules": rules})))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert field in str(caught.value) and reason in str(caught.value)


def test_the_demo_config_routes_long_and_reasoning_work_to_the_reasoning_pool() -> None:
    demo = Path(__file__).resolve().parents[2] / "config" / "fairgate.yaml"
    settings = load_settings(demo)
    classifier = Classifier(
        settings.routing.rules, {n: p.models for n, p in settings.pools.items()}
    )
    assert classifier.classify(MODEL, "hobby", None, cost()).pool == "interactive"
    for heavy in (cost(prompt=28_000), cost(reasoning=True), cost(expected=4096)):
        assert classifier.classify(MODEL, "hobby", None, heavy).pool == "reasoning"


# ---------------------------------------------------------------------- end to end


@pytest.fixture
async def pools(start_sim: StartSim) -> dict[str, RunningSim]:
    return {"interactive": await start_sim(), "reasoning": await start_sim()}


@pytest.fixture
async def gateway(pools: dict[str, RunningSim], redis_url: str, start_gateway: StartGateway):
    config = gateway_config(redis_url, {name: [sim.url] for name, sim in pools.items()})
    config["routing"] = {"rules": RULES}
    config["tenants"]["pinner"] = {"api_keys": ["key-p"], "allow_pool_header": True}
    return await start_gateway(config)


async def ask(client: openai.AsyncOpenAI, request_id: str, words: int = 20, **extra: object):
    """One chat request; returns the raw response (headers) after reading the completion."""
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt_text(words)}],
        max_tokens=extra.pop("max_tokens", 4),
        extra_headers={"X-Request-Id": request_id, **extra.pop("headers", {})},
        **extra,
    )
    raw.parse()
    return raw


def engine_of(pools: dict[str, RunningSim], request_id: str) -> list[str]:
    """The pools whose engine saw ``request_id`` (exactly one when routing works)."""
    return [name for name, sim in pools.items() if sim.sim.engine.lookup(request_id)]


async def test_short_chat_stays_interactive_long_and_reasoning_go_to_reasoning(
    gateway, pools: dict[str, RunningSim]
) -> None:
    client = gateway.client()
    cases = [
        ("short", {}, "interactive", "default"),
        ("long", {"words": 6000}, "reasoning", "long-prompt"),
        ("thinks", {"reasoning_effort": "high"}, "reasoning", "reasoning"),
        ("big-cap", {"max_tokens": 8192, "extra_body": {"ignore_eos": False}}, "reasoning",
         "long-output"),
    ]  # fmt: skip
    for request_id, extra, pool, rule_name in cases:
        raw = await ask(client, request_id, **extra)
        assert (raw.headers["X-Fairgate-Pool"], raw.headers["X-Fairgate-Route"]) == (
            pool,
            rule_name,
        ), request_id
        assert engine_of(pools, request_id) == [pool], request_id
    states = {name: await sim.state() for name, sim in pools.items()}
    assert states["interactive"]["peak_requests_by_tenant"] == {"a": 1}
    assert states["reasoning"]["peak_requests_by_tenant"] == {"a": 1}

    async with gateway.http.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    for pool, rule_name, count in [
        ("interactive", "default", 1),
        ("reasoning", "long-prompt", 1),
        ("reasoning", "reasoning", 1),
    ]:
        sample = f'fairgate_routed_requests_total{{pool="{pool}",rule="{rule_name}"}} {count}.0'
        assert sample in text


async def test_an_allowed_tenant_may_name_its_pool(gateway, pools: dict[str, RunningSim]) -> None:
    client = gateway.client("key-p")
    pinned = {"X-Fairgate-Pool": "reasoning"}
    raw = await ask(client, "pinned-short", headers=pinned)
    assert (raw.headers["X-Fairgate-Pool"], raw.headers["X-Fairgate-Route"]) == (
        "reasoning",
        "header",
    )
    assert engine_of(pools, "pinned-short") == ["reasoning"]
    raw = await ask(client, "pinned-long", words=6000, headers={"X-Fairgate-Pool": "interactive"})
    assert raw.headers["X-Fairgate-Pool"] == "interactive"
    assert engine_of(pools, "pinned-long") == ["interactive"]
    with pytest.raises(openai.BadRequestError, match="no pool 'gpu-farm'"):
        await ask(client, "unknown", headers={"X-Fairgate-Pool": "gpu-farm"})


async def test_other_tenants_may_not_name_a_pool(gateway, pools: dict[str, RunningSim]) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await ask(gateway.client("key-a"), "refused", headers={"X-Fairgate-Pool": "interactive"})
    assert caught.value.status_code == 403
    assert caught.value.body["code"] == "permission_denied"
    assert engine_of(pools, "refused") == []


async def test_a_tenant_restricted_to_one_pool_is_never_classified_out_of_it(
    gateway, pools: dict[str, RunningSim]
) -> None:
    raw = await ask(gateway.client("key-b"), "b-long", words=6000)  # b: interactive only
    assert (raw.headers["X-Fairgate-Pool"], raw.headers["X-Fairgate-Route"]) == (
        "interactive",
        "default",
    )
    assert engine_of(pools, "b-long") == ["interactive"]


def test_settings_without_routing_keep_the_first_pool() -> None:
    settings = Settings(**two_pools())
    assert settings.routing.rules == []
