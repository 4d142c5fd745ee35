"""How talking to an engine failed, in the backends' own terms.

The engine's transport raises them (``backends/transport.py``); the gateway maps each to an
HTTP status and the OpenAI error body in one place (``gateway/middleware.py``) and reports an
:class:`EngineError` to the backend's state (``backends/state.py``), which counts it against
the engine's health.
"""

from __future__ import annotations


class BackendUnreachable(Exception):
    """No connection could be made: nothing was sent, so trying elsewhere is safe."""


class EngineError(Exception):
    """The engine took the request and then failed it; ``str(exc)`` is the message."""


class EngineTimeout(EngineError):
    """The engine did not answer in time."""


class EngineFailed(EngineError):
    """The engine's connection failed or broke, before or during its answer."""
