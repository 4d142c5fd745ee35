"""The Grafana dashboard's queries (config/grafana/fairgate.json), for the tests that check them
against a gateway's ``/metrics`` and against a real Prometheus server."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tests.conftest import REPO

DASHBOARD = REPO / "config" / "grafana" / "fairgate.json"
_METRIC = re.compile(r"\bfairgate_[a-z0-9_]+\b")
#: What Grafana substitutes for the dashboard's variables ("All" tenants and pools).
_VARIABLES = {"$tenant": ".*", "$pool": ".*", "$__rate_interval": "1m"}


@dataclass(frozen=True)
class Query:
    panel: str
    expr: str

    @property
    def metrics(self) -> set[str]:
        """The metric names the query reads."""
        return set(_METRIC.findall(self.expr))

    @property
    def promql(self) -> str:
        """The query as Grafana sends it with every tenant and pool selected."""
        expr = self.expr
        for variable, value in _VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a variable the tests do not know in {self.expr}"
        return expr


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[Query]:
    """Every panel's queries, and the template variables' (which read label values)."""
    board = dashboard()
    found = [
        Query(panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
    return found


def variable_metrics() -> set[str]:
    """The metrics the template variables read their values from."""
    board = dashboard()
    return {
        name
        for variable in board["templating"]["list"]
        if variable["type"] == "query"
        for name in _METRIC.findall(variable["definition"])
    }
