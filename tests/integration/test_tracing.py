"""OpenTelemetry traces of inference requests (gateway/tracing.py).

Each gateway gets a tracer provider of its own with the SDK's in-memory exporter, so a test sees
exactly the spans of its requests; the engine is a small aiohttp server on loopback that records
the headers it receives and answers as told (whole, streamed, 500, or a dropped connection).
Every test also checks that no span carries the tenant's key, the prompt or the completion. The
last test exports for real: a ``fairgate serve`` process sends OTLP/HTTP to a receiver process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis

from fairgate.settings import Settings
from gateway.app import create_app
from tests.conftest import (
    REPO,
    RunningGateway,
    ServeApp,
    StartGateway,
    StartSim,
    gateway_config,
    wait_answering,
)

MODEL = "llama-3-8b"
ENGINE_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"  # what the engine says it ran
KEY = "key-a"
PROMPT = "PROMPT-TEXT the violet heron sings at 4711"
COMPLETION = "COMPLETION-TEXT zebra crossing 0815"
SECRETS = (KEY, PROMPT, COMPLETION, "violet heron", "zebra crossing")
MESSAGES = [{"role": "user", "content": PROMPT}]
USAGE = {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20}
CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
TRACING_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


# ----------------------------------------------------------------------- the stand-in engine


class Engine:
    """An OpenAI-style engine that records each request's headers and answers as told.

    ``fail``: None (answer), "500" (an error status), "close" (drop the connection before
    answering) or "midstream" (drop it after two chunks of a stream). ``hold``: answers wait
    until it is set.
    """

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.received: list[dict[str, str]] = []
        self.hold = asyncio.Event()
        self.hold.set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", _health)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(dict(request.headers))
        await self.hold.wait()
        if self.fail == "500":
            return web.json_response({"object": "error", "message": "the engine broke"}, status=500)
        if self.fail == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if request.path == "/v1/embeddings":
            data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
            usage = {"prompt_tokens": 17, "total_tokens": 17}
            return web.json_response(
                {"object": "list", "model": ENGINE_MODEL, "data": data, "usage": usage}
            )
        chat = request.path == "/v1/chat/completions"
        if not body.get("stream"):
            text = {"message": {"role": "assistant", "content": COMPLETION}} if chat else {}
            choice = {"index": 0, "finish_reason": "stop", **text}
            if not chat:
                choice["text"] = COMPLETION
            return web.json_response(
                {"id": "x", "object": "chat.completion", "model": ENGINE_MODEL,
                 "choices": [choice], "usage": USAGE}
            )  # fmt: skip
        return await self._stream(request, body)

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = COMPLETION.split(" ")
        for i, word in enumerate(words):
            if self.fail == "midstream" and i == 2:
                assert request.transport is not None
                request.transport.close()
                return response
            last = i == len(words) - 1
            choice = {"index": 0, "delta": {"content": word + " "}, "finish_reason": None}
            if last:
                choice["finish_reason"] = "length"
            await response.write(_event({"model": ENGINE_MODEL, "choices": [choice]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(_event({"model": ENGINE_MODEL, "choices": [], "usage": USAGE}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _event(chunk: dict[str, Any]) -> bytes:
    chunk = {"id": "x", "object": "chat.completion.chunk", **chunk}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A provider of this test's own: the gateway's spans and no one else's."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


async def traced_gateway(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    provider: TracerProvider | None,
    engine: Engine,
    **sections: Any,
) -> RunningGateway:
    url = await serve_app(engine.app())
    return await start_gateway(
        gateway_config(redis_url, {"interactive": [url]}, **sections), tracer_provider=provider
    )


async def finished(exporter: InMemorySpanExporter, servers: int) -> list[ReadableSpan]:
    """Every span once ``servers`` SERVER spans have ended (a stream's can end just after the
    client has read its last byte)."""
    for _ in range(200):
        spans = list(exporter.get_finished_spans())
        if sum(span.kind is SpanKind.SERVER for span in spans) >= servers:
            return spans
        await asyncio.sleep(0.025)
    raise AssertionError(f"expected {servers} server spans, got {spans}")


def server_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is SpanKind.SERVER]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    """The direct children of ``parent``, by name (each name once)."""
    found = [
        s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    by_name = {span.name: span for span in found}
    assert len(by_name) == len(found), [span.name for span in found]
    return by_name


def assert_nothing_secret(spans: Sequence[ReadableSpan]) -> None:
    """No key, prompt or completion anywhere in a span: name, attributes, events, status,
    resource."""
    for span in spans:
        texts = [span.name, str(span.status.description)]
        texts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        texts += [f"{k}={v}" for k, v in span.resource.attributes.items()]
        for event in span.events:
            texts += [event.name] + [f"{k}={v}" for k, v in (event.attributes or {}).items()]
        for text in texts:
            for secret in SECRETS:
                assert secret not in text, f"span {span.name!r} records {secret!r}: {text}"


def traceparent_ids(header: str) -> tuple[str, str, str]:
    """(trace id, parent span id, flags) of a W3C traceparent."""
    version, trace_id, parent_id, flags = header.split("-")
    assert version == "00"
    return trace_id, parent_id, flags


def hex_id(value: int, digits: int) -> str:
    return f"{value:0{digits}x}"


# ------------------------------------------------------------------------------------ tests


async def test_a_streamed_request_has_the_span_tree_and_attributes(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    engine = Engine()
    gateway = await traced_gateway(start_gateway, serve_app, redis_url, provider, engine)
    stream = await gateway.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, max_tokens=32
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text.strip() == COMPLETION

    spans = await finished(exporter, 1)
    assert_nothing_secret(spans)
    (server,) = server_spans(spans)
    assert server.name == f"chat {MODEL}"
    assert server.parent is None  # the client sent no traceparent: a new trace
    steps = children(spans, server)
    assert set(steps) == {"estimate", "queue", "POST /v1/chat/completions"}
    assert steps["estimate"].kind is SpanKind.INTERNAL
    assert steps["queue"].kind is SpanKind.INTERNAL
    call = steps["POST /v1/chat/completions"]
    assert call.kind is SpanKind.CLIENT
    # in order: estimated, then queued, then the engine called, all within the request
    assert server.start_time <= steps["estimate"].start_time
    assert steps["estimate"].end_time <= steps["queue"].start_time
    assert steps["queue"].end_time <= call.start_time
    assert call.end_time <= server.end_time

    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.response.model"] == ENGINE_MODEL
    assert attributes["gen_ai.request.max_tokens"] == 32
    assert attributes["gen_ai.usage.input_tokens"] == USAGE["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == USAGE["completion_tokens"]
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["http.response.status_code"] == 200
    assert attributes["fairgate.tenant"] == "a"
    assert attributes["fairgate.pool"] == "interactive"
    assert attributes["fairgate.backend"] == "interactive-0"
    assert attributes["fairgate.routing.rule"] == "default"
    assert attributes["fairgate.admission.policy"] == "vtc"
    assert attributes["fairgate.outcome"] == "ok"
    assert attributes["fairgate.stream"] is True
    assert attributes["fairgate.estimate.prompt_tokens"] > 0
    assert attributes["fairgate.estimate.output_tokens"] > 0
    assert attributes["fairgate.queue.wait_s"] >= 0
    assert "error.type" not in attributes
    assert server.status.status_code is StatusCode.UNSET

    (first_token,) = server.events
    assert first_token.name == "gen_ai.first_token"
    assert call.start_time <= first_token.timestamp <= server.end_time

    call_attributes = dict(call.attributes or {})
    assert call_attributes["http.response.status_code"] == 200
    assert call_attributes["server.address"] == "127.0.0.1"
    assert call_attributes["server.port"] > 0
    assert str(call_attributes["url.full"]).endswith("/v1/chat/completions")

    # the engine's parent is the call: vLLM's own spans join the trace under it
    (headers,) = engine.received
    trace_id, parent_id, flags = traceparent_ids(headers["traceparent"])
    assert trace_id == hex_id(server.context.trace_id, 32)
    assert parent_id == hex_id(call.context.span_id, 16)
    assert int(flags, 16) & 1  # sampled


@pytest.mark.parametrize(
    ("path", "operation", "body"),
    [
        ("/v1/chat/completions", "chat", {"messages": MESSAGES, "max_tokens": 8}),
        ("/v1/completions", "text_completion", {"prompt": PROMPT, "max_tokens": 8}),
        ("/v1/embeddings", "embeddings", {"input": PROMPT}),
    ],
)
async def test_a_whole_response_is_traced_per_operation(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    path: str,
    operation: str,
    body: dict[str, Any],
) -> None:
    engine = Engine()
    gateway = await traced_gateway(start_gateway, serve_app, redis_url, provider, engine)
    async with gateway.http.post(
        gateway.url + path,
        json={"model": MODEL, **body},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:
        assert resp.status == 200, await resp.text()

    spans = await finished(exporter, 1)
    assert_nothing_secret(spans)
    (server,) = server_spans(spans)
    assert server.name == f"{operation} {MODEL}"
    assert set(children(spans, server)) == {"estimate", "queue", f"POST {path}"}
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.operation.name"] == operation
    assert attributes["gen_ai.response.model"] == ENGINE_MODEL
    assert attributes["gen_ai.usage.input_tokens"] == USAGE["prompt_tokens"]
    assert attributes["fairgate.outcome"] == "ok"
    assert attributes["fairgate.stream"] is False
    assert not server.events  # no stream, no first token
    if operation == "embeddings":
        assert "gen_ai.response.finish_reasons" not in attributes
        assert "gen_ai.usage.output_tokens" not in attributes
    else:
        assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert attributes["gen_ai.usage.output_tokens"] == USAGE["completion_tokens"]
        assert attributes["gen_ai.request.max_tokens"] == 8


async def _queued(redis_url: str, count: int = 1) -> None:
    """Wait until ``count`` requests wait in the fair queues."""
    client = Redis.from_url(redis_url)
    try:
        for _ in range(400):
            keys = [key async for key in client.scan_iter(match="fairgate:{adm}:q:*")]
            if sum([await client.zcard(key) for key in keys]) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{count} requests never queued")
    finally:
        await client.aclose()


async def _engine_received(engine: Engine, count: int) -> None:
    for _ in range(400):
        if len(engine.received) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine received {len(engine.received)} requests, not {count}")


async def test_a_queued_request_shows_its_wait_until_granted(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    engine = Engine()
    engine.hold.clear()
    tenants = {"a": {"api_keys": [KEY], "max_concurrency": 1}}
    gateway = await traced_gateway(
        start_gateway, serve_app, redis_url, provider, engine, tenants=tenants
    )
    client = gateway.client()

    def ask(request_id: str) -> asyncio.Task[Any]:
        return asyncio.ensure_future(
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, extra_headers={"X-Request-Id": request_id}
            )
        )

    first = ask("first")
    await _engine_received(engine, 1)
    second = ask("second")
    await _queued(redis_url)  # the second waits: the tenant may run one at a time
    third = ask("third")
    await _queued(redis_url, 2)  # and the third behind it
    engine.hold.set()
    await asyncio.gather(first, second, third)

    spans = await finished(exporter, 3)
    assert_nothing_secret(spans)
    by_id = {str((s.attributes or {})["fairgate.request_id"]): s for s in server_spans(spans)}
    first_steps, second_steps = children(spans, by_id["first"]), children(spans, by_id["second"])
    # granted only once the first had finished with the engine
    first_call = first_steps["POST /v1/chat/completions"]
    assert second_steps["queue"].end_time >= first_call.end_time
    first_wait = (by_id["first"].attributes or {})["fairgate.queue.wait_s"]
    second_wait = (by_id["second"].attributes or {})["fairgate.queue.wait_s"]
    assert second_wait > first_wait
    assert second_steps["queue"].status.status_code is StatusCode.UNSET
    assert {(s.attributes or {})["fairgate.outcome"] for s in by_id.values()} == {"ok"}
    # where each stood on arrival: nothing queued for the first two, the second ahead of the third
    places = {
        request_id: (attrs["fairgate.queue.position"], attrs["fairgate.queue.depth"])
        for request_id, attrs in ((i, dict(s.attributes or {})) for i, s in by_id.items())
    }
    assert places == {"first": (0, 0), "second": (0, 0), "third": (1, 1)}


async def test_a_refusal_over_quota_says_so(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    tenants = {"a": {"api_keys": [KEY], "quotas": {"requests_per_minute": 1}}}
    gateway = await traced_gateway(
        start_gateway, serve_app, redis_url, provider, Engine(), tenants=tenants
    )
    client = gateway.client()
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)

    spans = await finished(exporter, 2)
    assert_nothing_secret(spans)
    refused = [
        s for s in server_spans(spans) if (s.attributes or {})["http.response.status_code"] == 429
    ]
    (server,) = refused
    attributes = dict(server.attributes or {})
    assert attributes["fairgate.outcome"] == "quota"
    assert attributes["error.type"] == "QuotaExceeded"
    assert attributes["fairgate.tenant"] == "a"
    assert server.name == f"chat {MODEL}"
    # admission takes the quota charge first, in the call that would queue it: refused there
    assert set(children(spans, server)) == {"estimate", "queue"}
    # a refusal of the client's request is not the service's failure (HTTP server convention)
    assert server.status.status_code is StatusCode.UNSET


async def test_a_full_queue_refusal_marks_the_queue_step(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    engine = Engine()
    engine.hold.clear()
    tenants = {"a": {"api_keys": [KEY], "max_concurrency": 1, "max_queued": 0}}
    gateway = await traced_gateway(
        start_gateway, serve_app, redis_url, provider, engine, tenants=tenants
    )
    client = gateway.client()
    first = asyncio.ensure_future(client.chat.completions.create(model=MODEL, messages=MESSAGES))
    await _engine_received(engine, 1)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    engine.hold.set()
    await first

    spans = await finished(exporter, 2)
    assert_nothing_secret(spans)
    (server,) = [s for s in server_spans(spans) if (s.attributes or {})["fairgate.outcome"] != "ok"]
    attributes = dict(server.attributes or {})
    assert attributes["fairgate.outcome"] == "queue_full"
    assert attributes["http.response.status_code"] == 429
    assert attributes["error.type"] == "QueueFull"
    queue = children(spans, server)
    assert set(queue) == {"estimate", "queue"}
    assert queue["queue"].status.status_code is StatusCode.ERROR
    assert (queue["queue"].attributes or {})["error.type"] == "QueueFull"


@pytest.mark.parametrize(
    ("fail", "stream", "status", "error_type"),
    [
        ("500", False, 500, "500"),
        ("close", False, 502, "EngineFailed"),
        ("midstream", True, 200, "ClientPayloadError"),
    ],
)
async def test_an_engine_failure_is_an_error_on_the_request_and_the_call(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    fail: str,
    stream: bool,
    status: int,
    error_type: str,
) -> None:
    engine = Engine(fail)
    gateway = await traced_gateway(start_gateway, serve_app, redis_url, provider, engine)
    async with gateway.http.post(
        gateway.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": stream},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:
        assert resp.status == status
        body = await resp.read()
    if stream:
        assert b"engine stopped in the middle" in body

    spans = await finished(exporter, 1)
    assert_nothing_secret(spans)
    (server,) = server_spans(spans)
    attributes = dict(server.attributes or {})
    assert attributes["fairgate.outcome"] == "upstream_error"
    assert attributes["http.response.status_code"] == status
    assert str(attributes["error.type"]).endswith(error_type)
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == attributes["error.type"]
    call = children(spans, server)["POST /v1/chat/completions"]
    assert call.status.status_code is StatusCode.ERROR
    assert (call.attributes or {})["error.type"] == attributes["error.type"]
    if fail != "close":  # the engine answered (headers) before it failed
        assert (call.attributes or {})["http.response.status_code"] == status


async def test_the_callers_trace_is_continued_and_the_engine_call_is_the_engines_parent(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    engine = Engine()
    gateway = await traced_gateway(start_gateway, serve_app, redis_url, provider, engine)
    await gateway.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        extra_headers={"traceparent": TRACEPARENT, "tracestate": "vendor=opaque"},
    )

    spans = await finished(exporter, 1)
    (server,) = server_spans(spans)
    assert hex_id(server.context.trace_id, 32) == CLIENT_TRACE_ID
    assert server.parent is not None and server.parent.is_remote
    assert hex_id(server.parent.span_id, 16) == CLIENT_SPAN_ID
    assert {hex_id(span.context.trace_id, 32) for span in spans} == {CLIENT_TRACE_ID}

    call = children(spans, server)["POST /v1/chat/completions"]
    (headers,) = engine.received
    trace_id, parent_id, _ = traceparent_ids(headers["traceparent"])
    assert trace_id == CLIENT_TRACE_ID
    assert parent_id == hex_id(call.context.span_id, 16)  # the call, not the client's span
    assert headers["tracestate"] == "vendor=opaque"  # the caller's vendors' state goes on


async def test_a_request_its_caller_did_not_sample_makes_no_spans_but_passes_the_decision_on(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    engine = Engine()
    gateway = await traced_gateway(start_gateway, serve_app, redis_url, provider, engine)
    unsampled = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-00"
    client = gateway.client()
    await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_headers={"traceparent": unsampled}
    )
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # sampled

    await finished(exporter, 1)
    assert CLIENT_TRACE_ID not in {
        hex_id(span.context.trace_id, 32) for span in exporter.get_finished_spans()
    }
    trace_id, parent_id, flags = traceparent_ids(engine.received[0]["traceparent"])
    assert trace_id == CLIENT_TRACE_ID
    assert int(flags, 16) & 1 == 0  # the engine is told not to sample either
    assert parent_id != CLIENT_SPAN_ID  # the gateway's (unrecorded) span is the engine's parent


async def test_with_tracing_off_the_clients_trace_context_goes_to_the_engine_unchanged(
    start_gateway: StartGateway,
    serve_app: ServeApp,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in TRACING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    engine = Engine()
    gateway = await traced_gateway(start_gateway, serve_app, redis_url, None, engine)
    await gateway.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        extra_headers={"traceparent": TRACEPARENT, "tracestate": "vendor=opaque"},
    )
    (headers,) = engine.received
    assert headers["traceparent"] == TRACEPARENT
    assert headers["tracestate"] == "vendor=opaque"


def test_with_tracing_off_the_handlers_are_not_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off costs nothing: the routes hold the handlers themselves, no tracing wrapper."""
    for name in TRACING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    config = gateway_config("redis://127.0.0.1:1/0", {"interactive": ["http://127.0.0.1:9"]})
    off = create_app(Settings(**config))
    on = create_app(Settings(**config), tracer_provider=TracerProvider())
    names = {
        app_name: {
            route.resource.canonical: route.handler.__name__
            for route in app.router.routes()
            if route.method == "POST"
            and route.resource is not None
            and route.resource.canonical.startswith("/v1/")
        }
        for app_name, app in (("off", off), ("on", on))
    }
    assert set(names["off"].values()) == {"handle"}
    assert set(names["on"].values()) == {"traced"}
    assert set(names["off"]) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}


# ------------------------------------------------------------ export to a real collector


@pytest.fixture
async def receiver(tmp_path: Path, unused_tcp_port_factory: Any) -> AsyncIterator[tuple[str, Path]]:
    """The OTLP/HTTP receiver process (tests/integration/otlp_receiver.py): its URL and the
    file it writes the spans it decodes to."""
    port, out = unused_tcp_port_factory(), tmp_path / "spans.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("otlp_receiver.py"))]
        + ["--port", str(port), "--out", str(out)]
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_answering(url + "/health", process)
        yield url, out
    finally:
        process.terminate()
        process.wait(timeout=10)


def _received(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line]


async def test_a_gateway_process_exports_its_spans_over_otlp_http(
    receiver: tuple[str, Path],
    start_sim: StartSim,
    redis_url: str,
    tmp_path: Path,
    unused_tcp_port_factory: Any,
) -> None:
    collector, out = receiver
    sim = await start_sim()
    port = unused_tcp_port_factory()
    config = gateway_config(redis_url, {"interactive": [sim.url]})
    config["server"] = {**config["server"], "host": "127.0.0.1", "port": port}
    # the file names another collector and service name: the OTEL_* variables win
    config["telemetry"] = {
        "traces": {"endpoint": "http://127.0.0.1:9", "service_name": "from-the-file"}
    }
    path = tmp_path / "fairgate.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FAIRGATE_"))}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector,
        "OTEL_SERVICE_NAME": "fairgate-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms rather than 5 s
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "fairgate.cli", "--log-level", "warning", "serve"]
        + ["--config", str(path)],
        env=env,
        cwd=REPO,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_answering(url + "/readyz", process)
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        try:
            await client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=4,
                extra_headers={"traceparent": TRACEPARENT},
            )
        finally:
            await client.close()
        for _ in range(200):
            spans = _received(out)
            if any(span["name"] == f"chat {MODEL}" for span in spans):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the receiver got no server span: {spans}")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    names = {span["name"]: span for span in _received(out)}
    server = names[f"chat {MODEL}"]
    assert server["trace_id"] == CLIENT_TRACE_ID
    assert server["parent_span_id"] == CLIENT_SPAN_ID
    assert server["resource"]["service.name"] == "fairgate-under-test"
    assert server["scope"] == "fairgate"
    assert server["attributes"]["fairgate.tenant"] == "a"
    assert server["attributes"]["fairgate.outcome"] == "ok"
    assert server["attributes"]["gen_ai.request.model"] == MODEL
    for child in ("estimate", "queue", "POST /v1/chat/completions"):
        assert names[child]["parent_span_id"] == server["span_id"]
        assert names[child]["trace_id"] == CLIENT_TRACE_ID
    text = out.read_text()
    for secret in SECRETS:
        assert secret not in text
