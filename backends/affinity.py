"""Session affinity: the same conversation to the same engine, for prefix-cache hits.

An engine with prefix caching (vLLM, SGLang) skips the prefill of a prompt prefix it has
seen; a conversation's turns share their whole history, so sending each turn to the engine
that served the previous one saves most of its prefill. The engine is chosen by rendezvous
hashing of the session key over the pool's backends: every replica picks the same one with
no shared state, and a backend added or removed moves only its own sessions. Admission takes
the preferred backend only while the load allows (see ``affinity_slack_tokens``), else the
least loaded, so affinity never concentrates load.

The session key is the client's ``X-Fairgate-Session`` header, or (``affinity: prefix``) a
digest of the conversation's opening: the system prompt and first user message, which every
later turn repeats.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

SESSION_HEADER = "X-Fairgate-Session"

AffinityMode = Literal["off", "header", "prefix"]


def session_key(mode: AffinityMode, headers: Mapping[str, str], body: dict[str, Any]) -> str:
    """The request's session, or '' when it has none (or affinity is off)."""
    if mode == "off":
        return ""
    given = headers.get(SESSION_HEADER, "")
    if given or mode == "header":
        return given
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        return ""  # a first turn: nothing cached anywhere yet, any engine will do
    opening = []
    for message in messages:
        opening.append(message)
        if isinstance(message, dict) and message.get("role") == "user":
            break
    return "prefix:" + _digest(json.dumps(opening, sort_keys=True, default=str))


def preferred_backend(session: str, backends: Iterable[str]) -> str:
    """The backend with the highest rendezvous score for ``session`` ('' for no session)."""
    if not session:
        return ""
    return max(backends, key=lambda name: _digest(f"{session}\x00{name}"), default="")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
