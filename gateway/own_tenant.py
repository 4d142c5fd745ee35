"""``GET /v1/tenant``: a tenant's view of itself, with its own API key.

What a client needs to pace itself and to see what it used, without an operator: its limits,
where each of its quotas stands now (read without taking anything), its queue now, and its
usage per model and UTC day (today unless ``?from=&to=`` ask for more, as the admin API's
usage does). It answers about the key's tenant only: the route names no tenant, so no other
tenant's data can be asked for.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, create_model

from admission.quota import Kind, LimitState
from fairgate.settings import TenantSettings
from gateway.admin.usage import UsageReport, days_asked, read_usage
from gateway.auth import authenticate
from gateway.ratelimits import duration
from gateway.state import GATEWAY, Gateway

#: The tenant's settings shown to it: its share and its limits.
LIMITS = (
    "weight",
    "priority",
    "max_concurrency",
    "max_inflight_tokens",
    "max_queued",
    "queue_timeout_s",
    "pools",
)


def _limits_model() -> type[BaseModel]:
    """The settings of :data:`LIMITS`, as the config file declares them."""
    fields: dict[str, Any] = {}
    for name in LIMITS:
        info = TenantSettings.model_fields[name]
        fields[name] = (info.annotation, Field(description=info.description))
    return create_model(  # type: ignore[call-overload, no-any-return]
        "TenantLimits", __doc__="The tenant's share and limits.", **fields
    )


if TYPE_CHECKING:  # a class made at run time; to the type checker, a model
    TenantLimits = BaseModel
else:
    TenantLimits = _limits_model()


class QuotaNow(BaseModel):
    """One of the tenant's quotas, as it stands now."""

    name: str = Field(description="The quota's setting: requests_per_minute, tokens_per_day...")
    model: str | None = Field(description="The model it limits; null for the tenant's own.")
    kind: Kind
    limit: int
    remaining: int = Field(description="What a request could still take of it now.")
    reset: str = Field(description="Until it is whole again, as x-ratelimit-reset-* say it.")
    reset_ms: int = Field(description="The same, in milliseconds.")

    @classmethod
    def of(cls, state: LimitState) -> QuotaNow:
        limit = state.limit
        return cls(
            name=limit.setting,
            model=limit.model,
            kind=limit.kind,
            limit=limit.limit,
            remaining=state.remaining,
            reset=duration(state.reset_ms),
            reset_ms=state.reset_ms,
        )


class TenantQueue(BaseModel):
    """The tenant's requests in fairgate's queue now, over every replica."""

    queued: int = Field(description="Requests waiting for admission.")
    in_flight_requests: int = Field(description="Requests admitted and not yet finished.")
    in_flight_tokens: int = Field(description="Their estimated tokens (prompt + output).")


class OwnTenant(BaseModel):
    """A tenant's view of itself."""

    object: Literal["tenant"] = "tenant"
    id: str
    limits: TenantLimits
    quotas: list[QuotaNow] = Field(description="Empty for a tenant without quotas.")
    queue: TenantQueue
    usage: UsageReport


async def queue_state(gateway: Gateway, tenant: str) -> TenantQueue:
    """The tenant's queue and work in flight now, as admission counts them in Redis (the
    counters its scripts keep for every replica), in one round trip."""
    keys = gateway.admission.keys
    async with gateway.redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.queued, tenant)
        pipe.hmget(keys.tenant_load, [f"{tenant}:r", f"{tenant}:t"])
        queued, (requests, tokens) = await pipe.execute()
    return TenantQueue(
        queued=int(queued or 0),
        in_flight_requests=int(requests or 0),
        in_flight_tokens=int(tokens or 0),
    )


async def own_tenant(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    tenant_id, tenant = authenticate(request, gateway.directory)
    days = days_asked(request, gateway)
    usage, quotas, queue = await asyncio.gather(
        read_usage(gateway, tenant_id, days),
        gateway.quotas.peek(tenant_id, tenant.quotas),
        queue_state(gateway, tenant_id),
    )
    answer = OwnTenant(
        id=tenant_id,
        limits=TenantLimits(**{name: getattr(tenant, name) for name in LIMITS}),
        quotas=[QuotaNow.of(state) for state in quotas.limits] if quotas is not None else [],
        queue=queue,
        usage=usage,
    )
    return web.json_response(answer.model_dump(mode="json", by_alias=True))
