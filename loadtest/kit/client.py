"""One request over HTTP, timed the way a user would time it.

The client speaks plain aiohttp rather than the openai SDK: the SDK's retries, pydantic parsing
of every chunk and its own connection pool would add their cost to every figure, and the kit
needs the raw timing of each streamed event. Times are taken on the wall clock and converted
to simulated seconds by :class:`Timebase` (see :mod:`loadtest.kit.scenario` for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field

import aiohttp

from loadtest.kit.shapes import RequestPlan, request_body

#: ``status`` of a request that never got an HTTP status: could not connect / was cancelled.
NO_RESPONSE = 0
CANCELLED = -1


class Timebase:
    """Simulated seconds since the start of a run, from the wall clock and the time scale."""

    def __init__(self, time_scale: float) -> None:
        self.time_scale = time_scale
        self.started = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.started) * self.time_scale

    def wall_delay(self, sim_time: float) -> float:
        """Wall seconds from now until simulated time ``sim_time``."""
        return (sim_time - self.now()) / self.time_scale


@dataclass
class Record:
    """What one request did, in simulated seconds since the start of the run."""

    tenant: str
    shape: int
    stream: bool
    sent: float
    prompt_tokens: int
    output_tokens: int
    first_token: float | None = None
    end: float | None = None
    status: int = NO_RESPONSE
    error: str | None = None
    pool: str | None = None
    request_id: str = ""
    queue_s: float = 0.0  # waited in fairgate's queue (X-Fairgate-Queue-Time), simulated s
    itl: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def e2e(self) -> float | None:
        return None if self.end is None else self.end - self.sent

    def to_json(self) -> dict[str, object]:
        """Everything but the inter-token gaps (which the summaries keep as percentiles)."""
        return {k: v for k, v in self.__dict__.items() if k != "itl"}


async def send(
    http: aiohttp.ClientSession,
    base_url: str,
    api_key: str,
    plan: RequestPlan,
    model: str,
    clock: Timebase,
    sink: list[Record],
) -> Record:
    """Send ``plan`` to ``base_url``/v1/chat/completions and time it; never raises.

    The record joins ``sink`` as soon as it is sent, so a request cancelled at the end of a
    run (still waiting or streaming) is counted as such rather than lost.

    For a stream, the first token is the first event with content, and each later content event
    adds an inter-token gap; usage comes from the final usage chunk. For a plain response the
    first token is the whole answer.
    """
    record = Record(plan.tenant, plan.shape, plan.stream, clock.now(), plan.prompt_tokens, 0)
    record.request_id = uuid.uuid4().hex  # the engine's timeline is /sim/requests/{this}
    sink.append(record)
    headers = {"Authorization": f"Bearer {api_key}", "X-Request-Id": record.request_id}
    try:
        async with http.post(
            f"{base_url}/v1/chat/completions", json=request_body(plan, model), headers=headers
        ) as resp:
            record.status = resp.status
            record.pool = resp.headers.get("X-Fairgate-Pool")
            with contextlib.suppress(TypeError, ValueError):
                waited = float(resp.headers.get("X-Fairgate-Queue-Time"))  # type: ignore[arg-type]
                record.queue_s = waited * clock.time_scale
            if resp.status != 200:
                record.error = _error_code(await resp.read())
            elif plan.stream:
                await _read_stream(resp, record, clock)
            else:
                _read_usage(record, json.loads(await resp.read()))
                record.first_token = clock.now()
            record.end = clock.now()
    except asyncio.CancelledError:
        record.status, record.error = CANCELLED, "cancelled"
        record.end = clock.now()
        raise
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        record.error = type(exc).__name__
        record.end = clock.now()
    return record


async def _read_stream(resp: aiohttp.ClientResponse, record: Record, clock: Timebase) -> None:
    last: float | None = None
    async for line in resp.content:
        if not line.startswith(b"data: "):
            continue
        payload = line[6:].strip()
        if payload == b"[DONE]":
            return
        event = json.loads(payload)
        if "error" in event:
            record.error = str(event["error"].get("code") or "stream_error")
            return
        if event.get("usage"):
            _read_usage(record, event)
        if any(c.get("delta", {}).get("content") for c in event.get("choices") or ()):
            now = clock.now()
            if last is None:
                record.first_token = now
            else:
                record.itl.append(now - last)
            last = now
    record.error = "stream_ended_early"


def _read_usage(record: Record, body: dict) -> None:
    usage = body.get("usage") or {}
    record.prompt_tokens = int(usage.get("prompt_tokens", record.prompt_tokens))
    record.output_tokens = int(usage.get("completion_tokens", 0))


def _error_code(body: bytes) -> str:
    """The OpenAI ``error.code`` of an error body (``rate_limit_exceeded``), else ``http``."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = json.loads(body)["error"]
        return str(error.get("code") or error.get("type") or "http")
    return "http"
