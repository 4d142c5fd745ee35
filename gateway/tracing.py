"""Traces of inference requests: OpenTelemetry spans, off unless configured.

Every inference request gets one SERVER span, named as the GenAI semantic conventions name an
inference (``chat llama-3-8b``), continuing the caller's trace when it sent a ``traceparent``.
Its children are the steps that take time: ``estimate``, ``queue`` (the wait in the fair queue,
from enqueue to grant) and the engine call, a CLIENT span whose context goes to the engine in
``traceparent``/``tracestate``, so that an engine that traces (vLLM does) joins the trace. An
event marks the first streamed token. The attributes say what the gateway decided and learned
(docs/observability.md lists them). Nothing a tenant sent or received is ever recorded: not its
key, prompt or completion; only names, counts, ids and the engine's finish reasons.

Off (the default), tracing costs nothing on the request path: the handlers are registered
unwrapped, and the few hooks the handler calls are methods of the shared :data:`NO_TRACE`,
which do nothing and allocate nothing.

One :class:`Tracing` per application, with a tracer provider of its own (never the global
one): a test gives each gateway its own provider, and nothing leaks from one to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import fairgate
from admission.errors import AdmissionUnavailable, AtLimit, QueueFull, QueueTimeout
from admission.quota import QuotaExceeded
from admission.scripts import QueuePlace
from backends.errors import BackendUnreachable, EngineError
from fairgate.errors import GatewayError
from fairgate.settings import Settings, TracesConfig
from gateway import header_names
from gateway.middleware import as_gateway_error, request_id_of
from gateway.requests import Endpoint

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    from admission.ticket import Ticket
    from backends.backend import Backend
    from backends.pools import Pool
    from backends.transport import EngineResponse
    from estimators.cost import Cost
    from gateway.relay import Relayed
    from gateway.requests import InferenceRequest

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Hears each piece of a stream written to the client, and the content chunks relayed so far.
Tap = Callable[[bytes, int], None]

#: ``gen_ai.operation.name`` of each endpoint.
OPERATIONS = {
    Endpoint.CHAT: "chat",
    Endpoint.COMPLETIONS: "text_completion",
    Endpoint.EMBEDDINGS: "embeddings",
}

# ``fairgate.outcome``: how a request ended.
OK = "ok"
QUOTA = "quota"
QUEUE_FULL = "queue_full"
QUEUE_TIMEOUT = "queue_timeout"
UPSTREAM_ERROR = "upstream_error"
CLIENT_DISCONNECT = "client_disconnect"
INVALID_REQUEST = "invalid_request"  # refused for what it asked (by the gateway or the engine)
UNAVAILABLE = "unavailable"  # admission could not decide (Redis unreachable)
INTERNAL_ERROR = "internal_error"  # a bug of the gateway's
#: The outcomes that are the service's failures: span status ERROR. A refusal of the client's
#: request (4xx, 429 included) is not, as the HTTP semantic conventions have it for servers.
FAULTS = frozenset({UPSTREAM_ERROR, UNAVAILABLE, INTERNAL_ERROR})

FIRST_TOKEN = "gen_ai.first_token"

#: The domain failures, first match wins: what each says about how the request ended.
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (QuotaExceeded, QUOTA),
    (QueueFull, QUEUE_FULL),
    (AtLimit, QUEUE_FULL),  # fail-open admission: a replica's own limit, in place of the queue
    (QueueTimeout, QUEUE_TIMEOUT),
    (AdmissionUnavailable, UNAVAILABLE),
    (EngineError, UPSTREAM_ERROR),
    (BackendUnreachable, UPSTREAM_ERROR),
)
#: The gateway's own error codes that are the engine's failures.
_UPSTREAM_CODES = frozenset({"backend_unavailable", "backend_error", "backend_timeout"})
_DISCONNECTS = (asyncio.CancelledError, ConnectionResetError, BrokenPipeError)

#: What the engine's answer says that a trace keeps: its finish reasons and model. A quote
#: inside a JSON string is always escaped, so neither can match inside generated text.
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,32})"')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
_MAX_FINISH_REASONS = 64

_W3C = TraceContextTextMapPropagator()
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()


class Grant(Protocol):
    """What a trace reads of a request's grant (``gateway.inflight.Granted``)."""

    @property
    def backend(self) -> Backend: ...
    @property
    def upstream(self) -> EngineResponse: ...


class InFlight(Protocol):
    """What a trace reads of a request in flight (``gateway.inflight.InFlight``, which holds
    its trace: a protocol here keeps the two modules from importing each other)."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def parsed(self) -> InferenceRequest: ...
    @property
    def cost(self) -> Cost: ...
    @property
    def pool(self) -> Pool: ...
    @property
    def ticket(self) -> Ticket: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def outcome(self) -> Relayed | None: ...
    @property
    def grant(self) -> Grant | None: ...


class RequestTrace:
    """The hooks the request path calls; this one does nothing (tracing off: :data:`NO_TRACE`).

    Kept in the request's :class:`~gateway.inflight.InFlight` (before that exists, the step that
    needs it asks :func:`current_trace`). A sampled request's (:class:`_Sampled`) overrides
    every method; an unsampled one's (:class:`_Unsampled`) only passes its context on.
    """

    #: Given to the stream relay (None: nothing to hear, not even a call per chunk).
    tap: Tap | None = None

    def attach(self, flight: InFlight) -> None:
        """The request as admission sees it (known once estimated and routed)."""

    def step(self, name: str) -> AbstractContextManager[None]:
        """A child span around one step of the request (``estimate``, ``queue``)."""
        return _NOTHING

    def placed(self, place: QueuePlace) -> None:
        """Where the request stood in the fair queue on arrival (admission tells it)."""

    def calling(self, backend: Backend, headers: dict[str, str]) -> dict[str, str]:
        """The engine call starts: its span's context goes into the engine request's
        ``headers`` (returned)."""
        return headers

    def call_failed(self, error: BaseException) -> None:
        """The engine call failed before an answer (admission is asked again)."""


NO_TRACE = RequestTrace()
#: The trace of the request this task serves, set by the traced handler for its duration (a
#: context variable: a few tens of nanoseconds to read, where a missing request key would
#: raise and catch a KeyError on every untraced request).
_CURRENT: contextvars.ContextVar[RequestTrace] = contextvars.ContextVar(
    "fairgate_trace", default=NO_TRACE
)


def current_trace() -> RequestTrace:
    """The trace of the request being served (:data:`NO_TRACE` when tracing is off)."""
    return _CURRENT.get()


class Tracing:
    """Tracing for one application: its tracer (None: off), and the provider it must shut down."""

    def __init__(
        self, tracer: Tracer | None, policy: str, owned: SdkTracerProvider | None = None
    ) -> None:
        self._tracer = tracer
        self._policy = policy
        self._owned = owned

    @classmethod
    def configure(
        cls,
        settings: Settings,
        provider: TracerProvider | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Tracing:
        """Tracing as configured (``telemetry.traces`` and the ``OTEL_*`` environment), or into
        ``provider`` whatever they say (tests give one with an in-memory exporter)."""
        policy = settings.admission.policy
        owned = None
        if provider is None:
            environ = os.environ if environ is None else environ
            export = resolve_export(settings.telemetry.traces, environ)
            if export is None:
                return cls(None, policy)
            provider = owned = build_provider(export)
            log.info("tracing on: spans to %s", export.describe())
        return cls(provider.get_tracer("fairgate", fairgate.__version__), policy, owned)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def wrap(self, endpoint: Endpoint, handler: Handler) -> Handler:
        """``handler`` with a SERVER span around each request (``handler`` itself when off)."""
        tracer = self._tracer
        if tracer is None:
            return handler
        operation, policy = OPERATIONS[endpoint], self._policy

        async def traced(request: web.Request) -> web.StreamResponse:
            span = _server_span(tracer, operation, policy, request)
            live: _Sampled | _Unsampled
            if span.is_recording():
                live = _Sampled(tracer, span, operation, endpoint.value)
            else:  # the sampler said no: no other span, only the context goes on
                live = _Unsampled(span)
            serving = _CURRENT.set(live)
            try:
                response = await handler(request)
            except BaseException as exc:
                live.end(None, exc)
                raise
            finally:
                _CURRENT.reset(serving)
            live.end(response, None)
            return response

        return traced

    async def close(self, app: web.Application | None = None) -> None:
        """Export what is left and stop the exporter (a provider given to it is the giver's)."""
        if self._owned is not None:
            await asyncio.to_thread(self._owned.shutdown)


# --------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TraceExport:
    """Where spans go and which are kept, once the file and the environment are merged.

    None means the SDK decides from its own ``OTEL_*`` variable, which then wins.
    """

    exporter: str  # "otlp" or "console"
    endpoint: str | None  # the OTLP/HTTP traces URL; None: OTEL_EXPORTER_OTLP_*ENDPOINT
    sample_ratio: float | None  # None: OTEL_TRACES_SAMPLER (and OTEL_TRACES_SAMPLER_ARG)
    service_name: str | None  # None: OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES

    def describe(self) -> str:
        if self.exporter == "console":
            return "the console"
        return self.endpoint or "the OTEL_EXPORTER_OTLP_* endpoint"


_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_DEFAULT_ENDPOINT = "http://localhost:4318"


def resolve_export(config: TracesConfig, environ: Mapping[str, str]) -> TraceExport | None:
    """Whether to trace and where to, from ``telemetry.traces`` and the standard variables.

    Off when ``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none`` or ``enabled: false``;
    on when ``enabled: true``, else when a collector is named (``endpoint``, or either OTLP
    endpoint variable) or ``OTEL_TRACES_EXPORTER`` asks for an exporter. Each ``OTEL_*``
    value wins over the file's.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or config.enabled is False:
        return None
    from_env = any(environ.get(name, "").strip() for name in _ENDPOINT_VARS)
    if config.enabled is None and not (from_env or config.endpoint or exporter):
        return None
    if exporter not in ("", "otlp", "console"):
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported; using otlp", exporter)
    endpoint = None
    if not from_env:
        base = str(config.endpoint).rstrip("/") if config.endpoint else _DEFAULT_ENDPOINT
        endpoint = f"{base}/v1/traces"
    sampled = environ.get("OTEL_TRACES_SAMPLER", "").strip()
    return TraceExport(
        "console" if exporter == "console" else "otlp",
        endpoint,
        None if sampled else config.sample_ratio,
        None if _names_service(environ) else config.service_name,
    )


def _names_service(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        return True
    pairs = environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    return any(pair.partition("=")[0].strip() == "service.name" for pair in pairs)


def build_provider(export: TraceExport) -> SdkTracerProvider:
    """A tracer provider exporting in batches from a thread of its own.

    The SDK and the exporter are imported here, only when tracing is on (the exporter brings
    ``requests`` and ``protobuf``).
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    attributes: dict[str, str] = {SERVICE_VERSION: fairgate.__version__}
    if export.service_name is not None:
        attributes[SERVICE_NAME] = export.service_name
    sampler = None
    if export.sample_ratio is not None:
        sampler = ParentBased(TraceIdRatioBased(export.sample_ratio))
    provider = SdkTracerProvider(sampler=sampler, resource=Resource.create(attributes))
    exporter: SpanExporter
    if export.exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=export.endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


# ------------------------------------------------------------------- one request's trace


def _server_span(tracer: Tracer, operation: str, policy: str, request: web.Request) -> Span:
    """The request's SERVER span, a child of the caller's ``traceparent`` if it sent one (its
    name gets the model once the body is read)."""
    return tracer.start_span(
        operation,
        _W3C.extract(request.headers),
        SpanKind.SERVER,
        {
            "gen_ai.operation.name": operation,
            "fairgate.request_id": request_id_of(request),
            "fairgate.admission.policy": policy,
        },
    )


def _carry(headers: dict[str, str], context: Context) -> dict[str, str]:
    """The engine request's ``headers`` with ``context`` as its trace context (in place of
    the client's)."""
    headers.pop("traceparent", None)
    headers.pop("tracestate", None)
    _W3C.inject(headers, context)
    return headers


class _Unsampled(RequestTrace):
    """A request the sampler left out: its server span records nothing and no other span is
    made, but the engine gets the trace context (not sampled), so it leaves it out too."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self._context = trace.set_span_in_context(span)

    def calling(self, backend: Backend, headers: dict[str, str]) -> dict[str, str]:
        return _carry(headers, self._context)

    def end(self, response: web.StreamResponse | None, error: BaseException | None) -> None:
        self.span.end()


class _Sampled(_Unsampled):
    """The spans of one sampled request, from its arrival until its handler returns or raises."""

    def __init__(self, tracer: Tracer, span: Span, operation: str, path: str) -> None:
        super().__init__(span)
        self._tracer = tracer
        self._operation = operation
        self._path = path
        self._flight: InFlight | None = None
        self._call: Span | None = None
        self._backend: Backend | None = None
        self._steps: dict[str, float] = {}  # seconds spent in each step (summed on a retry)
        self._first_token = False
        self._finish_reasons: list[str] = []
        self._model: str | None = None
        self._placed = False
        self.tap = self._tap

    def attach(self, flight: InFlight) -> None:
        self._flight = flight
        self.span.update_name(f"{self._operation} {flight.parsed.model}")
        self.span.set_attributes(_arrival_attributes(flight))

    def step(self, name: str) -> AbstractContextManager[None]:
        return self._step(name)

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        span = self._tracer.start_span(name, self._context, SpanKind.INTERNAL)
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, _DISCONNECTS):
                _failed(span, _failure(exc)[2])
            raise
        finally:
            self._steps[name] = self._steps.get(name, 0.0) + time.monotonic() - started
            span.end()

    def placed(self, place: QueuePlace) -> None:
        if self._placed:  # on arrival: a retry's second ask does not count
            return
        self._placed = True
        self.span.set_attributes(
            {"fairgate.queue.position": place.ahead, "fairgate.queue.depth": place.depth}
        )

    def calling(self, backend: Backend, headers: dict[str, str]) -> dict[str, str]:
        self._end_call(None, None)  # (never open here: a failed call ended in call_failed)
        self._backend = backend
        url = backend.config.url
        self._call = self._tracer.start_span(
            f"POST {self._path}",
            self._context,
            SpanKind.CLIENT,
            {
                "http.request.method": "POST",
                "server.address": url.host or "",
                "server.port": url.port or 0,
                "url.full": f"{url.scheme}://{url.host}:{url.port}"
                f"{(url.path or '').rstrip('/')}{self._path}",  # never the URL's credentials
            },
        )
        return _carry(headers, trace.set_span_in_context(self._call))  # its parent: the call

    def call_failed(self, error: BaseException) -> None:
        self._end_call(None, type(error).__name__)

    def _tap(self, data: bytes, chunks: int) -> None:
        if chunks and not self._first_token:
            self._first_token = True
            self.span.add_event(FIRST_TOKEN)
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        """The finish reasons and model of an engine's answer (or of a part of a stream)."""
        if b'"finish_reason"' in data and len(self._finish_reasons) < _MAX_FINISH_REASONS:
            found = [reason.decode() for reason in _FINISH_REASON.findall(data)]
            self._finish_reasons += found[: _MAX_FINISH_REASONS - len(self._finish_reasons)]
        if self._model is None and (model := _MODEL.search(data)) is not None:
            self._model = model.group(1).decode(errors="replace")

    def end(self, response: web.StreamResponse | None, error: BaseException | None) -> None:
        """The handler returned ``response`` or raised ``error``: end every span still open.

        Never raises: a trace must not fail the request it describes.
        """
        try:
            self._end(response, error)
        except Exception:
            log.exception("tracing failed at the end of a request")

    def _end(self, response: web.StreamResponse | None, error: BaseException | None) -> None:
        flight = self._flight
        status: int | None
        error_type: str | None
        if error is not None:
            outcome, status, error_type = _failure(error)
        else:
            assert response is not None
            status = response.status
            outcome, error_type = _answered(status, flight)
            body = response.body if isinstance(response, web.Response) else None
            if status < 400 and isinstance(body, bytes):
                self._scan(body)
        attributes: dict[str, Any] = {"fairgate.outcome": outcome}
        if status is not None:
            attributes["http.response.status_code"] = status
        if error_type is not None:
            attributes["error.type"] = error_type
        if "queue" in self._steps:
            attributes["fairgate.queue.wait_s"] = self._steps["queue"]
        grant = flight.grant if flight is not None else None
        backend = grant.backend if grant is not None else self._backend
        if backend is not None:
            attributes["fairgate.backend"] = backend.name
            attributes["server.address"] = backend.config.url.host or ""
        if flight is not None and flight.outcome is not None:
            attributes.update(_usage_attributes(flight.outcome.usage))
        if self._model is not None:
            attributes["gen_ai.response.model"] = self._model
        if self._finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = self._finish_reasons
        self._end_call(
            grant.upstream.status if grant is not None else None,
            error_type if outcome == UPSTREAM_ERROR else None,
        )
        self.span.set_attributes(attributes)
        if outcome in FAULTS:
            self.span.set_status(StatusCode.ERROR, error_type)
        self.span.end()

    def _end_call(self, status: int | None, error_type: str | None) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        if status is not None:
            call.set_attribute("http.response.status_code", status)
        if error_type is not None:
            _failed(call, error_type)
        call.end()


def _failed(span: Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(StatusCode.ERROR, error_type)


def _arrival_attributes(flight: InFlight) -> dict[str, Any]:
    """What is known once the request is estimated and routed (never its content)."""
    parsed, cost = flight.parsed, flight.cost
    attributes: dict[str, Any] = {
        "gen_ai.request.model": parsed.model,
        "fairgate.tenant": flight.tenant_id,
        "fairgate.pool": flight.pool.name,
        "fairgate.priority": flight.ticket.priority,
        "fairgate.stream": parsed.stream,
        "fairgate.estimate.prompt_tokens": cost.prompt_tokens,
        "fairgate.estimate.output_tokens": cost.expected_output,
    }
    if rule := flight.headers.get(header_names.ROUTE):
        attributes["fairgate.routing.rule"] = rule
    body = parsed.body
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool):
        attributes["gen_ai.request.max_tokens"] = limit
    return attributes


def _usage_attributes(usage: dict[str, Any] | None) -> dict[str, int]:
    """The engine's own token counts (the estimate's are ``fairgate.estimate.*``)."""
    found = {}
    for key, name in (
        ("prompt_tokens", "gen_ai.usage.input_tokens"),
        ("completion_tokens", "gen_ai.usage.output_tokens"),
    ):
        value = (usage or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            found[name] = value
    return found


def _answered(status: int, flight: InFlight | None) -> tuple[str, str | None]:
    """How a request that got a response ended: its outcome and error type (None: none)."""
    relayed = flight.outcome if flight is not None else None
    if relayed is not None and relayed.error is not None:  # the engine broke off a stream
        return UPSTREAM_ERROR, relayed.error.partition(":")[0]
    if status >= 500:
        return UPSTREAM_ERROR, str(status)
    if status >= 400:
        return INVALID_REQUEST, str(status)
    return OK, None


def _failure(error: BaseException) -> tuple[str, int | None, str]:
    """How a request whose handler raised ended: its outcome, the HTTP status answered (None
    if none was: the client left), and its error type (a class name or the error's code)."""
    if isinstance(error, _DISCONNECTS):
        return CLIENT_DISCONNECT, None, type(error).__name__
    answer = _answer_of(error)
    status = answer.status if answer is not None else 500
    for cause in _causes(error):
        for kind, outcome in _KINDS:
            if isinstance(cause, kind):
                return outcome, status, type(cause).__name__
    code = answer.code if answer is not None and answer.code else type(error).__name__
    if code in _UPSTREAM_CODES:
        return UPSTREAM_ERROR, status, code
    if code == "admission_unavailable":
        return UNAVAILABLE, status, code
    if isinstance(error, web.HTTPException):
        status = error.status
    return (INVALID_REQUEST if status < 500 else INTERNAL_ERROR), status, code


def _answer_of(error: BaseException) -> GatewayError | None:
    """The error response the middleware makes of ``error`` (None: none of the gateway's)."""
    if isinstance(error, GatewayError):
        return error
    try:
        return as_gateway_error(error)  # type: ignore[arg-type]
    except TypeError:
        return None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it was raised from (a refusal wrapped with its quota headers)."""
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__
