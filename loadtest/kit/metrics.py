"""The figures of a run, from what its clients recorded: latency, service, fairness.

Service is counted as fairgate's VTC counts it: ``input x prompt tokens + output x output
tokens`` of each completed request (from the engine's ``usage``). The client cannot see inside
the engine, so it places a request's service in time the way it saw it arrive: for a stream,
the prompt's share at the first token and the output's spread evenly from the first token to
the last; for a plain response, spread evenly over the time it ran (from when fairgate let it
run, which ``X-Fairgate-Queue-Time`` tells, to its end; without the header, from when it was
sent). Counting a plain response only at its end would make a window's shares depend on where
its edges fall: long requests that start together also end together, and one window holds a
whole wave of one tenant's completions and half of another's.

Fairness figures, for tenants with weights ``w_i`` and service ``S_i`` in a window:

- **share** ``S_i / sum S`` against the target ``w_i / sum w``;
- **Jain's index of weighted service** ``(sum x)^2 / (n sum x^2)`` with ``x_i = S_i / w_i``,
  1 when every tenant's service is exactly proportional to its weight;
- **service gap** ``max_i x_i(t) - min_i x_i(t)`` over time from the window's start: VTC keeps
  it bounded (by about one request's service), FCFS lets it grow with time whenever demand is
  not proportional to weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from loadtest.kit.client import CANCELLED, Record
from loadtest.kit.scenario import ServiceWeights
from loadtest.stats import percentile_or_none


def jain(values: Sequence[float]) -> float | None:
    """Jain's fairness index of ``values``: 1 when all equal, 1/n when one has everything."""
    if not values:
        return None
    squares = sum(v * v for v in values)
    if squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * squares)


def request_service(record: Record, weights: ServiceWeights) -> float:
    """The service a completed request received (0 for a failed or cancelled one)."""
    if not record.ok:
        return 0.0
    return weights.input * record.prompt_tokens + weights.output * record.output_tokens


def served_by(record: Record, t: float, weights: ServiceWeights) -> float:
    """How much of ``record``'s service had been delivered at simulated time ``t``."""
    if not record.ok or record.end is None:
        return 0.0
    if not record.stream:
        start = record.sent + record.queue_s
        span = record.end - start
        done = 1.0 if span <= 0 else min(1.0, max(0.0, (t - start) / span))
        return request_service(record, weights) * done
    if record.first_token is None:
        return request_service(record, weights) if t >= record.end else 0.0
    if t < record.first_token:
        return 0.0
    prompt = weights.input * record.prompt_tokens
    output = weights.output * record.output_tokens
    span = record.end - record.first_token
    done = 1.0 if span <= 0 else min(1.0, (t - record.first_token) / span)
    return prompt + output * done


def cumulative_service(
    records: Iterable[Record], tenants: Iterable[str], times: Sequence[float], w: ServiceWeights
) -> dict[str, list[float]]:
    """Each tenant's service delivered by each of ``times``."""
    by_tenant: dict[str, list[Record]] = {t: [] for t in tenants}
    for record in records:
        if record.tenant in by_tenant and record.ok:
            by_tenant[record.tenant].append(record)
    return {
        tenant: [sum(served_by(r, t, w) for r in mine) for t in times]
        for tenant, mine in by_tenant.items()
    }


@dataclass(frozen=True)
class Fairness:
    """Weighted fairness between tenants over one window."""

    window: tuple[float, float]
    service: dict[str, float]
    shares: dict[str, float]
    targets: dict[str, float]
    worst_share_error: float  # largest |share - target| / target
    jain: float
    gap_max: float
    gap_end: float
    gap_half: float  # at the middle of the window
    gap_slope: float  # least-squares growth of the gap, weighted service per simulated second
    gap_series: list[tuple[float, float]]
    unplaced_max: float  # most weighted service of one tenant in flight, not yet placed in time


def fairness(
    records: Sequence[Record],
    weights_by_tenant: dict[str, float],
    window: tuple[float, float],
    service_weights: ServiceWeights,
    step: float,
) -> Fairness:
    """Shares, Jain's index and the service gap of ``weights_by_tenant``'s tenants in ``window``."""
    start, end = window
    points = max(2, int((end - start) / step) + 1)
    times = [start + (end - start) * i / (points - 1) for i in range(points)]
    tenants = list(weights_by_tenant)
    cumulative = cumulative_service(records, tenants, times, service_weights)
    service = {t: cumulative[t][-1] - cumulative[t][0] for t in tenants}
    total = sum(service.values())
    total_weight = sum(weights_by_tenant.values())
    shares = {t: (service[t] / total if total else 0.0) for t in tenants}
    targets = {t: weights_by_tenant[t] / total_weight for t in tenants}
    normalized = [service[t] / weights_by_tenant[t] for t in tenants]
    gaps = []
    for i, t in enumerate(times):
        x = [(cumulative[n][i] - cumulative[n][0]) / weights_by_tenant[n] for n in tenants]
        gaps.append((t - start, max(x) - min(x)))
    unplaced = max(
        (unplaced_service(records, t, n, service_weights) / weights_by_tenant[n])
        for t in times
        for n in tenants
    )
    return Fairness(
        window=window,
        service=service,
        shares=shares,
        targets=targets,
        worst_share_error=max(abs(shares[t] - targets[t]) / targets[t] for t in tenants),
        jain=jain(normalized) or 0.0,
        gap_max=max(g for _, g in gaps),
        gap_end=gaps[-1][1],
        gap_half=gaps[len(gaps) // 2][1],
        gap_slope=slope(gaps),
        gap_series=gaps,
        unplaced_max=unplaced,
    )


def unplaced_service(records: Iterable[Record], t: float, tenant: str, w: ServiceWeights) -> float:
    """Service of ``tenant``'s requests running at ``t`` (let run by fairgate, not finished)
    that the client has not placed yet.

    Fair order is decided on what fairgate charged, which the client cannot see; what it
    places in time differs from that by at most this much per tenant, at each end of a window.
    """
    return sum(
        request_service(r, w) - served_by(r, t, w)
        for r in records
        if r.tenant == tenant and r.ok and r.end is not None and r.sent + r.queue_s <= t < r.end
    )


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of ``points`` (0 for fewer than two distinct x)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


@dataclass(frozen=True)
class TenantStats:
    """One tenant's requests in one run."""

    tenant: str
    sent: int
    ok: int
    rejected: int  # 429: queue full or queue timeout
    failed: int  # any other error
    cancelled: int  # still running when the run ended
    ttft_p50: float | None
    ttft_p99: float | None
    itl_p50: float | None
    itl_p99: float | None
    e2e_p50: float | None
    e2e_p99: float | None
    reject_wait_p50: float | None  # how long a 429 took to come
    reject_wait_max: float | None
    queue_p50: float | None  # waited in fairgate's queue, served requests (simulated s)
    queue_max: float | None
    completed_rps: float  # completions per simulated second during the arrivals
    output_tps: float  # output tokens per simulated second during the arrivals

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def tenant_stats(tenant: str, records: Sequence[Record], duration: float) -> TenantStats:
    """Counts and latency percentiles (simulated seconds) of ``tenant``'s records."""
    mine = [r for r in records if r.tenant == tenant]
    ok = [r for r in mine if r.ok]
    rejected = [r for r in mine if r.status == 429]
    cancelled = [r for r in mine if r.status == CANCELLED]
    in_time = [r for r in ok if r.end is not None and r.end <= duration]
    itl = [gap for r in ok for gap in r.itl]
    waits = [r.e2e for r in rejected if r.e2e is not None]
    return TenantStats(
        tenant=tenant,
        sent=len(mine),
        ok=len(ok),
        rejected=len(rejected),
        failed=len(mine) - len(ok) - len(rejected) - len(cancelled),
        cancelled=len(cancelled),
        ttft_p50=percentile_or_none([r.ttft for r in ok if r.ttft is not None], 50),
        ttft_p99=percentile_or_none([r.ttft for r in ok if r.ttft is not None], 99),
        itl_p50=percentile_or_none(itl, 50),
        itl_p99=percentile_or_none(itl, 99),
        e2e_p50=percentile_or_none([r.e2e for r in ok if r.e2e is not None], 50),
        e2e_p99=percentile_or_none([r.e2e for r in ok if r.e2e is not None], 99),
        reject_wait_p50=percentile_or_none(waits, 50),
        reject_wait_max=max(waits) if waits else None,
        queue_p50=percentile_or_none([r.queue_s for r in ok], 50),
        queue_max=max((r.queue_s for r in ok), default=None),
        completed_rps=len(in_time) / duration,
        output_tps=sum(r.output_tokens for r in in_time) / duration,
    )
