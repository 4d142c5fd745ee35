"""How a scenario is served: straight to the engines, or through fairgate with a policy.

A mode name is one of

- ``alone``: straight to the shared pool's engines, only the tenants that belong to that pool
  (the baseline a chat tenant would see without its noisy neighbours);
- ``direct``: straight to the shared pool's engines, every tenant (what a shared endpoint
  without a gateway does: the engine's FIFO decides);
- ``fcfs`` / ``vtc``: through fairgate with that admission policy, every tenant on the shared
  pool (what fair admission alone changes);
- ``vtc-pools``: through fairgate with ``vtc`` and every pool of the scenario, requests
  classified into pools by the scenario's ``routing:`` rules (by estimated cost);
- ``alone-<gateway mode>`` (``alone-vtc-pools``): that gateway mode with only the shared pool's
  tenants, the baseline that separates what the neighbours cost from what the gateway costs;

optionally followed by ``-x<N>`` for N gateway replicas sharing one Redis, which the clients
reach round robin (``vtc-x3``), and by ``-w<N>`` for N worker processes per replica
(``fairgate serve --workers N``: one port, the kernel spreading connections; ``vtc-w2``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Policy = Literal["fcfs", "vtc"]

_MODE = re.compile(
    r"^(alone|direct|(?:alone-)?(?:fcfs|vtc|vtc-pools))(?:-x([1-9][0-9]?))?(?:-w([1-9][0-9]?))?$"
)


@dataclass(frozen=True)
class Mode:
    name: str
    kind: Literal["alone", "direct", "gateway"]
    policy: Policy | None = None
    pools: bool = False
    replicas: int = 1
    alone: bool = False  # only the shared pool's tenants (``alone`` and ``alone-<mode>``)
    workers: int = 1  # worker processes of each replica (``fairgate serve --workers``)

    @property
    def through_gateway(self) -> bool:
        return self.kind == "gateway"

    def __str__(self) -> str:
        return self.name


def parse_mode(value: object) -> Mode:
    """A :class:`Mode` from its name; raises ValueError naming the known forms."""
    if isinstance(value, Mode):
        return value
    match = _MODE.match(str(value))
    if match is None:
        raise ValueError(
            f"unknown mode {value!r}: one of alone, direct, fcfs, vtc, vtc-pools, "
            "alone-<fcfs|vtc|vtc-pools>, optionally with -x<replicas> (vtc-x3) and "
            "-w<workers> (vtc-w2)"
        )
    base, replicas, workers = match.group(1), int(match.group(2) or 1), int(match.group(3) or 1)
    if base in ("alone", "direct"):
        if replicas != 1 or workers != 1:
            raise ValueError(f"mode {value!r}: replicas and workers apply to gateway modes only")
        return Mode(base, base, alone=base == "alone")  # type: ignore[arg-type]
    alone, base = base.startswith("alone-"), base.removeprefix("alone-")
    policy: Policy = "fcfs" if base == "fcfs" else "vtc"
    return Mode(
        str(value),
        "gateway",
        policy,
        pools=base == "vtc-pools",
        replicas=replicas,
        alone=alone,
        workers=workers,
    )
