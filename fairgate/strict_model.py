"""The base of every configuration model: settings sections, capacity declarations."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for config sections: unknown fields are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
