"""Reading a gateway's ``/metrics`` in tests: every sample by name and labels, as Prometheus
would parse it (prometheus_client's own text parser)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningGateway

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(gateway: RunningGateway) -> Samples:
    async with gateway.http.get(f"{gateway.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return parse(text)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample of ``name`` with exactly ``labels`` (None if there is none)."""
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def series(samples: Samples, name: str) -> list[Mapping[str, str]]:
    """The label sets of every sample of ``name``."""
    return [dict(have) for (n, have), _ in samples.items() if n == name]
