"""OpenAI's rate-limit response headers, from a tenant's quota state.

``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``: the SDKs and many clients read
them to pace themselves. Where several limits of a kind apply (requests per minute of the
tenant and of the model; tokens per minute and per day), the headers report the binding one,
the one with the least remaining. The reset is when that limit is whole again, in OpenAI's
(Go's) duration format: ``17ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``.
"""

from __future__ import annotations

from admission.quota import Kind, QuotaState


def duration(ms: int) -> str:
    """``ms`` milliseconds as OpenAI writes a reset time (Go's ``time.Duration`` format)."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


def rate_limit_headers(state: QuotaState) -> dict[str, str]:
    """The headers of every response of a tenant with quotas (a refusal's included)."""
    headers: dict[str, str] = {}
    kinds: tuple[Kind, ...] = ("requests", "tokens")
    for kind in kinds:
        if (limit := state.binding(kind)) is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(limit.limit.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(limit.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = duration(limit.reset_ms)
    return headers
