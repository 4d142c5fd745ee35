"""A load-test scenario: tenants, their arrivals and request shapes, and how to run them.

Scenarios are YAML files (``config/loadtest/*.yaml``) validated by :class:`Scenario`; like
fairgate's own configuration, unknown fields are errors, so a typo never silently changes a
workload. A scenario may carry a ``short:`` block, merged over the rest by ``--short`` (what
``make bench`` runs), so that the short version is declared next to the full one.

Times are in *simulated seconds*. The engine simulator runs ``time_scale`` times faster than
the wall clock and reports everything on its own clock; the kit runs its clients on the same
scale (an arrival at simulated second ``t`` is sent ``t / time_scale`` wall seconds after the
start, and every latency the client measures is multiplied back by ``time_scale``). Figures
made of token counts and ratios (service shares, Jain's index, throughput in requests per
simulated second) do not depend on the scale. Client-measured latencies do in one respect:
whatever the gateway and this machine add in wall time (a few milliseconds per request) is
magnified by ``time_scale``. So the scenarios whose point is a latency (TTFT, inter-token
latency) run at ``time_scale: 1``, and those whose point is service and throughput run faster.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from fairgate.strict_model import StrictModel
from loadtest.kit.modes import Mode, parse_mode
from loadtest.simulator.profile import DEFAULT_PROFILE

REPO = Path(__file__).resolve().parents[2]
SCENARIO_DIR = REPO / "config" / "loadtest"


def _bare_number(value: object) -> object:
    """``prompt_tokens: 200`` is short for ``{dist: fixed, value: 200}``."""
    return {"dist": "fixed", "value": value} if isinstance(value, int) else value


class TokenDist(StrictModel):
    """A distribution of token counts: fixed, uniform in [min, max], or log-normal.

    Log-normal (by its median and sigma) is what chat traffic looks like; ``min``/``max`` clip it.
    """

    dist: Literal["fixed", "uniform", "lognormal"] = "fixed"
    value: PositiveInt | None = None
    median: PositiveFloat | None = None
    sigma: NonNegativeFloat = 0.5
    min: PositiveInt = 1
    max: PositiveInt = 131_072

    @model_validator(mode="after")
    def _complete(self) -> TokenDist:
        if self.dist == "fixed" and self.value is None:
            raise ValueError("dist fixed needs `value`")
        if self.dist == "lognormal" and self.median is None:
            raise ValueError("dist lognormal needs `median`")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    @property
    def mean(self) -> float:
        """The expected value (before clipping, for log-normal): what capacity math uses."""
        if self.dist == "fixed":
            return float(self.value or 0)
        if self.dist == "uniform":
            return (self.min + self.max) / 2
        assert self.median is not None
        return min(self.max, max(self.min, self.median * math.exp(self.sigma**2 / 2)))


Tokens = Annotated[TokenDist, BeforeValidator(_bare_number)]


class Shape(StrictModel):
    """One kind of request a tenant sends; ``share`` weighs it among the tenant's shapes."""

    share: PositiveFloat = 1.0
    prompt_tokens: Tokens
    output_tokens: Tokens
    stream: bool = True
    reasoning: bool = Field(False, description="Ask for reasoning (reasoning_effort: high).")
    max_tokens: PositiveInt | Literal["none"] | None = Field(
        None,
        description="What the request declares as `max_tokens`. Default: the output length "
        "drawn, sent with `ignore_eos` so the engine produces exactly that. A number, or `none` "
        "(no `max_tokens`: the context is the limit), declares something else, as real clients "
        "do; the engine then stops after the output length drawn (the simulator's "
        "`sim_output_tokens`), or at the declared limit if that comes first.",
    )


class Poisson(StrictModel):
    """Open-loop arrivals at ``rate`` requests per simulated second (or set by ``load:``)."""

    kind: Literal["poisson"]
    rate: PositiveFloat | None = None


class Closed(StrictModel):
    """``concurrency`` clients that each send, wait for the answer, think, and send again.

    Closed loops keep a tenant backlogged at the gateway without flooding it: what the weighted
    share scenarios need.
    """

    kind: Literal["closed"]
    concurrency: PositiveInt
    think_s: NonNegativeFloat = 0.0


class Bursts(StrictModel):
    """``size`` requests at each time in ``at``, spread evenly over ``spread_s``."""

    kind: Literal["bursts"]
    at: list[NonNegativeFloat] = Field(min_length=1)
    size: PositiveInt
    spread_s: NonNegativeFloat = 0.0


Arrival = Annotated[Poisson | Closed | Bursts, Field(discriminator="kind")]


class TenantSpec(StrictModel):
    """A tenant of the scenario: its arrivals, shapes, and its fairgate configuration."""

    weight: PositiveFloat = 1.0
    api_key: str | None = Field(None, description="Default: lt-<tenant name>.")
    pool: str | None = Field(
        None,
        description="The pool its requests belong to: `alone` modes and the chat-latency "
        "figures keep the shared pool's tenants; without `routing:`, `-pools` modes route the "
        "tenant there. Default the first pool (shared).",
    )
    arrival: Arrival
    shapes: list[Shape] = Field(min_length=1)
    start_s: NonNegativeFloat = 0.0
    stop_s: PositiveFloat | None = Field(None, description="Default: the scenario's duration.")
    max_concurrency: PositiveInt = 256
    max_inflight_tokens: PositiveInt = 4_000_000
    max_queued: PositiveInt = 1024
    queue_timeout_s: PositiveFloat = Field(60.0, description="Simulated seconds.")
    priority: int = Field(0, description="fairgate's priority band (higher bands go first).")
    quotas: dict[str, Any] | None = Field(
        None,
        description="fairgate's `quotas:` (validated by fairgate at start-up), per simulated "
        "minute or day: the kit scales them to the wall clock the gateway counts in.",
    )

    def quota_per_minute(self, kind: Literal["requests", "tokens"]) -> float | None:
        """The tenant's own ``<kind>_per_minute`` quota (simulated minutes), if it has one."""
        value = (self.quotas or {}).get(f"{kind}_per_minute")
        return float(value) if value is not None else None


class EngineSpec(StrictModel):
    """The simulated engine every backend runs: a profile and its scheduler overrides."""

    #: a bundled profile's name or a profile YAML file (loadtest/simulator/profile.py)
    profile: str = DEFAULT_PROFILE
    max_num_seqs: PositiveInt | None = None
    max_num_batched_tokens: PositiveInt | None = None
    num_gpu_blocks: PositiveInt | None = None


class PoolSpec(StrictModel):
    """A pool of identical engines and the budget fairgate gives each of them."""

    engines: PositiveInt = 1
    max_concurrency: PositiveInt = 64
    max_inflight_tokens: PositiveInt = 400_000


class LoadSweep(StrictModel):
    """Run the scenario at several offered loads, as multiples of the pool's capacity.

    Poisson tenants get ``factor x capacity x`` their Zipf share (rank = order in the file):
    a skewed mix where the first tenant offers the most.
    """

    factors: list[PositiveFloat] = Field(min_length=1)
    capacity_rps: PositiveFloat | Literal["auto"] = "auto"
    zipf_exponent: NonNegativeFloat = 1.0


class ServiceWeights(StrictModel):
    """Service per token, as fairgate's VTC counts it (``estimation.input/output_weight``)."""

    input: PositiveFloat = 1.0
    output: PositiveFloat = 2.0


class Scenario(StrictModel):
    """A workload and the modes to run it in."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    description: str = ""
    seed: int = 1
    model: str = "llama-3-8b"
    duration_s: PositiveFloat = Field(description="Arrivals stop after this (simulated s).")
    warmup_s: NonNegativeFloat = 0.0
    drain_s: NonNegativeFloat = Field(30.0, description="Wait this long for in-flight requests.")
    time_scale: PositiveFloat = 1.0
    sample_interval_s: PositiveFloat = Field(0.5, description="Queue depth sampling (sim s).")
    modes: list[Annotated[Mode, BeforeValidator(parse_mode)]] = Field(min_length=1)
    engine: EngineSpec = EngineSpec()
    pools: dict[str, PoolSpec] = Field(default_factory=lambda: {"interactive": PoolSpec()})
    tenants: dict[str, TenantSpec] = Field(min_length=1)
    windows: dict[str, tuple[NonNegativeFloat, PositiveFloat]] = Field(
        default_factory=dict,
        description="Named measurement windows (sim s); default one from warmup to duration.",
    )
    routing: list[dict[str, Any]] = Field(
        default_factory=list,
        description="fairgate's routing.rules in `-pools` modes (validated by fairgate at "
        "start-up); default one rule per tenant with a `pool:`.",
    )
    load: LoadSweep | None = None
    service: ServiceWeights = ServiceWeights()
    targets: list[
        Literal["shares", "isolation", "overload", "replicas", "throughput", "quotas", "waits"]
    ] = Field(default_factory=list, description="Which targets this scenario measures.")
    gateway: dict[str, Any] = Field(
        default_factory=dict,
        description="fairgate settings merged over the configuration the kit generates "
        "(`admission: {priority_min_share: 0.2}`), validated by fairgate at start-up.",
    )
    short: dict[str, Any] | None = Field(None, description="Overrides applied by --short.")
    base: str | None = Field(None, description="A scenario file this one extends.")

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        for name, tenant in self.tenants.items():
            if tenant.pool is not None and tenant.pool not in self.pools:
                raise ValueError(f"tenants.{name}.pool: unknown pool {tenant.pool!r}")
        for index, rule in enumerate(self.routing):
            if rule.get("pool") not in self.pools:
                raise ValueError(f"routing.{index}.pool: unknown pool {rule.get('pool')!r}")
        for name, tenant in self.tenants.items():
            if (
                isinstance(tenant.arrival, Poisson)
                and tenant.arrival.rate is None
                and not self.load
            ):
                raise ValueError(f"tenants.{name}.arrival.rate is required without `load:`")
        return self

    @property
    def shared_pool(self) -> str:
        """The first pool: where everyone runs unless a mode isolates pools."""
        return next(iter(self.pools))

    def key(self, tenant: str) -> str:
        return self.tenants[tenant].api_key or f"lt-{tenant}"

    def pool_of(self, tenant: str) -> str:
        return self.tenants[tenant].pool or self.shared_pool

    def stop_of(self, tenant: str) -> float:
        stop = self.tenants[tenant].stop_s
        return min(stop, self.duration_s) if stop is not None else self.duration_s

    def measurement_windows(self) -> dict[str, tuple[float, float]]:
        return dict(self.windows) or {"steady": (self.warmup_s, self.duration_s)}


class ScenarioError(Exception):
    """A scenario file cannot be used; the message names the file and each bad field."""


def load_scenario(path: str | Path, short: bool = False) -> Scenario:
    """Read and validate a scenario file; with ``short``, merge its ``short:`` block first."""
    source = Path(path)
    source = _locate(path)
    data = _read(source)
    if isinstance(data.get("base"), str):  # extends another file: its fields, then ours
        data = deep_merge(_read(_locate(data["base"], source.parent)), data)
    if short and isinstance(data.get("short"), dict):
        data = deep_merge(data, data["short"])
    try:
        return Scenario(**data)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False)
        ]
        raise ScenarioError(f"{source}: invalid scenario\n" + "\n".join(lines)) from None


def _locate(path: str | Path, near: Path = SCENARIO_DIR) -> Path:
    """A file path, or the name of a shipped scenario (``weighted-shares``)."""
    source = Path(path)
    if source.exists():
        return source
    for candidate in (near / source, *SCENARIO_DIR.glob(f"*{source.stem}.yaml")):
        if candidate.exists():
            return candidate
    return source


def _read(source: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the top level must be a mapping")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s values; mappings are merged key by key, others replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def shipped_scenarios() -> list[Path]:
    """The scenarios of config/loadtest, in the order of their file names."""
    return sorted(SCENARIO_DIR.glob("*.yaml"))
