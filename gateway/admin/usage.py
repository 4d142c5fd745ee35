"""A tenant's usage: requests, tokens and refusals per model and UTC day (``GET .../usage``).

The counts are those of :mod:`tenants.usage`, which every replica writes in batches about
once a second; the replica that answers writes its own pending counts first, so a request
served by it is in the answer. A deleted tenant's usage stays readable until it expires
(``admin.usage_retention_days``): billing needs the last days of a tenant that is gone.

The tenant's own view (``GET /v1/tenant``, :mod:`gateway.own_tenant`) reports its usage in
the same shape, read the same way.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, create_model

from fairgate.errors import invalid_request
from gateway.admin.api import ADMIN, Param
from gateway.admin.tenants import TENANT_ID
from gateway.state import Gateway
from tenants.errors import TenantNotFound
from tenants.usage import REASON_MEANINGS, Counts, DayUsage, oldest_kept, total


def _rejections_model() -> type[BaseModel]:
    """One count per reason, every reason always present (0 if none)."""
    fields: dict[str, Any] = {
        reason: (int, Field(description=meaning)) for reason, meaning in REASON_MEANINGS.items()
    }
    return create_model(  # type: ignore[call-overload, no-any-return]
        "Rejections",
        __doc__="Requests refused or failed, by reason.",
        **fields,
    )


if TYPE_CHECKING:  # a class made at run time; to the type checker, a model
    Rejections = BaseModel
else:
    Rejections = _rejections_model()


class UsageCounts(BaseModel):
    """What a tenant did: requests an engine served and their tokens, and its refusals."""

    requests: int = Field(description="Requests an engine answered successfully.")
    prompt_tokens: int = Field(
        description="Their prompt tokens, as the engine counted them (else as estimated)."
    )
    completion_tokens: int = Field(
        description="Their output tokens, as the engine counted them (else the chunks of a "
        "stream, or 0)."
    )
    rejections: Rejections

    @classmethod
    def fields_of(cls, counts: Counts) -> dict[str, Any]:
        return {
            "requests": counts.requests,
            "prompt_tokens": counts.prompt_tokens,
            "completion_tokens": counts.completion_tokens,
            "rejections": Rejections(**counts.rejections),
        }


class _DayAndModel(BaseModel):
    date: dt.date
    model: str = Field(
        description='The model; "" for refusals before a model that a pool serves was named '
        "(a bad body, an unknown model)."
    )


class UsageDay(UsageCounts, _DayAndModel):
    """A tenant's usage of one model on one UTC day (its day and model first)."""


class UsageReport(BaseModel):
    """A tenant's usage over a range of UTC days: one row per day and model with any count,
    by day then model, and their total."""

    model_config = ConfigDict(populate_by_name=True)

    object: Literal["usage"] = "usage"
    tenant: str
    first: dt.date = Field(alias="from", description="The first day (UTC), included.")
    last: dt.date = Field(alias="to", description="The last day (UTC), included.")
    data: list[UsageDay]
    total: UsageCounts

    @classmethod
    def of(cls, tenant: str, first: dt.date, last: dt.date, rows: list[DayUsage]) -> UsageReport:
        return cls(
            tenant=tenant,
            first=first,
            last=last,
            data=[
                UsageDay(date=row.day, model=row.model, **UsageCounts.fields_of(row.counts))
                for row in rows
            ],
            total=UsageCounts(**UsageCounts.fields_of(total(rows))),
        )

    def response(self) -> web.Response:
        return web.json_response(self.model_dump(mode="json", by_alias=True))


_DAY = {"type": "string", "format": "date"}
FROM = Param(
    "from", "query", "The first UTC day (YYYY-MM-DD), included; `to` if unset.", _DAY, False
)
TO = Param("to", "query", "The last UTC day (YYYY-MM-DD), included; today if unset.", _DAY, False)
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def requested_days(
    query: Mapping[str, str], today: dt.date, retention_days: int
) -> tuple[dt.date, dt.date]:
    """The days ``?from=&to=`` ask for, or 400 naming the parameter: each a day as
    ``YYYY-MM-DD``, ``from`` not after ``to`` nor before the oldest day kept, at most
    ``retention_days`` days in all. ``to`` is today if unset, ``from`` is ``to``."""
    last = _day(query, "to", today)
    first = _day(query, "from", last)
    if first > last:
        raise invalid_request(f"from ({first}) is after to ({last}).", "from")
    oldest = oldest_kept(today, retention_days)
    if first < oldest:
        raise invalid_request(
            f"Usage is kept for {retention_days} days: from must be {oldest} or later.", "from"
        )
    if (last - first).days >= retention_days:
        raise invalid_request(f"A range spans at most {retention_days} days.", "to")
    return first, last


def _day(query: Mapping[str, str], name: str, default: dt.date) -> dt.date:
    value = query.get(name)
    if value is None:
        return default
    try:
        if _ISO_DAY.match(value):
            return dt.date.fromisoformat(value)
    except ValueError:
        pass
    raise invalid_request(f"{name} must be a UTC day as YYYY-MM-DD, not {value!r}.", name)


async def read_usage(gateway: Gateway, tenant: str, days: tuple[dt.date, dt.date]) -> UsageReport:
    """The tenant's usage over ``days``, this replica's pending counts included."""
    await gateway.usage.flush()
    rows = await gateway.usage.read(tenant, *days)
    return UsageReport.of(tenant, *days, rows)


def days_asked(request: web.Request, gateway: Gateway) -> tuple[dt.date, dt.date]:
    """The days a request's ``?from=&to=`` ask for (400 if they cannot be answered)."""
    return requested_days(request.query, gateway.usage.today(), gateway.usage.retention_days)


@ADMIN.route(
    "GET",
    "/admin/v1/tenants/{tenant_id}/usage",
    summary="A tenant's usage per model and UTC day: requests, tokens, refusals by reason",
    tag="usage",
    response=UsageReport,
    errors=(400, 404),
    params=(TENANT_ID, FROM, TO),
)
async def tenant_usage(request: web.Request, gateway: Gateway) -> web.Response:
    tenant = request.match_info["tenant_id"]
    report = await read_usage(gateway, tenant, days_asked(request, gateway))
    known = gateway.directory.tenant(tenant) is not None
    if not known and not report.data and not await gateway.usage.kept(tenant):
        raise TenantNotFound(tenant)  # neither a tenant nor one whose usage is still kept
    return report.response()
