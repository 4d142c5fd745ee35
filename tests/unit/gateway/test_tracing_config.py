"""Whether to trace and where to: ``telemetry.traces`` merged with the standard OTEL_* variables
(gateway/tracing.py ``resolve_export``), the OTEL_* value winning over the file's."""

from __future__ import annotations

from typing import Any

import pytest

from fairgate.settings import TracesConfig
from gateway.tracing import TraceExport, resolve_export

COLLECTOR = "http://collector:4318"


def traces(**fields: Any) -> TracesConfig:
    return TracesConfig(**fields)


def test_off_when_nothing_is_configured() -> None:
    assert resolve_export(traces(), {}) is None


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": COLLECTOR + "/v1/traces"},
    ],
)
def test_an_endpoint_variable_turns_tracing_on_and_the_exporter_reads_it(
    environ: dict[str, str],
) -> None:
    assert resolve_export(traces(), environ) == TraceExport("otlp", None, 1.0, "fairgate")


def test_an_endpoint_in_the_file_turns_tracing_on_at_its_traces_path() -> None:
    export = resolve_export(traces(endpoint=COLLECTOR + "/"), {})
    assert export == TraceExport("otlp", COLLECTOR + "/v1/traces", 1.0, "fairgate")


def test_the_variables_win_over_the_file() -> None:
    config = traces(endpoint=COLLECTOR, sample_ratio=0.25, service_name="from-file")
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318",
        "OTEL_TRACES_SAMPLER": "always_off",
        "OTEL_SERVICE_NAME": "from-env",
    }
    # None: the SDK and the exporter read their own variable
    assert resolve_export(config, environ) == TraceExport("otlp", None, None, None)


def test_a_service_name_among_the_resource_attributes_wins_too() -> None:
    environ = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, service.name=gw"}
    export = resolve_export(traces(enabled=True), environ)
    assert export is not None and export.service_name is None
    other = {"OTEL_RESOURCE_ATTRIBUTES": "service.namespace=x"}
    export = resolve_export(traces(enabled=True), other)
    assert export is not None and export.service_name == "fairgate"


def test_enabled_without_an_endpoint_exports_to_the_default_collector() -> None:
    export = resolve_export(traces(enabled=True, sample_ratio=0.5), {})
    assert export == TraceExport("otlp", "http://localhost:4318/v1/traces", 0.5, "fairgate")


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_SDK_DISABLED": " TRUE "},
        {"OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_the_sdk_switches_turn_tracing_off_whatever_the_file_says(environ: dict[str, str]) -> None:
    environ = {**environ, "OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR}
    assert resolve_export(traces(enabled=True, endpoint=COLLECTOR), environ) is None


def test_enabled_false_turns_tracing_off_even_with_a_collector_named() -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR}
    assert resolve_export(traces(enabled=False), environ) is None


def test_otel_sdk_disabled_false_does_not_turn_tracing_on() -> None:
    assert resolve_export(traces(), {"OTEL_SDK_DISABLED": "false"}) is None


def test_the_console_exporter_turns_tracing_on_for_a_look_without_a_collector() -> None:
    export = resolve_export(traces(), {"OTEL_TRACES_EXPORTER": "console"})
    assert export is not None and export.exporter == "console"


def test_sample_ratio_is_a_share() -> None:
    with pytest.raises(ValueError, match="less than or equal to 1"):
        traces(sample_ratio=1.5)
