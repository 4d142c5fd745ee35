"""OpenAI's rate-limit response headers, from a tenant's quota state.

``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``: the SDKs and many clients read
them to pace themselves. Where several limits of a kind apply (requests per minute of the
tenant and of the model; tokens per minute and per day), the headers report the binding one,
the one with the least remaining. The reset is when that limit is whole again, in OpenAI's
(Go's) duration format: ``17ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``.
"""

from __future__ import annotations

from multidict import istr

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


_KINDS: tuple[Kind, ...] = ("requests", "tokens")
#: Each kind's limit, remaining and reset headers, named once (gateway/header_names.py says why).
_NAMES = {
    kind: tuple(istr(f"x-ratelimit-{part}-{kind}") for part in ("limit", "remaining", "reset"))
    for kind in _KINDS
}


def rate_limit_headers(state: QuotaState) -> dict[str, str]:
    """The headers of every response of a tenant with quotas (a refusal's included)."""
    headers: dict[str, str] = {}
    for kind in _KINDS:
        if (limit := state.binding(kind)) is not None:
            limit_name, remaining_name, reset_name = _NAMES[kind]
            headers[limit_name] = str(limit.limit.limit)
            headers[remaining_name] = str(limit.remaining)
            headers[reset_name] = duration(limit.reset_ms)
    return headers
