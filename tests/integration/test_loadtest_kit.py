"""The load-test kit: scenarios, seeded arrivals and shapes, the metrics math, and a real run.

The pure parts are checked on known inputs; the last tests run a tiny scenario end to end
against real simulator processes, a real redis-server and a real gateway (all started by the
kit on loopback), and check what the report holds, never how fast anything was.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from estimators.prompt_tokens import count_chat_prompt
from estimators.tokenizer import default_tokenizer
from fairgate.settings import Settings, load_settings
from loadtest.kit.arrivals import burst_times, poisson_times, rng_for, schedule, zipf_shares
from loadtest.kit.capacity import capacity_rps, engine_work
from loadtest.kit.cli import main as loadtest_main
from loadtest.kit.client import Record
from loadtest.kit.entitlement import owed_weights
from loadtest.kit.metrics import (
    fairness,
    jain,
    served_by,
    slope,
    unplaced_service,
)
from loadtest.kit.modes import parse_mode
from loadtest.kit.runner import active_tenants, quota_use
from loadtest.kit.scenario import (
    REPO,
    Bursts,
    Closed,
    Scenario,
    ScenarioError,
    ServiceWeights,
    load_scenario,
    shipped_scenarios,
)
from loadtest.kit.shapes import draw_plan, prompt_text, request_body
from loadtest.kit.stack import gateway_config
from loadtest.kit.targets import evaluate
from loadtest.stats import percentile, percentile_or_none

W = ServiceWeights()


def scenario(**changes: object) -> Scenario:
    data: dict = {
        "name": "tiny",
        "title": "tiny",
        "duration_s": 10,
        "modes": ["direct", "vtc"],
        "tenants": {
            "a": {
                "weight": 1,
                "arrival": {"kind": "poisson", "rate": 5},
                "shapes": [{"prompt_tokens": 100, "output_tokens": 10}],
            },
            "b": {
                "weight": 3,
                "pool": "interactive",
                "arrival": {"kind": "closed", "concurrency": 2},
                "shapes": [
                    {"prompt_tokens": {"dist": "uniform", "min": 50, "max": 80},
                     "output_tokens": {"dist": "lognormal", "median": 20, "max": 40}},
                ],
            },
        },
    }  # fmt: skip
    data.update(changes)
    return Scenario(**data)


# ----------------------------------------------------------------------- scenarios, modes


@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda p: p.stem)
@pytest.mark.parametrize("short", [False, True])
def test_shipped_scenarios_are_valid(path: Path, short: bool) -> None:
    loaded = load_scenario(path, short=short)
    assert loaded.modes and loaded.tenants and loaded.targets


def test_the_shipped_scenarios_and_the_short_versions_are_shorter() -> None:
    names = [load_scenario(p).name for p in shipped_scenarios()]
    assert names == [
        "noisy-neighbour",
        "weighted-shares",
        "returning-tenant",
        "long-prompt-stalls",
        "overload",
        "three-replicas",
        "tokens-bind",
        "tokens-bind-mixed",
        "tokens-bind-replicas",
        "many-tenants",
        "open-loop-weights",
        "wrong-estimates",
        "many-weights",
        "quota-capped",
        "priority-bands",
        "workers",
    ]
    for path in shipped_scenarios():
        assert load_scenario(path, short=True).duration_s <= load_scenario(path).duration_s


def test_make_flood_floods_the_demo_tenants_with_their_keys_and_weights() -> None:
    """``make flood`` runs config/demo/flood.yaml against ``make run``: its tenants must be the
    demo's, with the demo's keys and weights, and each must want more than its fair share."""
    flood = load_scenario(REPO / "config" / "demo" / "flood.yaml")
    demo = load_settings(REPO / "config" / "fairgate.yaml")
    assert set(flood.tenants) == set(demo.tenants)
    budget = demo.pools["interactive"].backends["interactive-0"].max_inflight_tokens
    total_weight = sum(t.weight for t in demo.tenants.values())
    for name, spec in flood.tenants.items():
        tenant = demo.tenants[name]
        assert spec.api_key in [key.get_secret_value() for key in tenant.api_keys]
        assert spec.weight == tenant.weight
        shape = spec.shapes[0]
        held = shape.prompt_tokens.mean + shape.output_tokens.mean  # per request, about
        fair = budget / held * tenant.weight / total_weight
        assert isinstance(spec.arrival, Closed) and spec.arrival.concurrency > fair


def test_a_scenario_extends_its_base() -> None:
    replicas, shares = load_scenario("three-replicas"), load_scenario("weighted-shares")
    assert [m.name for m in replicas.modes] == ["direct", "vtc", "vtc-x3"]
    assert replicas.tenants == shares.tenants
    assert replicas.name == "three-replicas"


def test_a_typo_in_a_scenario_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntitle: x\nduration_s: 1\nmodes: [vtc]\ntenants: {}\nsede: 3\n")
    with pytest.raises(ScenarioError) as error:
        load_scenario(bad)
    assert "sede" in str(error.value) and "tenants" in str(error.value)


def test_modes() -> None:
    assert parse_mode("direct").kind == "direct"
    pools = parse_mode("vtc-pools-x3")
    assert (pools.kind, pools.policy, pools.pools, pools.replicas) == ("gateway", "vtc", True, 3)
    assert parse_mode("fcfs").policy == "fcfs"
    twin = parse_mode("alone-vtc-pools")
    assert (twin.kind, twin.pools, twin.alone) == ("gateway", True, True)
    assert parse_mode("alone").alone and not parse_mode("vtc-pools").alone
    workers = parse_mode("vtc-x3-w2")
    assert (workers.replicas, workers.workers) == (3, 2) and parse_mode("vtc").workers == 1
    for bad in (
        "lifo",
        "direct-x2",
        "vtc-x0",
        "alone-direct",
        "alone-alone",
        "direct-w2",
        "vtc-w0",
        "vtc-w2-x3",
    ):
        with pytest.raises(ValueError):
            parse_mode(bad)


def test_gateway_config_isolates_pools_only_in_pools_modes() -> None:
    s = scenario(
        pools={"interactive": {}, "reasoning": {"max_concurrency": 4}},
        time_scale=4,
        tenants={
            **scenario().model_dump()["tenants"],
            "r": {
                "pool": "reasoning",
                "queue_timeout_s": 20,
                "arrival": {"kind": "poisson", "rate": 1},
                "shapes": [{"prompt_tokens": 100, "output_tokens": 10}],
            },
        },
    )
    engines = {
        "interactive": {"i-0": "http://127.0.0.1:1"},
        "reasoning": {"r-0": "http://127.0.0.1:2"},
    }
    shared = gateway_config(
        s, parse_mode("vtc"), "redis://127.0.0.1:1/0", {"interactive": engines["interactive"]}
    )
    assert all("pools" not in t for t in shared["tenants"].values())
    assert shared["tenants"]["r"]["queue_timeout_s"] == 5  # 20 simulated s at time scale 4
    assert "routing" not in shared
    pooled = gateway_config(s, parse_mode("vtc-pools"), "redis://127.0.0.1:1/0", engines)
    # Without routing rules of its own, the scenario's tenant pools become tenant rules...
    assert all("pools" not in t for t in pooled["tenants"].values())
    assert pooled["routing"]["rules"] == [
        {"name": "tenant-r", "pool": "reasoning", "tenants": ["r"]}
    ]
    # ... and a scenario's routing rules classify by cost, whoever sends the request.
    rules = [{"name": "long", "pool": "reasoning", "min_prompt_tokens": 4096}]
    by_cost = gateway_config(
        s.model_copy(update={"routing": rules}), parse_mode("vtc-pools"), "redis://x:1/0", engines
    )
    assert by_cost["routing"]["rules"] == rules
    alone = gateway_config(s, parse_mode("alone-vtc-pools"), "redis://x:1/0", engines)
    assert set(alone["tenants"]) == {"a", "b"} and alone["routing"] == pooled["routing"]
    assert pooled["pools"]["reasoning"]["backends"]["r-0"]["max_concurrency"] == 4
    assert gateway_config(s, parse_mode("fcfs"), "redis://x:1/0", engines)["admission"] == {
        "policy": "fcfs"
    }


# --------------------------------------------------------------------- arrivals and shapes


def test_arrivals_are_seeded() -> None:
    first = schedule(scenario(), "a")
    assert first == schedule(scenario(), "a")
    assert first != schedule(scenario(seed=99), "a")
    assert all(0 <= t < 10 for t, _ in first)
    assert [t for t, _ in first] == sorted(t for t, _ in first)


def test_poisson_count_and_bursts() -> None:
    times = poisson_times(50.0, 0.0, 100.0, rng_for(scenario(), "x"))
    assert 4700 < len(times) < 5300  # 5,000 expected; 4 standard deviations either side
    bursts = Bursts(kind="bursts", at=[1.0, 5.0, 50.0], size=4, spread_s=2.0)
    assert burst_times(bursts, 0.0, 10.0) == [1.0, 1.5, 2.0, 2.5, 5.0, 5.5, 6.0, 6.5]


def test_zipf_shares() -> None:
    shares = zipf_shares(4, 1.0)
    assert math.isclose(sum(shares), 1.0)
    assert shares == sorted(shares, reverse=True)
    assert math.isclose(shares[0] / shares[1], 2.0)
    assert zipf_shares(3, 0.0) == pytest.approx([1 / 3] * 3)


def test_shapes_are_seeded_and_within_bounds() -> None:
    spec = scenario().tenants["b"]
    plans = [draw_plan("b", spec.shapes, rng_for(scenario(), "b", i)) for i in range(200)]
    again = [draw_plan("b", spec.shapes, rng_for(scenario(), "b", i)) for i in range(200)]
    assert plans == again
    assert all(50 <= p.prompt_tokens <= 80 and 1 <= p.output_tokens <= 40 for p in plans)
    assert len({p.prompt_tokens for p in plans}) > 10


def test_a_shape_declares_max_tokens_apart_from_its_output() -> None:
    """By default a request asks for exactly its output (``ignore_eos``); a shape's own
    ``max_tokens`` (or ``none``) is what the gateway sees, and the simulator stops the output
    where the draw says (``sim_output_tokens``)."""
    shapes = [{"prompt_tokens": 100, "output_tokens": 120, "stream": False}]
    exact = scenario(tenants={"a": {"arrival": {"kind": "closed", "concurrency": 1},
                                    "shapes": shapes}})  # fmt: skip
    declared = scenario(tenants={"a": {"arrival": {"kind": "closed", "concurrency": 1},
                                       "shapes": [{**shapes[0], "max_tokens": 4096}]}})  # fmt: skip
    unset = scenario(tenants={"a": {"arrival": {"kind": "closed", "concurrency": 1},
                                    "shapes": [{**shapes[0], "max_tokens": "none"}]}})  # fmt: skip
    bodies = []
    for s in (exact, declared, unset):
        plan = draw_plan("a", s.tenants["a"].shapes, rng_for(s, "a", 0))
        assert plan.output_tokens == 120
        body = request_body(plan, "m")
        bodies.append({k: v for k, v in body.items() if k not in ("messages", "model")})
    assert bodies == [
        {"stream": False, "max_tokens": 120, "ignore_eos": True},
        {"stream": False, "max_tokens": 4096, "sim_output_tokens": 120},
        {"stream": False, "sim_output_tokens": 120},
    ]
    with pytest.raises(ValueError):
        scenario(tenants={"a": {"arrival": {"kind": "closed", "concurrency": 1},
                                "shapes": [{**shapes[0], "max_tokens": 0}]}})  # fmt: skip


@pytest.mark.parametrize("tokens", [11, 12, 100, 1_000, 28_000])
def test_prompt_text_has_exactly_the_tokens_drawn(tokens: int) -> None:
    message = [{"role": "user", "content": prompt_text(tokens)}]
    assert count_chat_prompt(message, default_tokenizer()) == tokens


# --------------------------------------------------------------------------------- metrics


def test_percentile_interpolates_between_the_closest_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert percentile([7.0], 99) == 7.0
    assert percentile([5.0, 1.0, 3.0], 0) == 1.0
    assert percentile([5.0, 1.0, 3.0], 100) == 5.0
    assert percentile_or_none([], 50) is None
    assert percentile_or_none([2.0, 4.0], 25) == 2.5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_percentile_is_numpys_default_definition() -> None:
    """The documented definition is numpy's "linear" (matplotlib's box plots draw it too)."""
    numpy = pytest.importorskip("numpy")  # installed with matplotlib, the kit's plotting
    rng = numpy.random.default_rng(3)
    for size in (1, 2, 5, 40):
        values = rng.lognormal(0.0, 1.0, size).tolist()
        for q in (0, 1, 25, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(float(numpy.percentile(values, q)))


def test_jain_and_slope_on_known_inputs() -> None:
    assert jain([5.0, 5.0, 5.0]) == 1.0
    assert jain([1.0, 0.0, 0.0, 0.0]) == 0.25
    assert jain([1.0, 2.0]) == pytest.approx(9 / 10)
    assert slope([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) == pytest.approx(2.0)


def done(tenant: str, end: float, prompt: int = 100, output: int = 50, **kw: object) -> Record:
    record = Record(tenant, 0, False, end - 1, prompt, output, end, end, 200)
    record.__dict__.update(kw)
    return record


def test_service_of_a_stream_is_spread_between_first_and_last_token() -> None:
    record = done("a", 10.0, stream=True, first_token=6.0)
    assert served_by(record, 5.9, W) == 0
    assert served_by(record, 6.0, W) == 100  # the prompt at the first token
    assert served_by(record, 8.0, W) == 100 + 50  # half of 2 x 50 output tokens
    assert served_by(record, 11.0, W) == 200
    rejected = done("a", 3.0, status=429)
    assert served_by(rejected, 99.0, W) == 0


def test_service_of_a_plain_response_is_spread_over_the_time_it_ran() -> None:
    # sent at 2, waited 2 s in fairgate's queue (X-Fairgate-Queue-Time), ran from 4 to 10
    record = done("a", 10.0, sent=2.0, queue_s=2.0)
    assert served_by(record, 4.0, W) == 0
    assert served_by(record, 7.0, W) == 100  # half of 100 + 2 x 50, not all at the end
    assert served_by(record, 10.0, W) == 200
    assert unplaced_service([record], 7.0, "a", W) == 100
    assert unplaced_service([record], 10.0, "a", W) == 0


def test_fairness_of_exactly_weighted_service() -> None:
    # Tenant b (weight 2) gets two requests for each of a's, every second, for 100 s.
    records = [done("a", t) for t in range(1, 101)]
    records += [done("b", t) for t in range(1, 101) for _ in range(2)]
    result = fairness(records, {"a": 1, "b": 2}, (0, 100), W, step=1)
    assert result.service == {"a": 100 * 200, "b": 200 * 200}
    assert result.shares == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    assert result.worst_share_error == pytest.approx(0)
    assert result.jain == pytest.approx(1.0)
    assert result.gap_max <= 200  # never more than one request's service apart


def test_fairness_of_equal_service_for_unequal_weights() -> None:
    # FCFS-like: both tenants get the same service though b weighs 3; the gap grows with time.
    records = [done(t, s) for t in ("a", "b") for s in range(1, 101)]
    result = fairness(records, {"a": 1, "b": 3}, (0, 100), W, step=1)
    assert result.shares == pytest.approx({"a": 0.5, "b": 0.5})
    assert result.worst_share_error == pytest.approx(1.0)  # a gets 0.5 of a 0.25 target
    assert result.jain == pytest.approx(jain([1.0, 1 / 3]))
    # x_a - x_b = 200 t - 200 t / 3: grows by 133.3 per second
    assert result.gap_slope == pytest.approx(400 / 3, rel=0.01)
    assert result.gap_end == pytest.approx(2 * result.gap_half, rel=0.05)


def one_shape_pool() -> Scenario:
    """Two engines running 10 at once; one tenant of 1,000-token prompts, 100-token answers."""
    return scenario(
        engine={"max_num_seqs": 10},
        pools={"interactive": {"engines": 2, "max_concurrency": 64}},
        tenants={
            "a": {
                "arrival": {"kind": "poisson", "rate": 1},
                "shapes": [{"prompt_tokens": 1000, "output_tokens": 100}],
            }
        },
        load={"factors": [1.0]},
    )


def test_capacity_in_closed_form() -> None:
    # 5.75 ms x 100 / 10 + 17.25 us x 1000 + 6 us x 100 = 75.35 ms per request per engine
    assert capacity_rps(one_shape_pool()) == pytest.approx(2 / 0.07535)


def test_engine_work_prices_requests_by_engine_time_not_by_tokens() -> None:
    s = one_shape_pool()
    # the offered mix runs 10 at once: 75.35 ms per request, as in the closed form above
    assert engine_work(s, [(1000, 100)]) == pytest.approx(0.07535)
    # an output token costs 0.581 ms, a prompt token 17.25 us: two samples of equal tokens
    # are not equal work, and the throughput target must not take one for the other
    assert engine_work(s, [(100, 1000)]) > 6 * engine_work(s, [(1000, 100)])


def test_throughput_is_judged_on_engine_work_with_tokens_beside_it() -> None:
    direct = {"mode": "direct", "label": "direct", "tokens_per_s": 1000.0, "engine_work_per_s": 1.0}
    smaller_sample = {
        "mode": "vtc",
        "label": "vtc",
        "tokens_per_s": 930.0,
        "engine_work_per_s": 0.97,
    }
    idle = {"mode": "fcfs", "label": "fcfs", "tokens_per_s": 1000.0, "engine_work_per_s": 0.9}
    checks = {c.run: c for c in evaluate(["throughput"], [direct, smaller_sample, idle])}
    assert checks["vtc"].met is True and "0.93x" in checks["vtc"].figure
    assert checks["fcfs"].met is False


def tenants_of(**specs: dict) -> dict[str, dict]:
    """Tenants for :func:`scenario`: a closed loop of one plain shape, with ``specs``' fields."""
    shape = {"prompt_tokens": 100, "output_tokens": 10}
    return {
        name: {"arrival": {"kind": "closed", "concurrency": 1}, "shapes": [shape], **spec}
        for name, spec in specs.items()
    }


def test_bands_share_first_then_weights_within_each_band() -> None:
    """With both bands backlogged the top band is owed 90% (``priority_min_share`` 10% for the
    other), split by weight within each band; tenants with quotas are owed their quota, not a
    share (max-min), so they are left out of the shares."""
    s = scenario(
        tenants=tenants_of(
            gold={"weight": 1, "priority": 1},
            platinum={"weight": 3, "priority": 1},
            basic={"weight": 1},
            standard={"weight": 3},
            capped={"weight": 8, "quotas": {"tokens_per_minute": 1000}},
        )
    )
    owed = owed_weights(s, list(s.tenants))
    assert owed == pytest.approx(
        {"gold": 0.225, "platinum": 0.675, "basic": 0.025, "standard": 0.075}
    )
    # a band with nobody in it is owed nothing: the present bands share everything
    assert owed_weights(s, ["basic", "standard"]) == pytest.approx(
        {"basic": 0.25, "standard": 0.75}
    )
    # a scenario's own priority_min_share reaches the gateway and what the bands are owed
    wider = s.model_copy(update={"gateway": {"admission": {"priority_min_share": 0.2}}})
    owed = owed_weights(wider, ["gold", "basic"])
    assert owed == pytest.approx({"gold": 0.8, "basic": 0.2})
    engines = {"interactive": {"i-0": "http://127.0.0.1:1"}}
    config = gateway_config(wider, parse_mode("fcfs"), "redis://127.0.0.1:1/0", engines)
    assert config["admission"] == {"policy": "fcfs", "priority_min_share": 0.2}
    # one band: the plain weights' proportions
    assert owed_weights(s, ["gold", "platinum", "capped"]) == pytest.approx(
        {"gold": 0.25, "platinum": 0.75}
    )


def test_quotas_and_priority_reach_the_gateway_on_its_clock() -> None:
    s = scenario(
        time_scale=4,
        tenants=tenants_of(
            a={"priority": 2, "quotas": {"tokens_per_minute": 1000, "tokens_per_day": 10,
                                         "models": {"llama-3-8b": {"requests_per_minute": 3}}}},
            b={},
        ),
    )  # fmt: skip
    engines = {"interactive": {"i-0": "http://127.0.0.1:1"}}
    config = gateway_config(s, parse_mode("vtc"), "redis://127.0.0.1:1/0", engines)
    # four simulated minutes pass in one wall minute: four times the quota per wall minute
    assert config["tenants"]["a"]["quotas"] == {
        "tokens_per_minute": 4000,
        "tokens_per_day": 40,
        "models": {"llama-3-8b": {"requests_per_minute": 12}},
    }
    assert config["tenants"]["a"]["priority"] == 2
    assert "quotas" not in config["tenants"]["b"] and "priority" not in config["tenants"]["b"]
    Settings.model_validate(config)  # what fairgate will accept at start-up


def test_a_capped_tenant_is_judged_on_its_quota() -> None:
    s = scenario(
        tenants=tenants_of(a={"quotas": {"tokens_per_minute": 6000, "requests_per_minute": 50}})
    )
    # requests sent inside [0, 60): 30 of them, 150 tokens each, all served
    records = [done("a", t + 1.0, sent=t) for t in range(0, 80, 2)]
    use = quota_use(records, "a", (0.0, 60.0))
    assert use == {"requests_per_minute": 30.0, "tokens_per_minute": 4500.0}
    run = {
        "mode": "vtc",
        "label": "vtc",
        "quota_limits": {"a": {"requests": 50.0, "tokens": 6000.0}},
        "quota_use": {"steady": {"a": use}},
    }
    (check,) = evaluate(["quotas"], [run])
    assert check.met is False and "0.60x quota 50" in check.figure
    run["quota_limits"] = {"a": {"requests": 30.0, "tokens": 4400.0}}
    (check,) = evaluate(["quotas"], [run])
    assert check.met is True  # 1.02x of the tokens quota: within 10%
    assert s.tenants["a"].quota_per_minute("tokens") == 6000


def test_a_tenant_starves_when_a_wait_nears_its_queue_timeout() -> None:
    def stats(tenant: str, ok: int, rejected: int, wait: float) -> dict:
        return {"tenant": tenant, "ok": ok, "rejected": rejected, "queue_p50": wait / 2,
                "queue_max": wait}  # fmt: skip

    run = {
        "mode": "vtc",
        "label": "vtc",
        "queue_timeouts": {"a": 60.0, "b": 60.0},
        "tenants": {"a": stats("a", 10, 0, 12.0), "b": stats("b", 10, 0, 3.0)},
    }
    (check,) = evaluate(["waits"], [run])
    assert check.met is True and "longest wait 12.0 s (a" in check.figure
    run["tenants"]["a"] = stats("a", 10, 0, 31.0)
    assert evaluate(["waits"], [run])[0].met is False
    run["tenants"]["a"] = stats("a", 10, 1, 1.0)  # a 429: starved
    assert evaluate(["waits"], [run])[0].met is False
    run["tenants"]["a"] = stats("a", 0, 0, 0.0)  # never served
    assert evaluate(["waits"], [run])[0].met is False
    run["mode"] = "fcfs"
    assert evaluate(["waits"], [run])[0].met is None  # only VTC promises it


# ----------------------------------------------------------------------- a real, tiny run


def tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        """
name: tiny
title: Tiny
seed: 7
duration_s: 4
drain_s: 4
time_scale: 10
sample_interval_s: 0.5
modes: [direct, vtc-pools]
targets: [shares, isolation]
pools:
  interactive: {max_concurrency: 4}
  side: {max_concurrency: 2}
tenants:
  small:
    weight: 1
    arrival: {kind: closed, concurrency: 3}
    shapes: [{prompt_tokens: 60, output_tokens: 20}]
  big:
    weight: 2
    arrival: {kind: closed, concurrency: 3}
    shapes: [{prompt_tokens: 80, output_tokens: 10, stream: false}]
  side:
    pool: side
    arrival: {kind: bursts, at: [1], size: 3}
    shapes: [{prompt_tokens: 2000, output_tokens: 5, stream: false}]
""",
        encoding="utf-8",
    )
    return path


def test_a_short_run_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    out, benchmarks = tmp_path / "out", tmp_path / "BENCHMARKS.md"
    argv = [str(tiny_file(tmp_path)), "--out", str(out), "--write", str(benchmarks)]
    assert loadtest_main([*argv, "--no-progress"]) == 0

    report = json.loads((out / "tiny.json").read_text())
    runs = {run["label"]: run for run in report["runs"]}
    assert set(runs) == {"direct", "vtc-pools"}
    assert set(runs["direct"]["tenants"]) == {"small", "big", "side"}
    for run in runs.values():
        tenants = run["tenants"]
        assert tenants["side"]["sent"] == 3  # one burst of three
        assert all(t["ok"] > 0 and t["failed"] == 0 for t in tenants.values())
        assert run["tenants"]["small"]["itl_p50"] is not None  # streamed
        assert run["queue_samples"] and "steady" in run["windows"]
    # Through fairgate, the side tenant ran on its own pool and everyone else on the shared one.
    assert runs["vtc-pools"]["pools"]["side"] == {"side": 3}
    assert set(runs["vtc-pools"]["pools"]["small"]) == {"interactive"}
    assert runs["direct"]["pools"] == {}
    assert {c["target"] for c in report["targets"]} >= {"Jain's index >= 0.99"}

    for kind in ("ttft", "service", "queue"):
        png = out / f"tiny-{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = benchmarks.read_text()
    assert "<!-- loadtest-tiny:start -->" in section and "| vtc-pools | side |" in section
    assert "fairgate loadtest tiny" in section
    # each file links the plots relative to where it lies
    assert "](out/tiny-service.png)" in section
    assert "](tiny-service.png)" in (out / "tiny.md").read_text()


def test_a_tenant_is_active_in_a_window_only_with_demand_inside_it() -> None:
    """A burst scheduled exactly at a window's end (the returning tenant at 40 s, the "before"
    window ending at 40 s) may fire a hair early; it is not demand in that window."""
    records = [
        done("steady", 30.0),  # ran inside [5, 40]
        done("early", 4.0),  # ended before the window
        done("burst", 45.0, sent=40.0 - 0.0004),  # the timer fired 0.4 ms early
        done("late", 50.0, sent=39.0),  # sent inside, still running after it
    ]
    tenants = ["steady", "early", "burst", "late"]
    assert active_tenants(records, tenants, (5.0, 40.0)) == ["steady", "late"]
