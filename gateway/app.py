"""Building and serving the gateway's aiohttp application.

The application owns its Redis client, the backends' HTTP sessions and the health checker,
and closes them on shutdown. Serve it with :func:`fairgate.serving.serve`, which cancels a
handler as soon as its client disconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.exceptions import RedisError

from admission.controller import Admission
from backends.backend import Backend
from backends.engine_load import (
    EngineLoad,
    LoadScraper,
    effective_budget,
    tokens_in_use,
)
from backends.health import HealthChecker
from backends.pools import Router
from estimators.estimator import CostEstimator
from estimators.tokenizer import default_tokenizer, tokenizer_for
from fairgate.keys import AdmissionKeys
from fairgate.redis_client import GatewayRedis, connect
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
        engines = _engine_scraper(settings, router, admission, redis)
        keys = KeyStore(redis, settings)
        try:
            await keys.seed()
        except RedisError as exc:
            log.warning("could not seed API keys into Redis (%s); config keys still work", exc)
        await health.start()
        await engines.start()
        await asyncio.to_thread(load_tokenizers, settings)
        estimator = CostEstimator(settings, redis)
        gateway = Gateway(
            settings, redis, keys, router, health, estimator, GatewayMetrics(), admission
        )
        app[GATEWAY] = gateway
        yield
        await gateway.meters.stop()
        await gateway.drain()
        await engines.stop()
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


def _engine_scraper(
    settings: Settings, router: Router, admission: Admission, redis: GatewayRedis
) -> LoadScraper:
    """Scrape each engine's own metrics and pass what they say on to admission.

    An engine that queues requests inside it is held (busy) until a later scrape shows it
    drained; its KV usage corrects the least-loaded choice; the KV capacity it reports becomes
    its token budget unless the configuration sets one.
    """
    interval = settings.server.engine_load_interval_s

    async def reported(backend: Backend, load: EngineLoad | None) -> None:
        budget = effective_budget(backend.config, load)
        await admission.engine_reported(
            backend.name,
            2 * scraper.next_delay(load) if scraper.saturated(load) else 0.0,
            tokens_in_use(load),
            budget.max_inflight_tokens if budget.tokens_source == "engine" else None,
            scraper.max_age_s,
        )

    scraper = LoadScraper(
        router.backends,
        interval,
        redis,
        AdmissionKeys.of(settings.redis.key_prefix).engine_load,
        on_load=reported,
        max_waiting=settings.admission.engine_max_waiting,
    )
    return scraper


def load_tokenizers(settings: Settings) -> None:
    """Load every tokenizer the estimates need before serving, not on the first request.

    Loading cl100k_base takes about 0.25 s of CPU: done lazily, the first request (and every
    request that arrives meanwhile, since it holds the event loop) would pay for it.
    """
    default_tokenizer()
    for model in settings.models.values():
        tokenizer_for(model.tokenizer)
