"""Exact prompt counts from the engine itself (``pools.<name>.tokenize: engine``).

vLLM's ``POST /tokenize`` applies the model's own chat template to ``messages`` and answers
with the exact ``count``. It costs a round trip, so it is opt-in per pool; any failure (an
engine without the endpoint, a timeout) returns None and the estimator counts locally.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from backends.pools import Pool

log = logging.getLogger(__name__)

_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
_FIELDS = ("model", "messages", "prompt", "tools")


async def engine_token_count(pool: Pool, body: dict[str, Any]) -> int | None:
    """The prompt tokens of ``body`` as an engine of ``pool`` counts them, or None."""
    backend = next((b for b in pool.candidates() if b.traits.tokenize_path), None)
    path = backend.traits.tokenize_path if backend else None
    if backend is None or path is None:
        return None
    if not isinstance(body.get("messages", body.get("prompt")), list | str):
        return None
    request = {k: body[k] for k in _FIELDS if k in body}
    try:
        async with backend.session.post(
            backend.url(path), json=request, timeout=_TIMEOUT
        ) as response:
            if response.status != 200:
                return None
            count = (await response.json()).get("count")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.debug("tokenize on %s failed: %s", backend.name, exc)
        return None
    return count if isinstance(count, int) else None
