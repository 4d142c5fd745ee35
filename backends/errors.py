"""How talking to an engine failed, in the backends' own terms.

The engine's transport raises them (``backends/transport.py``); the gateway maps each to an
HTTP status and the OpenAI error body in one place (``gateway/middleware.py``) and reports an
:class:`EngineError` to the backend's state (``backends/state.py``), which counts it against
the engine's health.
"""

from __future__ import annotations

import errno

#: A process out of file descriptors, its own (EMFILE) or the system's (ENFILE): whatever
#: raised it, the gateway's own limit (:class:`GatewayOutOfFiles`).
OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})


class BackendUnreachable(Exception):
    """No connection could be made: nothing was sent, so trying elsewhere is safe."""


class GatewayOutOfFiles(OSError):
    """This process may open no more files (EMFILE, ENFILE), so no connection to the engine
    could be made: the gateway's own limit, no fault of the engine's. Answered 503 and never
    counted against the backend: counted, it would mark every backend down at once (their
    probes fail alike), and the gateway would refuse everything until the limit freed."""


class EngineError(Exception):
    """The engine took the request and then failed it; ``str(exc)`` is the message."""


class EngineTimeout(EngineError):
    """The engine did not answer in time."""


class EngineFailed(EngineError):
    """The engine's connection failed or broke, before or during its answer."""
