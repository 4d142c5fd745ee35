"""What each tenant is owed in a window: the weights the share targets compare service with.

Plain weights when every tenant is in one priority band and none has a quota. With several
bands, fairgate shares capacity between the bands first (the top band weighs 1, each lower one
``priority_min_share / (1 - priority_min_share)``: ``admission.domain.band_weights``), then
within a band by weight; a tenant is owed its band's share times its weight's share of the
band. A tenant with a quota of its own is owed its quota, not a share (max-min fairness: it
gets what it may take, the others split the rest by weight), so it is left out of the shares
and judged against its quota instead (the ``quotas`` target).
"""

from __future__ import annotations

from collections.abc import Iterable

from admission.domain import band_of, band_weights
from fairgate.settings import AdmissionConfig
from loadtest.kit.scenario import Scenario

#: fairgate's default, which the kit's gateways run with unless a scenario sets its own.
PRIORITY_MIN_SHARE: float = AdmissionConfig.model_fields["priority_min_share"].default


def priority_min_share(scenario: Scenario) -> float:
    """The share a lower band keeps: the scenario's ``gateway.admission`` or fairgate's."""
    admission = scenario.gateway.get("admission") or {}
    return float(admission.get("priority_min_share", PRIORITY_MIN_SHARE))


def capped(scenario: Scenario, tenant: str) -> bool:
    """Whether ``tenant`` has a quota of its own: it is owed that, not a share."""
    return bool(scenario.tenants[tenant].quotas)


def owed_weights(scenario: Scenario, tenants: Iterable[str]) -> dict[str, float]:
    """The effective weight of each of ``tenants`` without a quota (those with demand in a
    window); their shares of the window's service are to follow these."""
    shared = [t for t in tenants if not capped(scenario, t)]
    specs = {t: scenario.tenants[t] for t in shared}
    every = [spec.priority for spec in scenario.tenants.values()]
    by_band = band_weights(every, priority_min_share(scenario))
    present = {band_of(spec.priority) for spec in specs.values()}
    band_total = sum(by_band[b] for b in present)
    in_band: dict[str, float] = {}
    for spec in specs.values():
        band = band_of(spec.priority)
        in_band[band] = in_band.get(band, 0.0) + spec.weight
    return {
        t: by_band[band_of(s.priority)] / band_total * s.weight / in_band[band_of(s.priority)]
        for t, s in specs.items()
    }
