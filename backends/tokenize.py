"""Exact prompt counts from the engine itself (``pools.<name>.tokenize: engine``).

vLLM's ``POST /tokenize`` applies the model's own chat template to ``messages`` and answers
with the exact ``count``. It costs a round trip, so it is opt-in per pool; any failure (an
engine without the endpoint, a timeout) returns None and the estimator counts locally.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from backends.errors import BackendUnreachable, EngineError, GatewayOutOfFiles
from backends.pools import Pool
from backends.transport import EngineRequest, fetch

log = logging.getLogger(__name__)

_TIMEOUT_S = 2.0
_FIELDS = ("model", "messages", "prompt", "tools")
_JSON = {"Content-Type": "application/json"}


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
        answer = await fetch(
            backend.transport,
            EngineRequest("POST", path, json.dumps(request).encode(), _JSON, _TIMEOUT_S),
        )
        if answer.status != 200:
            return None
        count = answer.json().get("count")
    except (BackendUnreachable, GatewayOutOfFiles, EngineError, ValueError, AttributeError) as exc:
        log.debug("tokenize on %s failed: %s", backend.name, exc)
        return None
    return count if isinstance(count, int) else None
