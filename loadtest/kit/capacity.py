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

The same formula prices completed requests in engine seconds (:func:`engine_work`): the
throughput target compares the work a run got done, not its tokens.
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


def batch_size(scenario: Scenario, prompt: float, output: float) -> int:
    """How many requests of mean ``prompt`` + ``output`` tokens the shared pool's engine runs."""
    profile = load_profile(scenario.engine.profile)
    pool = scenario.pools[scenario.shared_pool]
    kv_tokens = (scenario.engine.num_gpu_blocks or profile.kv_cache.num_blocks) * (
        profile.kv_cache.block_size
    )
    return min(
        scenario.engine.max_num_seqs or profile.scheduler.max_num_seqs,
        pool.max_concurrency,
        max(1, int(kv_tokens // (prompt + output))),
    )


def request_seconds(scenario: Scenario, batch: int, prompt: float, output: float) -> float:
    """Engine time one request costs in a batch of ``batch``: the formula in the docstring."""
    step = load_profile(scenario.engine.profile).step_time
    return (
        step.base_ms / 1e3 * output / batch
        + step.prefill_us_per_token / 1e6 * prompt
        + step.decode_us_per_token / 1e6 * output
    )


def capacity_rps(scenario: Scenario) -> float:
    """Requests per simulated second the shared pool serves with the Poisson tenants' mix."""
    if scenario.load is not None and scenario.load.capacity_rps != "auto":
        return float(scenario.load.capacity_rps)
    prompt, output = mix_means(scenario)
    batch = batch_size(scenario, prompt, output)
    pool = scenario.pools[scenario.shared_pool]
    return pool.engines / request_seconds(scenario, batch, prompt, output)


def offered_means(scenario: Scenario) -> tuple[float, float]:
    """Mean prompt and output tokens over every tenant's shapes, each tenant counted once."""
    prompts, outputs = [], []
    for tenant in scenario.tenants.values():
        total = sum(s.share for s in tenant.shapes)
        prompts.append(sum(s.share * s.prompt_tokens.mean for s in tenant.shapes) / total)
        outputs.append(sum(s.share * s.output_tokens.mean for s in tenant.shapes) / total)
    return sum(prompts) / len(prompts), sum(outputs) / len(outputs)


def engine_work(scenario: Scenario, requests: list[tuple[int, int]]) -> float:
    """Engine seconds the ``(prompt, output)`` requests cost, priced at the offered mix's batch.

    Why not plain tokens: policies complete different requests. Under VTC the heavy tenant's
    stream is served further than the light one's, so the completed requests are another sample
    of sizes than under FCFS or direct (2% smaller in `weighted-shares`), and tokens/s moves
    with the sample, not with the engine's use. Priced by the step model, a completed request
    counts for the engine time it took, whoever sent it.
    """
    batch = batch_size(scenario, *offered_means(scenario))
    return sum(request_seconds(scenario, batch, p, o) for p, o in requests)
