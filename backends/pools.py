"""Pools of interchangeable engines, and which pools serve which model.

The model named in a request selects the pools that serve it (restricted to the pools its
tenant may use); the routing rules (:mod:`backends.classify`) choose one of them by the
request's estimated cost. Within a pool, backends are tried round robin, healthy ones first.
"""

from __future__ import annotations

import itertools

from backends.backend import Backend
from backends.classify import Classifier
from fairgate.settings import Settings


class Pool:
    """A named set of backends that serve the same models."""

    def __init__(self, name: str, backends: list[Backend], tokenize: str = "local") -> None:
        self.name = name
        self.backends = backends
        self.tokenize = tokenize
        self.models = frozenset(m for b in backends for m in b.config.models)
        self._turn = itertools.count()

    def candidates(self) -> list[Backend]:
        """Backends to try, in order: the next in the rotation first, unhealthy ones last."""
        start = next(self._turn) % len(self.backends)
        rotated = self.backends[start:] + self.backends[:start]
        return sorted(rotated, key=lambda b: not b.healthy)


class Router:
    """Every pool of the configuration, and the model-to-pool lookup."""

    def __init__(self, settings: Settings) -> None:
        backoff = settings.server.unhealthy_backoff_s
        self.pools = {
            name: Pool(
                name,
                [Backend(b_name, name, b, backoff) for b_name, b in pool.backends.items()],
                pool.tokenize,
            )
            for name, pool in settings.pools.items()
        }
        self.classifier = Classifier(
            settings.routing.rules, {name: pool.models for name, pool in self.pools.items()}
        )
        self._by_name = {b.name: b for pool in self.pools.values() for b in pool.backends}

    @property
    def backends(self) -> list[Backend]:
        return list(self._by_name.values())

    def backend(self, name: str) -> Backend:
        return self._by_name[name]

    def pools_for(self, model: str, allowed: list[str] | None) -> list[Pool]:
        """The pools that serve ``model`` among those in ``allowed`` (all if None)."""
        return [
            pool
            for name, pool in self.pools.items()
            if model in pool.models and (allowed is None or name in allowed)
        ]

    def models_for(self, allowed: list[str] | None) -> list[str]:
        """Every model served by the pools in ``allowed`` (all if None), sorted."""
        return sorted(
            {
                m
                for name, p in self.pools.items()
                if allowed is None or name in allowed
                for m in p.models
            }
        )

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()

    async def close(self) -> None:
        for backend in self.backends:
            await backend.close()
