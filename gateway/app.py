"""Building and serving the gateway's aiohttp application.

The application owns its Redis client, the backends' HTTP sessions and the health checker,
and closes them on shutdown. Serve it with :func:`fairgate.serving.serve`, which cancels a
handler as soon as its client disconnects.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.exceptions import RedisError

from admission.controller import Admission
from backends.backend import Backend
from backends.health import HealthChecker
from backends.pools import Router
from estimators.estimator import CostEstimator
from fairgate.redis_client import connect
from fairgate.settings import Settings
from gateway import handlers
from gateway.auth import KeyStore
from gateway.metrics import GatewayMetrics
from gateway.middleware import openai_errors, request_id
from gateway.requests import Endpoint
from gateway.state import GATEWAY, Gateway

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    """The gateway application for ``settings`` (resources open when it starts)."""
    app = web.Application(
        middlewares=[request_id, openai_errors], client_max_size=settings.server.max_body_bytes
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        redis = connect(settings.redis)
        router = Router(settings)
        await router.start()
        admission = Admission(redis, settings)
        await admission.start()

        async def health_changed(backend: Backend, healthy: bool) -> None:
            down_for = 0.0 if healthy else settings.server.unhealthy_backoff_s
            await admission.set_backend_down(backend.name, down_for)

        health = HealthChecker(
            router.backends, settings.server.health_check_interval_s, health_changed
        )
        keys = KeyStore(redis, settings)
        try:
            await keys.seed()
        except RedisError as exc:
            log.warning("could not seed API keys into Redis (%s); config keys still work", exc)
        await health.start()
        estimator = CostEstimator(settings, redis)
        gateway = Gateway(
            settings, redis, keys, router, health, estimator, GatewayMetrics(), admission
        )
        app[GATEWAY] = gateway
        yield
        await gateway.drain()
        await health.stop()
        await admission.stop()
        await router.close()
        await redis.aclose()

    app.cleanup_ctx.append(lifecycle)
    for endpoint in Endpoint:
        app.router.add_post(endpoint.value, handlers.inference(endpoint))
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    return app
