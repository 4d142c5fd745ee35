"""The targets of issue 6, checked on a scenario's runs: one row per figure, met or not.

- ``shares``: under VTC, service within 5% of the weights in every window, Jain's index of
  weighted service at least 0.99, and a service gap that stays bounded while FCFS's grows: at
  the end of the window at most twice the largest single request's service plus twice the most
  weighted service one tenant had running and not yet placed in time by the client
  (docs/fairness.md: the bound for fairgate's charging rules).
- ``isolation``: the shared pool's tenants' p99 TTFT (and p99 inter-token latency) against the
  same tenants running alone; issue 7's target is at most 1.25x with isolated pools, with total
  tokens/s at least 95% of direct's.
- ``overload``: at each load factor, no tenant starves (each completes some requests, and the
  lightest ones nearly all), 429s come early, throughput matches direct.
- ``replicas``: N replicas (``-x<N>``), or N worker processes (``-w<N>``), give the same
  fairness figures as one process.
- ``throughput``: every run through fairgate does at least 95% of direct's engine work
  (completed requests priced in engine seconds; tokens/s shown beside it).
- ``quotas``: a tenant with a quota of its own gets that quota (requests and tokens per minute
  served within 10% of it) while the others split the rest by weight (``shares`` leaves such a
  tenant out: ``loadtest/kit/entitlement.py``).
- ``waits``: nobody starves in the queue: under VTC every tenant is served, none gets a 429,
  and no request waited half its tenant's queue timeout; each tenant's median and longest
  wait are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.kit.modes import parse_mode

SHARE_TOLERANCE = 0.05
JAIN_MIN = 0.99
ISOLATION_MAX = 1.25
THROUGHPUT_MIN = 0.95  # fraction of direct's throughput
EARLY_MIN = 0.9  # fraction of 429s that came before half the queue timeout
LIGHTEST_SERVED_MIN = 0.9  # under overload, the lightest tenant's requests served
QUOTA_TOLERANCE = 0.1  # a capped tenant's use within this of its quota
WAIT_MAX = 0.5  # the longest wait, as a fraction of the tenant's queue timeout

#: The labels of the targets with a threshold, written from the constants they check.
SHARES_LABEL = f"shares within {SHARE_TOLERANCE:.0%} of weights"
JAIN_LABEL = f"Jain's index >= {JAIN_MIN:g}"
ISOLATION_LABEL = f"chat latency within {ISOLATION_MAX:g}x of alone"
THROUGHPUT_LABEL = f"throughput >= {THROUGHPUT_MIN:.0%} of direct"
COMPLETIONS_LABEL = f"completed requests/s >= {THROUGHPUT_MIN:.0%} of direct's"
STARVING_LABEL = f"no tenant starves (lightest served >= {LIGHTEST_SERVED_MIN:.0%})"
EARLY_LABEL = f"429s are early (>= {EARLY_MIN:.0%} before half the queue timeout)"
QUOTA_LABEL = f"a capped tenant gets its quota (within {QUOTA_TOLERANCE:.0%})"
WAITS_LABEL = f"nobody starves (served, no 429, waits < {WAIT_MAX:.0%} of the queue timeout)"


@dataclass(frozen=True)
class Check:
    target: str
    run: str
    figure: str
    met: bool | None  # None: informative, no threshold

    @property
    def verdict(self) -> str:
        return {True: "met", False: "missed", None: "-"}[self.met]


def evaluate(targets: Sequence[str], runs: list[dict[str, Any]]) -> list[Check]:
    checks: list[Check] = []
    for target in targets:
        checks += _EVALUATORS[target](runs)
    return checks


def _policy(run: dict[str, Any]) -> str | None:
    if run["mode"] == "target":
        return None
    return parse_mode(run["mode"]).policy


def _shares(runs: list[dict[str, Any]]) -> list[Check]:
    checks = []
    fcfs_slopes = {
        name: w["gap_slope"]
        for run in runs
        if _policy(run) == "fcfs"
        for name, w in run["windows"].items()
    }
    for run in runs:
        for name, w in run["windows"].items():
            label = f"{run['label']}, window {name}"
            shares = ", ".join(
                f"{t} {w['shares'][t]:.3f} ({w['targets'][t]:.3f})" for t in w["shares"]
            )
            vtc = _policy(run) == "vtc"
            error = w["worst_share_error"]
            checks.append(
                Check(SHARES_LABEL, label,
                      f"{shares}; worst {error:.1%}", error <= SHARE_TOLERANCE if vtc else None)
            )  # fmt: skip
            checks.append(
                Check(JAIN_LABEL, label, f"{w['jain']:.4f}",
                      w["jain"] >= JAIN_MIN if vtc else None)
            )  # fmt: skip
            # VTC's bound (two requests) and what the client cannot place yet, at both ends
            bound = 2 * run["max_request_service"] + 2 * w["unplaced_max"]
            gap = (
                f"half {w['gap_half']:,.0f}, end {w['gap_end']:,.0f}, "
                f"growth {w['gap_slope']:,.0f}/s (bound {bound:,.0f})"
            )
            met = None
            if vtc:
                met = w["gap_end"] <= bound and w["gap_slope"] < fcfs_slopes.get(name, float("inf"))
            checks.append(Check("service gap bounded", label, gap, met))
    return checks


def _isolation(runs: list[dict[str, Any]]) -> list[Check]:
    """Chat latency against the same tenants alone, and total tokens/s against direct.

    Gateway modes are compared with their ``alone-`` twin when the scenario runs it (the same
    gateway and pools, only the shared pool's tenants): that ratio is what the neighbours cost,
    and the verdict. The ratio to ``alone`` (straight to the engine) is shown next to it; an
    ``alone-`` run's own row shows what the gateway costs with no neighbour at all.
    """
    by_mode = {r["mode"]: r for r in runs}
    direct_alone = by_mode.get("alone")
    checks = []
    for run in runs:
        pool = run["shared_pool"]
        if run is direct_alone or pool["ttft_p99"] is None and pool["itl_p99"] is None:
            continue
        mode = None if run["mode"] == "target" else parse_mode(run["mode"])
        twin = by_mode.get(f"alone-{run['mode']}") if mode and not mode.alone else None
        judged = mode is not None and not mode.alone and mode.pools
        parts, met = [], None
        for key, name in (("ttft_p99", "p99 TTFT"), ("itl_p99", "p99 ITL")):
            if pool[key] is None:
                continue
            figure = f"{name} {pool[key] * 1e3:,.0f} ms"
            ratios = []
            for base, label in ((twin, "alone via fairgate"), (direct_alone, "alone")):
                if base is not None and base["shared_pool"][key]:
                    ratios.append((pool[key] / base["shared_pool"][key], label))
            if ratios:
                figure += " = " + ", ".join(f"{r:.2f}x {label}" for r, label in ratios)
                if judged:
                    ok = ratios[0][0] <= ISOLATION_MAX
                    met = ok if met is None else met and ok
            parts.append(figure)
        checks.append(Check(ISOLATION_LABEL, run["label"], "; ".join(parts), met))
    direct = by_mode.get("direct")
    for run in runs:
        if direct is not None and run is not direct and run["mode"].startswith("vtc-pools"):
            checks += _work_vs_direct(run, direct)
    return checks


def _throughput(runs: list[dict[str, Any]]) -> list[Check]:
    """Every gateway run's engine work against direct's: fair order must not cost work."""
    direct = next((r for r in runs if r["mode"] == "direct"), None)
    checks: list[Check] = []
    for run in runs:
        if direct is not None and run["mode"] not in ("direct", "alone", "target"):
            checks += _work_vs_direct(run, direct)
    return checks


def _work_vs_direct(run: dict[str, Any], direct: dict[str, Any]) -> list[Check]:
    """Engine work done against direct's, with the plain tokens/s beside it.

    The verdict is on work (completed requests priced in engine seconds by the simulator's
    step model, ``capacity.engine_work``): the policies complete different samples of request
    sizes, which moves tokens/s by a few percent without any engine time lost.
    """
    if not direct.get("tokens_per_s"):
        return []
    tokens = run["tokens_per_s"] / direct["tokens_per_s"]
    work = run["engine_work_per_s"] / direct["engine_work_per_s"]
    figure = (
        f"engine work {work:.2f}x direct; {run['tokens_per_s']:,.0f} tokens/s = {tokens:.2f}x "
        f"direct ({direct['tokens_per_s']:,.0f})"
    )
    return [Check(THROUGHPUT_LABEL, run["label"], figure, work >= THROUGHPUT_MIN)]


def _overload(runs: list[dict[str, Any]]) -> list[Check]:
    checks = []
    direct = {r["factor"]: r for r in runs if r["mode"] == "direct"}
    for run in runs:
        tenants = run["tenants"].values()
        served = {t["tenant"]: t["ok"] / t["sent"] for t in tenants if t["sent"]}
        lightest = list(run["tenants"])[-1]
        gateway = run["mode"] not in ("direct", "alone", "target")
        checks.append(
            Check(
                STARVING_LABEL,
                run["label"],
                "served " + ", ".join(f"{t} {v:.0%}" for t, v in served.items()),
                (min(served.values()) > 0 and served[lightest] >= LIGHTEST_SERVED_MIN)
                if gateway
                else None,
            )
        )
        rejections = run["rejections"]
        if rejections["total"]:
            early = rejections["early"] / rejections["total"]
            checks.append(
                Check(
                    EARLY_LABEL,
                    run["label"],
                    f"{rejections['total']} 429s, {early:.0%} before half the queue timeout",
                    early >= EARLY_MIN,
                )
            )
        base = direct.get(run["factor"])
        if base is not None and run is not base and base["completed_rps"]:
            ratio = run["completed_rps"] / base["completed_rps"]
            checks.append(
                Check(
                    COMPLETIONS_LABEL,
                    run["label"],
                    f"{run['completed_rps']:.2f} req/s = {ratio:.2f}x direct",
                    ratio >= THROUGHPUT_MIN,
                )
            )
    return checks


def _replicas(runs: list[dict[str, Any]]) -> list[Check]:
    single = next((r for r in runs if r["mode"] == "vtc"), None)
    checks = []
    for run in runs:
        if single is None or run is single or not run["mode"].startswith(("vtc-x", "vtc-w")):
            continue
        for name, w in run["windows"].items():
            one = single["windows"].get(name)
            if one is None:
                continue
            drift = max(abs(w["shares"][t] - one["shares"][t]) for t in w["shares"])
            figure = (
                f"Jain {w['jain']:.4f} vs {one['jain']:.4f}; worst share error "
                f"{w['worst_share_error']:.1%} vs {one['worst_share_error']:.1%}; "
                f"largest share difference {drift:.3f}"
            )
            met = w["worst_share_error"] <= SHARE_TOLERANCE and w["jain"] >= JAIN_MIN
            checks.append(
                Check("same fairness as one replica", f"{run['label']}, {name}", figure, met)
            )
    return checks


def _quotas(runs: list[dict[str, Any]]) -> list[Check]:
    """Each capped tenant's use per simulated minute against its quotas, in every window.

    Judged through fairgate only (direct enforces nothing); the quotas are read back from the
    scenario the runs carry (``quota_limits``).
    """
    checks = []
    for run in runs:
        gateway = run["mode"] not in ("direct", "alone")
        for name, uses in run.get("quota_use", {}).items():
            for tenant, use in uses.items():
                parts, met = [], True
                for kind, limit in run["quota_limits"][tenant].items():
                    used = use[f"{kind}_per_minute"]
                    ratio = used / limit
                    parts.append(f"{kind} {used:,.0f}/min = {ratio:.2f}x quota {limit:,.0f}")
                    met = met and abs(ratio - 1) <= QUOTA_TOLERANCE
                label = f"{run['label']}, window {name}"
                checks.append(
                    Check(QUOTA_LABEL, label, f"{tenant}: " + "; ".join(parts),
                          met if gateway else None)
                )  # fmt: skip
    return checks


def _waits(runs: list[dict[str, Any]]) -> list[Check]:
    """Under VTC, every tenant served with no 429 and no wait near its queue timeout."""
    checks = []
    for run in runs:
        tenants = run["tenants"].values()
        worst = max(tenants, key=lambda t: t["queue_max"] or 0.0)
        starved = [
            t["tenant"]
            for t in tenants
            if not t["ok"]
            or t["rejected"]
            or (t["queue_max"] or 0.0) >= WAIT_MAX * run["queue_timeouts"][t["tenant"]]
        ]
        figure = (
            f"longest wait {worst['queue_max'] or 0:,.1f} s ({worst['tenant']}, median "
            f"{worst['queue_p50'] or 0:,.1f} s); "
            + ("starved: " + ", ".join(starved) if starved else "every tenant served")
        )
        met = not starved if _policy(run) == "vtc" else None
        checks.append(Check(WAITS_LABEL, run["label"], figure, met))
    return checks


_EVALUATORS = {
    "shares": _shares,
    "isolation": _isolation,
    "overload": _overload,
    "replicas": _replicas,
    "throughput": _throughput,
    "quotas": _quotas,
    "waits": _waits,
}
