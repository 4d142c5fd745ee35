"""The Grafana dashboard (config/grafana/fairgate.json): every metric its queries read is one
a running gateway serves on ``/metrics`` once it has seen traffic.

Real parts: a simulated engine on loopback, an in-process gateway on a real redis-server, the
official ``openai`` client.
"""

from __future__ import annotations

import openai
import pytest

from tests.conftest import StartGateway, StartSim, gateway_config
from tests.integration.dashboard import dashboard, queries, variable_metrics
from tests.integration.scrape import scrape

MODEL = "llama-3-8b"


def test_the_dashboard_is_laid_out_on_grafanas_grid() -> None:
    board = dashboard()
    assert board["uid"] == "fairgate"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            refs = [target["refId"] for target in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
    titles = " ".join(panel["title"] for panel in board["panels"]).lower()
    for subject in ("queue wait", "first token", "share of service", "jain", "rejections",
                    "backend load", "backend health"):  # fmt: skip
        assert subject in titles


async def test_every_metric_the_dashboard_reads_is_served(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    sim = await start_sim(time_scale=100.0)
    gateway = await start_gateway(gateway_config(redis_url, {"chat": [sim.url]}))
    client = gateway.client()
    messages = [{"role": "user", "content": "hi"}]
    await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, stream=True
    )
    async for _ in stream:
        pass
    with pytest.raises(openai.AuthenticationError):
        await gateway.client("nobody").chat.completions.create(model=MODEL, messages=messages)

    served = {name for name, _ in await scrape(gateway)}
    read = set().union(*(query.metrics for query in queries())) | variable_metrics()
    assert read, "the dashboard reads no fairgate metric"
    assert sorted(read - served) == []
