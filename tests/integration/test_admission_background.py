"""Admission's background loops outlive errors nobody expected: a request waiting in the queue
is granted by the listener (pub/sub) or the upkeep (its poll), so neither may die of a bug.

Real Redis, the real scripts; the error is injected once into what each loop calls.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from admission.controller import Admission
from admission.ticket import Ticket
from fairgate.settings import Settings
from tests.conftest import MakeAdmission, read_until


def settings_for(redis_url: str) -> Settings:
    """One backend, a tenant allowed one request at a time: the second one waits."""
    return Settings(
        redis={"url": redis_url},
        pools={"p": {"backends": {"b": {"url": "http://127.0.0.1:9", "models": ["m"]}}}},
        tenants={"t": {"api_keys": ["k"], "max_concurrency": 1, "queue_timeout_s": 30}},
        admission={"upkeep_interval_s": 0.05, "lease_reuse_s": 0},
    )


def ticket() -> Ticket:
    return Ticket(uuid.uuid4().hex, "t", 10, 10.0, "p", "", 30.0)


async def test_the_upkeep_goes_on_after_an_unexpected_error(
    redis_url: str,
    admission_for: MakeAdmission,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission = await admission_for(settings_for(redis_url))
    tick, calls = admission.scripts.tick, []

    async def failing_once() -> list[tuple[str, str]]:
        calls.append(None)
        if len(calls) == 1:
            raise RuntimeError("a bug in the upkeep")
        return await tick()

    monkeypatch.setattr(admission.scripts, "tick", failing_once)

    async def ticks() -> int:
        await asyncio.sleep(0.05)
        return len(calls)

    assert await read_until(ticks, lambda n: n >= 3) >= 3
    assert "a bug in the upkeep" in caplog.text


async def test_the_grant_listener_goes_on_after_an_unexpected_error(
    redis_url: str,
    admission_for: MakeAdmission,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission: Admission = await admission_for(settings_for(redis_url))
    heard, calls = admission._heard_grant, []

    def failing_once(request_id: str, backend: str) -> None:
        calls.append(request_id)
        if len(calls) == 1:
            raise RuntimeError("a bug in the listener")
        heard(request_id, backend)

    monkeypatch.setattr(admission, "_heard_grant", failing_once)
    caplog.set_level(logging.ERROR)
    for _ in range(3):  # each time one runs and one waits; its grant comes on release
        running = await admission.acquire(ticket())
        waiting = asyncio.ensure_future(admission.acquire(ticket()))
        await asyncio.sleep(0.1)
        await running.release(None)
        lease = await asyncio.wait_for(waiting, 10)
        await lease.release(None)
    assert len(calls) == 3  # every grant was heard on pub/sub, the two after the error too
    assert "a bug in the listener" in caplog.text
