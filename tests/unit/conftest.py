"""The unit layer: fast tests of one module each, apart from the integration tests.

Layout: ``tests/unit/<package>/test_<module>.py`` tests ``<package>/<module>.py`` (for example
``tests/unit/gateway/test_sse.py`` tests ``gateway/sse.py``); every folder has an
``__init__.py``, so the test modules are ``tests.unit.gateway.test_sse`` and so on, and never
clash with the integration tests' names (``tests/integration/test_*.py``) or shadow the product
packages.

What a unit test may use: the module under test, real collaborators that cost nothing
(pydantic models, aiohttp's request objects, redis-py's client), and in-process servers on
loopback written for the test (:mod:`tests.unit.fake_redis`, a RESP server). What it may not:
redis-server, subprocesses, the simulator, sleeping to let time pass (tests that need time to
pass use a clock they control, or wait for an event). The whole layer runs in seconds:
``make unit`` runs it alone, ``make test`` runs it with the integration tests.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from typing import NoReturn

import pytest

from tests.unit.fake_redis import FakeRedis


@pytest.fixture(autouse=True)
def _unit_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FAIRGATE_* or REDIS_URL from the environment; no subprocess."""
    for name in list(os.environ):
        if name.upper().startswith("FAIRGATE_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)

    def forbidden(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a unit test may not start a process (that is an integration test)")

    monkeypatch.setattr(subprocess, "Popen", forbidden)


@pytest.fixture
async def fake_redis() -> AsyncIterator[FakeRedis]:
    """A :class:`FakeRedis` on loopback, stopped after the test."""
    async with FakeRedis() as fake:
        yield fake
