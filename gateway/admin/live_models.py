"""The bodies of ``/admin/v1/state`` and of the drain actions: the live state as the admin API
shows it (what :mod:`admission.live` reads, with the directory's tenants and this replica's
view of the backends)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class Load(BaseModel):
    requests: int = Field(description="Requests.")
    tokens: int = Field(description="Estimated tokens: prompt and expected output.")


class TenantPool(BaseModel):
    in_flight: Load = Field(description="Running on this pool's backends.")


class TenantState(BaseModel):
    id: str
    weight: float
    priority: int
    queued: int = Field(description="Requests waiting in admission, on every replica.")
    in_flight: Load = Field(description="Requests granted and not yet finished.")
    virtual_counter: float = Field(
        description="Its VTC counter: service received / weight, lifts included (the lowest "
        "backlogged counter of a band goes next)."
    )
    recent_service: float = Field(description="Service charged in the window (service units).")
    recent_share: float | None = Field(
        description="Its part of all service charged in the window (null: none was)."
    )
    weight_share: float | None = Field(
        description="Its fair share by weight and priority among the tenants with requests "
        "queued or in flight now (null: it has none)."
    )
    pools: dict[str, TenantPool] = Field(description="Its work in flight, by pool.")


class Engine(BaseModel):
    """The engine's own load, as its last scrape by this replica found it (null: unknown)."""

    running: int | None = Field(description="Requests in the engine's batch.")
    waiting: int | None = Field(description="Requests queued inside the engine.")
    kv_cache_usage: float | None = Field(description="Share of its KV cache in use.")
    kv_capacity_tokens: int | None = Field(description="Tokens its KV cache holds.")
    kv_tokens_in_use: int | None = Field(description="KV tokens in use, as dispatch sees it.")
    busy_until: datetime | None = Field(
        description="It queues requests inside it: no new work until then."
    )
    scraped_at: datetime | None


class BackendState(BaseModel):
    object: Literal["backend"] = "backend"
    name: str
    pool: str
    engine_kind: str = Field(description="vllm, sglang, llamacpp, tgi, ollama or openai.")
    healthy: bool = Field(description="Not down now (on every replica's dispatch).")
    down_until: datetime | None = Field(
        description="Skipped until then: a failed probe or connection, or an ejection."
    )
    ejected_until: datetime | None = Field(
        description="Ejected by this replica after failed requests in a row, until then."
    )
    drained: bool = Field(description="An operator drained it: no new work, running finishes.")
    in_flight: Load
    budget: Load = Field(description="The most it may hold (engine-reported KV where known).")
    engine: Engine


class PoolState(BaseModel):
    name: str
    queued: int = Field(description="Requests waiting for this pool.")
    in_flight: Load = Field(description="Running on its backends (work lent to others too).")
    backends: list[str]


class LiveState(BaseModel):
    """Admission's live state across every replica, read in one consistent moment."""

    object: Literal["state"] = "state"
    version: int = Field(description="The tenant directory's version.")
    replica: str = Field(description="The id of the replica that answered.")
    at: datetime = Field(description="When it was read (Redis' clock).")
    window_s: float = Field(
        description="The span of recent service and shares, up to a minute (0: no earlier "
        "sample yet)."
    )
    tenants: list[TenantState]
    backends: list[BackendState]
    pools: list[PoolState]
