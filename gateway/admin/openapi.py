"""``GET /admin/v1/openapi.json``: the OpenAPI 3.1 document, written from the declared
operations and their pydantic models (JSON Schema 2020-12, as OpenAPI 3.1 uses)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import fairgate
from gateway.admin.api import ADMIN, AdminApi, Operation
from gateway.admin.models import ErrorBody
from gateway.state import Gateway

_REF = "#/components/schemas/{model}"
_REASONS = {
    400: "The request is invalid; the message names the field.",
    401: "No admin token, or an incorrect one.",
    403: "A tenant's key was sent where an admin token is needed.",
    404: "No such tenant, key or backend.",
    409: "A conflict: the tenant exists already, or changed since the version in If-Match.",
    413: "The request body is too large.",
    503: "Redis, which holds the shared state, is unreachable.",
}


def document(api: AdminApi) -> dict[str, Any]:
    """The OpenAPI document of ``api``'s operations."""
    models = _models(api)
    refs, schema = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for operation in api.operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
            operation, {m: refs[(m, "validation")] for m in models}
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fairgate admin API",
            "version": fairgate.__version__,
            "description": "Tenants, keys, quotas, usage and live state of a fairgate "
            "deployment; every replica applies a change within a second.",
        },
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"adminToken": []}],
    }


def _models(api: AdminApi) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [ErrorBody]
    for operation in api.operations:
        for model in (operation.body, operation.response):
            if model is not None and model not in found:
                found.append(model)
    return found


def _operation(operation: Operation, refs: dict[type[BaseModel], Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "summary": operation.summary,
        "operationId": operation.handler.__name__,
        "tags": [operation.tag],
        "responses": {str(operation.status): _success(operation, refs)},
    }
    if operation.public:
        entry["security"] = []
    if operation.params:
        entry["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "description": p.description,
                "required": p.required or p.where == "path",
                "schema": p.schema,
            }
            for p in operation.params
        ]
    if operation.body is not None:
        entry["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[operation.body]}},
        }
    statuses = set(operation.errors) | ({413} if operation.body is not None else set())
    if not operation.public:
        statuses |= {401, 403, 503}
    error = {"content": {"application/json": {"schema": refs[ErrorBody]}}}
    for status in sorted(statuses):
        entry["responses"][str(status)] = {"description": _REASONS[status], **error}
    return entry


def _success(operation: Operation, refs: dict[type[BaseModel], Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": operation.summary}
    if operation.headers:
        answer["headers"] = {h: {"schema": {"type": "string"}} for h in operation.headers}
    if operation.response is not None:
        answer["content"] = {operation.produces: {"schema": refs[operation.response]}}
    else:  # undeclared: a JSON document is an object (this document), anything else text
        kind = "object" if operation.produces == "application/json" else "string"
        answer["content"] = {operation.produces: {"schema": {"type": kind}}}
    return answer


@ADMIN.route(
    "GET",
    "/admin/v1/openapi.json",
    summary="This document",
    tag="meta",
    public=True,
)
async def openapi(request: web.Request, gateway: Gateway) -> web.Response:
    return web.json_response(document(ADMIN))
