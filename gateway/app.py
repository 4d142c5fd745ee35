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
from redis.exceptions import RedisError

from admission.controller import Admission
from admission.quota import Quotas
from backends.pools import Router
from backends.state import BackendStates
from estimators.estimator import CostEstimator
from estimators.tokenizer import default_tokenizer, tokenizer_for
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
        admission = Admission(redis, settings)
        await admission.start()
        backend_states = BackendStates(router.backends, admission, settings)
        keys = KeyStore(redis, settings)
        try:
            await keys.seed()
        except RedisError as exc:
            log.warning("could not seed API keys into Redis (%s); config keys still work", exc)
        await backend_states.start()
        await asyncio.to_thread(load_tokenizers, settings)
        estimator = CostEstimator(settings, redis)
        gateway = Gateway(
            settings,
            redis,
            keys,
            router,
            backend_states,
            estimator,
            GatewayMetrics(),
            admission,
            Quotas(redis, settings),
        )
        app[GATEWAY] = gateway
        yield
        await gateway.meters.stop()
        await gateway.drain()
        await backend_states.stop()
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


def load_tokenizers(settings: Settings) -> None:
    """Load every tokenizer the estimates need before serving, not on the first request.

    Loading cl100k_base takes about 0.25 s of CPU: done lazily, the first request (and every
    request that arrives meanwhile, since it holds the event loop) would pay for it.
    """
    default_tokenizer()
    for model in settings.models.values():
        tokenizer_for(model.tokenizer)
