"""What a pool of simulated engines can serve, in requests per simulated second, in closed form.

The overload scenario offers multiples of capacity, so capacity must be known before the run
and be the same in every mode. With ``B`` requests running at once, a request of ``P`` prompt
and ``O`` output tokens costs its prefill (``b1 x P``), its share of ``O`` decode steps each
serving ``B`` sequences (``base x O / B``) and its decode tokens (``b2 x O``):

    requests/s per engine = 1 / (base x O / B + b1 x P + b2 x O)

``B`` is what the engine can run at once: the smallest of its ``max_num_seqs``, what fits in
its KV cache, and the budget fairgate gives it (``max_concurrency``), so that the gateway's
budget is not the bottleneck of the comparison. Means of the shape mix stand for P and O (the
formula is linear in both). Measured throughput lands a little below (ramp-up, prefill steps
that decode nothing); the overload report shows both.
"""

from __future__ import annotations

from loadtest.kit.arrivals import zipf_shares
from loadtest.kit.scenario import Poisson, Scenario
from loadtest.simulator.profile import load_profile


def mix_means(scenario: Scenario) -> tuple[float, float]:
    """Mean prompt and output tokens of the Poisson tenants' requests, weighted by traffic."""
    poisson = [n for n, t in scenario.tenants.items() if isinstance(t.arrival, Poisson)]
    if scenario.load is not None:
        traffic = dict(
            zip(poisson, zipf_shares(len(poisson), scenario.load.zipf_exponent), strict=True)
        )
    else:
        traffic = {n: scenario.tenants[n].arrival.rate or 0.0 for n in poisson}  # type: ignore[union-attr]
    prompt = output = total = 0.0
    for name, share in traffic.items():
        shapes = scenario.tenants[name].shapes
        shape_total = sum(s.share for s in shapes)
        for shape in shapes:
            weight = share * shape.share / shape_total
            prompt += weight * shape.prompt_tokens.mean
            output += weight * shape.output_tokens.mean
            total += weight
    return prompt / total, output / total


def capacity_rps(scenario: Scenario) -> float:
    """Requests per simulated second the shared pool serves with the Poisson tenants' mix."""
    if scenario.load is not None and scenario.load.capacity_rps != "auto":
        return float(scenario.load.capacity_rps)
    profile = load_profile(scenario.engine.profile)
    pool = scenario.pools[scenario.shared_pool]
    prompt, output = mix_means(scenario)
    kv_tokens = (scenario.engine.num_gpu_blocks or profile.kv_cache.num_blocks) * (
        profile.kv_cache.block_size
    )
    batch = min(
        scenario.engine.max_num_seqs or profile.scheduler.max_num_seqs,
        pool.max_concurrency,
        max(1, int(kv_tokens // (prompt + output))),
    )
    step = profile.step_time
    per_request = (
        step.base_ms / 1e3 * output / batch
        + step.prefill_us_per_token / 1e6 * prompt
        + step.decode_us_per_token / 1e6 * output
    )
    return pool.engines / per_request
