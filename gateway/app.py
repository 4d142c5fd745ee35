"""Building and serving the gateway's aiohttp application.

The application owns its Redis client, the backends' HTTP sessions and their state (health
probes, engine-load scrapes), and closes them on shutdown. Serve it with
:func:`fairgate.serving.serve`, which cancels a handler as soon as its client disconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.trace import TracerProvider

from admission.controller import Admission
from admission.quota import Quotas
from backends.pools import Router
from backends.state import BackendStates
from estimators.estimator import CostEstimator
from estimators.tokenizer import default_tokenizer, tokenizer_for
from fairgate.redis_client import connect
from fairgate.settings import Settings
from gateway import handlers, own_tenant
from gateway.accounting import account_requests
from gateway.admin import routes as admin_routes
from gateway.logs import quiet_routine_client_errors
from gateway.metrics import GatewayMetrics
from gateway.middleware import admin_port_only, openai_errors, request_id
from gateway.requests import Endpoint
from gateway.runtime import Runtime
from gateway.state import GATEWAY, Gateway
from gateway.tracing import Tracing
from gateway.worker_metrics import SIBLINGS, Siblings, WorkerPlace
from tenants.directory import Directory

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    tracer_provider: TracerProvider | None = None,
    worker: WorkerPlace | None = None,
) -> web.Application:
    """The gateway application for ``settings`` (resources open when it starts).

    Requests are traced as ``telemetry.traces`` and the ``OTEL_*`` variables say, or into
    ``tracer_provider`` if given (a test's, with an in-memory exporter). ``worker``: this
    process is one of ``fairgate serve --workers N`` (its ``/metrics`` shows every worker's).
    """
    quiet_routine_client_errors()
    middlewares: list[Middleware] = [request_id, openai_errors, account_requests]
    if settings.server.admin_port is not None:
        middlewares.append(admin_port_only(settings.server.admin_port))
    app = web.Application(middlewares=middlewares, client_max_size=settings.server.max_body_bytes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        redis = connect(settings.redis)
        router = Router(settings)
        directory = Directory(redis, settings)
        await directory.start()
        admission = Admission(redis, settings, directory.tenants)
        await admission.start()
        backend_states = BackendStates(router.backends, admission, settings)
        await backend_states.start()
        await asyncio.to_thread(load_tokenizers, settings)
        estimator = CostEstimator(settings, redis)
        gateway = Gateway(
            settings,
            redis,
            directory,
            router,
            backend_states,
            estimator,
            GatewayMetrics(settings.telemetry.metrics),
            admission,
            Quotas(redis, settings),
        )
        app[GATEWAY] = gateway
        await gateway.usage.preload()
        await gateway.live.start()
        gateway.access_log.start()
        runtime = Runtime(settings.server, gateway.metrics.registry)
        runtime.start()  # last: what start-up built is frozen out of the collector's view
        yield
        await runtime.stop()
        await gateway.live.stop()
        await gateway.meters.stop()
        await gateway.stalls.close()
        await gateway.silent_engines.close()
        await gateway.drain()
        gateway.access_log.stop()
        await gateway.usage.close()  # after drain: the last requests' settlements counted
        await backend_states.stop()
        await estimator.close()
        await admission.stop()
        await directory.stop()
        await router.close()
        await redis.aclose()

    app.cleanup_ctx.append(lifecycle)
    if worker is not None:
        siblings = app[SIBLINGS] = Siblings(worker)

        async def close_siblings(_app: web.Application) -> None:
            await siblings.close()

        app.on_cleanup.append(close_siblings)
    tracing = Tracing.configure(settings, tracer_provider)
    app.on_cleanup.append(tracing.close)
    for endpoint in Endpoint:
        app.router.add_post(endpoint.value, tracing.wrap(endpoint, handlers.inference(endpoint)))
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/tenant", own_tenant.own_tenant)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    admin_routes.install(app)
    return app


def load_tokenizers(settings: Settings) -> None:
    """Load every tokenizer the estimates need before serving, not on the first request.

    Loading cl100k_base takes about 0.25 s of CPU: done lazily, the first request (and every
    request that arrives meanwhile, since it holds the event loop) would pay for it.
    """
    default_tokenizer()
    for model in settings.models.values():
        tokenizer_for(model.tokenizer)
