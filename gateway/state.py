"""What one gateway process holds for its lifetime, shared by all handlers."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from backends.health import HealthChecker
from backends.pools import Router
from fairgate.settings import Settings
from gateway.auth import KeyStore


@dataclass
class Gateway:
    settings: Settings
    redis: Redis
    keys: KeyStore
    router: Router
    health: HealthChecker


GATEWAY = web.AppKey("gateway", Gateway)
