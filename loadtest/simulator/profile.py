"""Engine profiles: what one simulated engine costs per step and how much KV it holds.

A profile is a YAML file: one of those bundled in ``loadtest/simulator/profiles/`` (named
without ``.yaml``, e.g. ``h100-llama3-8b``, found with ``importlib.resources`` wherever fairgate
is installed), or any other file by its path. The step-time model is the linear one fitted by
the BLIS inference simulator for vLLM on real GPUs::

    step = base + prefill_per_token x (prefill tokens in the step)
                + decode_per_token  x (decode tokens in the step)
                + context_per_token x (resident context of the scheduled sequences)

Add a profile for other hardware by writing another file; nothing in code is H100-specific.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepTime(_Section):
    """Coefficients of the step-time model, in milliseconds and microseconds."""

    base_ms: NonNegativeFloat
    prefill_us_per_token: NonNegativeFloat
    decode_us_per_token: NonNegativeFloat
    context_us_per_token: NonNegativeFloat = 0.0

    def seconds(self, prefill_tokens: int, decode_tokens: int, context_tokens: int) -> float:
        """Duration of one engine step."""
        return (
            self.base_ms * 1e-3
            + (
                self.prefill_us_per_token * prefill_tokens
                + self.decode_us_per_token * decode_tokens
                + self.context_us_per_token * context_tokens
            )
            * 1e-6
        )


class KVCache(_Section):
    """Paged KV cache: capacity in blocks of ``block_size`` tokens."""

    num_blocks: PositiveInt
    block_size: PositiveInt = 16

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


class SchedulerLimits(_Section):
    """vLLM's scheduler knobs, under their CLI names."""

    max_num_batched_tokens: PositiveInt = 8192
    max_num_seqs: PositiveInt = 256
    long_prefill_token_threshold: NonNegativeInt = 0


class OutputLengths(_Section):
    """Output lengths when ``ignore_eos`` is not set: log-normal, capped by ``max_tokens``."""

    median: PositiveFloat = 200.0
    sigma: NonNegativeFloat = 1.0


class EngineProfile(_Section):
    """Everything that makes one simulated engine behave like one real GPU deployment."""

    name: str
    model: str = Field(description="Default served model id.")
    max_model_len: PositiveInt
    step_time: StepTime
    kv_cache: KVCache
    scheduler: SchedulerLimits = SchedulerLimits()
    output_lengths: OutputLengths = OutputLengths()
    sources: list[str] = Field(default_factory=list, description="Where the numbers come from.")

    @model_validator(mode="after")
    def _context_fits_in_kv(self) -> EngineProfile:
        # vLLM refuses to start when one maximal request cannot fit in the KV cache.
        if self.max_model_len > self.kv_cache.capacity_tokens:
            raise ValueError(
                f"max_model_len ({self.max_model_len}) exceeds the KV cache capacity "
                f"({self.kv_cache.capacity_tokens} tokens); lower max_model_len or add blocks"
            )
        return self

    def with_overrides(self, **changes: object) -> EngineProfile:
        """A copy with dotted-path overrides applied (``scheduler.max_num_seqs=8``), validated."""
        data = self.model_dump()
        for dotted, value in changes.items():
            if value is None:
                continue
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                node = node[part]
            node[leaf] = value
        return EngineProfile.model_validate(data)


#: The profile everything uses unless told otherwise: an H100 running Llama-3-8B in bf16.
DEFAULT_PROFILE = "h100-llama3-8b"

_BUNDLED = resources.files("loadtest.simulator").joinpath("profiles")


def bundled_profiles() -> list[str]:
    """The names of the profiles that ship with fairgate."""
    return sorted(
        f.name.removesuffix(".yaml") for f in _BUNDLED.iterdir() if f.name.endswith(".yaml")
    )


def profile_path(name_or_path: str | Path) -> Path:
    """The file of a profile: a bundled profile's name, or a path to a YAML file.

    A path that exists wins over a bundled name, so a local file can shadow one.
    """
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    bundled = _BUNDLED.joinpath(f"{name_or_path}.yaml")
    if not bundled.is_file():
        known = ", ".join(bundled_profiles())
        raise FileNotFoundError(
            f"no profile file or bundled profile {str(name_or_path)!r} (bundled: {known})"
        )
    return Path(str(bundled))  # package data installed as files (a wheel, or the checkout)


def load_profile(name_or_path: str | Path) -> EngineProfile:
    """Read and validate a profile: a bundled profile's name or a file (:func:`profile_path`)."""
    with open(profile_path(name_or_path), encoding="utf-8") as handle:
        return EngineProfile.model_validate(yaml.safe_load(handle))
