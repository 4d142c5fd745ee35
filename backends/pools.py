"""Pools of interchangeable engines, and which pools serve which model.

The model named in a request selects the pools that serve it (restricted to the pools its
tenant may use); the routing rules (:mod:`backends.classify`) choose one of them by the
request's estimated cost. Within a pool, backends are tried round robin, healthy ones first.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from backends.affinity import AffinityMode, preferred_backend, session_key
from backends.backend import Backend
from backends.classify import Classifier
from fairgate.settings import Settings


class Pool:
    """A named set of backends that serve the same models."""

    def __init__(
        self,
        name: str,
        backends: list[Backend],
        tokenize: str = "local",
        affinity: AffinityMode = "off",
        affinity_slack_tokens: int = 0,
    ) -> None:
        self.name = name
        self.backends = backends
        self.tokenize = tokenize
        self.affinity: AffinityMode = affinity
        self.affinity_slack_tokens = affinity_slack_tokens
        self.models = frozenset(m for b in backends for m in b.config.models)
        self._turn = itertools.count()

    def session_backend(self, headers: Mapping[str, str], body: dict[str, Any]) -> str:
        """The backend this request's session prefers ('' without affinity or a session)."""
        session = session_key(self.affinity, headers, body)
        return preferred_backend(session, (b.name for b in self.backends))

    def candidates(self) -> list[Backend]:
        """Backends to try, in order: the next in the rotation first, unhealthy ones last."""
        start = next(self._turn) % len(self.backends)
        rotated = self.backends[start:] + self.backends[:start]
        return sorted(rotated, key=lambda b: not b.healthy)


class Router:
    """Every pool of the configuration, and the model-to-pool lookup."""

    def __init__(self, settings: Settings) -> None:
        self.pools = {
            name: Pool(
                name,
                [Backend(b_name, b) for b_name, b in pool.backends.items()],
                pool.tokenize,
                pool.affinity,
                pool.affinity_slack_tokens,
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

    async def close(self) -> None:
        for backend in self.backends:
            await backend.close()
