"""``/metrics`` of one worker of ``fairgate serve --workers N``: every worker's series.

Workers share one port, so a scrape reaches whichever the kernel picked. If each answered with
its own counters alone, a Prometheus server would see a counter jump between the workers'
values at every scrape (and ``rate()`` read resets). So the worker that is scraped also reads
its siblings' own series (each worker listens on a private loopback port, given by the
supervisor: :mod:`fairgate.workers`) and answers all of them, each series labelled
``worker="<index>"``: whichever worker answers, the scrape is the same set of series, and
``sum without (worker)`` gives the host's figure, as ``sum`` over replicas does.

The shared state read from Redis (``fairgate_shared_*``, ``fairgate_admission_events``) is the
same in every worker: it is given once, from the worker scraped, without a ``worker`` label
(never to be summed).
``fairgate_worker_up{worker}`` says whose series this scrape has (0: a sibling that did not
answer within :data:`SIBLING_TIMEOUT_S`, e.g. one being restarted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.shared_metrics import is_shared

#: How long a scrape waits for a sibling's series.
SIBLING_TIMEOUT_S = 2.0
#: The query that asks a worker for its own series alone (what siblings ask each other).
OWN_SCOPE = ("scope", "worker")


@dataclass(frozen=True)
class WorkerPlace:
    """Which worker this process is, and every worker's private port (by index)."""

    index: int
    private_ports: tuple[int, ...]


class Siblings:
    """Reads the other workers' own series and merges them with this worker's."""

    def __init__(self, place: WorkerPlace) -> None:
        self.place = place
        self._session: aiohttp.ClientSession | None = None

    async def exposition(self, own: CollectorRegistry) -> bytes:
        """Every worker's series (``worker`` label) and the shared ones once, as text."""
        others = [i for i in range(len(self.place.private_ports)) if i != self.place.index]
        texts = await asyncio.gather(*(self._read(i) for i in others))
        families = _Merged()
        families.add(own.collect(), self.place.index, keep_shared=True)
        up = {self.place.index: True}
        for index, text in zip(others, texts, strict=True):
            up[index] = text is not None
            if text is not None:
                families.add(text_string_to_metric_families(text), index, keep_shared=False)
        families.up(up)
        return generate_latest(families)  # type: ignore[arg-type]

    async def _read(self, index: int) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SIBLING_TIMEOUT_S)
            )
        url = f"http://127.0.0.1:{self.place.private_ports[index]}/metrics"
        try:
            async with self._session.get(url, params=[OWN_SCOPE]) as response:
                if response.status != 200:
                    return None
                return await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


#: The app's :class:`Siblings`, when it is one of several workers.
SIBLINGS = web.AppKey("siblings", Siblings)


class _Merged(Collector):
    """Families by name, their samples gathered from every worker (one HELP and TYPE each)."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, families: Iterable[Metric], worker: int, keep_shared: bool) -> None:
        label = str(worker)
        for family in families:
            shared = is_shared(family.name)
            if shared and not keep_shared:
                continue
            merged = self._families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                self._families[family.name] = merged
            for sample in family.samples:
                labels = sample.labels if shared else {**sample.labels, "worker": label}
                merged.samples.append(sample._replace(labels=labels))

    def up(self, answered: dict[int, bool]) -> None:
        gauge = GaugeMetricFamily(
            "fairgate_worker_up",
            "Whether this scrape holds the worker's series (fairgate serve --workers).",
            labels=["worker"],
        )
        for index, ok in sorted(answered.items()):
            gauge.add_metric([str(index)], 1.0 if ok else 0.0)
        self._families[gauge.name] = gauge

    def collect(self) -> Iterator[Metric]:
        yield from self._families.values()
