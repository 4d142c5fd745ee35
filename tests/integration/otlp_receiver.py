"""A minimal OTLP/HTTP trace receiver, a process of its own for the tests (a collector stand-in).

``python tests/integration/otlp_receiver.py --port N --out FILE``: accepts ``POST /v1/traces``
in protobuf (gzip or not), decodes it with ``opentelemetry-proto`` as a collector would, and
appends one JSON line per span to FILE (name, kind, ids, attributes, event names, status and
its resource's attributes); ``GET /health`` answers when it listens. A test then reads what a
gateway process really exported over the wire.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"


def value_of(value: AnyValue) -> Any:
    """An attribute's value as JSON can hold it."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind in (None, "kvlist_value"):
        return None
    return getattr(value, kind)


def attributes_of(pairs: list[KeyValue]) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs}


def spans_of(export: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """One plain record per span of an export request."""
    found = []
    for resource_spans in export.resource_spans:
        resource = attributes_of(list(resource_spans.resource.attributes))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    {
                        "name": span.name,
                        "kind": span.kind,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "attributes": attributes_of(list(span.attributes)),
                        "events": [event.name for event in span.events],
                        "status": span.status.code,
                        "scope": scope_spans.scope.name,
                        "resource": resource,
                    }
                )
    return found


def receiver_app(out: Path) -> web.Application:
    async def traces(request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        spans = spans_of(ExportTraceServiceRequest.FromString(body))
        with out.open("a", encoding="utf-8") as file:
            file.writelines(json.dumps(span) + "\n" for span in spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF
        )

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    web.run_app(receiver_app(args.out), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
