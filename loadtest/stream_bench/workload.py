"""The workload of the slow-stream benchmark: streams that last seconds, and the upstream that
paces them.

Every stream is one chat completion whose answer comes as :attr:`Shape.chunks` content chunks
at intervals drawn between :attr:`Shape.min_interval_s` and :attr:`Shape.max_interval_s` (a
model emitting tokens), then the usage chunk and ``[DONE]``. The intervals follow from the
request's ``seed``, so the client knows when each chunk left the upstream without a clock
shared with it: what a path adds to the gap between two chunks is the gap the client saw
minus the gap the upstream kept. The request names its shape in its ``user`` field (a plain
OpenAI field that every path passes through), so that one upstream serves every shape.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from loadtest.proxy_overhead.workload import (
    API_KEY,
    CHAT_PATH,
    DONE_EVENT,
    MODEL,
    health,
    sse_event,
)


@dataclass(frozen=True)
class Shape:
    """How a stream is paced: its content chunks and the interval range between them."""

    chunks: int
    min_interval_s: float
    max_interval_s: float

    @property
    def user(self) -> str:
        """How a request names its shape to the upstream (the ``user`` field)."""
        return f"stream:{self.chunks}:{self.min_interval_s:g}:{self.max_interval_s:g}"

    @classmethod
    def of_user(cls, user: str) -> Shape:
        _, chunks, low, high = user.split(":")
        return cls(int(chunks), float(low), float(high))

    @property
    def mean_duration_s(self) -> float:
        return (self.chunks - 1) * (self.min_interval_s + self.max_interval_s) / 2

    def offsets(self, seed: int) -> list[float]:
        """When each content chunk leaves the upstream, in seconds after the first."""
        draw = random.Random(seed).uniform
        at, offsets = 0.0, [0.0]
        for _ in range(self.chunks - 1):
            at += draw(self.min_interval_s, self.max_interval_s)
            offsets.append(at)
        return offsets


#: The shape of LLM traffic the issue measured: 40 chunks, 50-400 ms apart (about 9 s).
LLM = Shape(40, 0.05, 0.4)
#: Many more streams, each slower and longer, so that one machine can drive them: 20 chunks
#: 3-5 s apart (about 2,500 chunks/s and 130 new streams/s at 10,000 open). At 10 chunks 1-2 s
#: apart, the gateways' core and the machine's other one were saturated on this project's
#: machines, and at 2.5-4.5 s fairgate's, by the 290 requests it started each second.
SLOW = Shape(20, 3.0, 5.0)

#: One content chunk, as engines send them (the same bytes for every chunk of every stream).
CONTENT_EVENT = sse_event(
    {
        "id": "chatcmpl-stream",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": "hello "}, "finish_reason": None}],
    }
)


def usage_event(shape: Shape) -> bytes:
    """The final chunk: no choices, the usage (one token per content chunk)."""
    usage = {"prompt_tokens": 9, "completion_tokens": shape.chunks}
    usage["total_tokens"] = usage["prompt_tokens"] + shape.chunks
    return sse_event(
        {
            "id": "chatcmpl-stream",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [],
            "usage": usage,
        }
    )


def request_body(shape: Shape, seed: int) -> bytes:
    """A streamed chat completion of ``shape``, paced by ``seed``; usage asked for."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": shape.chunks,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": seed,
        "user": shape.user,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def request_bytes(shape: Shape, seed: int, host: str, port: int, key: str = API_KEY) -> bytes:
    """The whole HTTP/1.1 request, as the raw-socket client writes it (keep-alive)."""
    body = request_body(shape, seed)
    head = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def upstream_app() -> web.Application:
    """An OpenAI-style chat endpoint that streams at the pace each request's shape and seed
    say: each chunk written at its offset from the first (not after a sleep from the last, so
    that late wake-ups do not add up), then the usage chunk and ``[DONE]``."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        shape = Shape.of_user(body["user"])
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for offset in shape.offsets(body["seed"]):
            if (wait := started + offset - loop.time()) > 0:
                await asyncio.sleep(wait)
            await response.write(CONTENT_EVENT)
        await response.write(usage_event(shape) + DONE_EVENT)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    app.router.add_get("/health", health)
    return app
