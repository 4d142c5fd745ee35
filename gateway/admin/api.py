"""Declaring admin operations once: their route, their models and their OpenAPI entry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from fairgate.errors import GatewayError, invalid_request
from fairgate.settings import describe_validation
from gateway import requests
from gateway.admin.auth import require_admin
from gateway.state import GATEWAY, Gateway

AdminHandler = Callable[[web.Request, Gateway], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Param:
    """A path or query parameter, as OpenAPI describes it."""

    name: str
    where: str  # "path", "query" or "header"
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = True


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: AdminHandler
    summary: str
    tag: str
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    errors: tuple[int, ...]
    params: tuple[Param, ...]
    produces: str
    headers: tuple[str, ...]
    public: bool


class AdminApi:
    """The admin operations, in declaration order."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        body: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        errors: Sequence[int] = (),
        params: Sequence[Param] = (),
        produces: str = "application/json",
        headers: Sequence[str] = (),
        public: bool = False,
    ) -> Callable[[AdminHandler], AdminHandler]:
        """Declare an operation; ``public`` ones need no admin token (the page, the
        document). Every other operation may answer 401 and 403 besides ``errors``."""

        def register(handler: AdminHandler) -> AdminHandler:
            self.operations.append(
                Operation(
                    method, path, handler, summary, tag, body, response, status,
                    tuple(errors), tuple(params), produces, tuple(headers), public,
                )
            )  # fmt: skip
            return handler

        return register

    def install(self, app: web.Application) -> None:
        """Route every operation on ``app``, behind the admin token where it is not public."""
        for operation in self.operations:
            app.router.add_route(operation.method, operation.path, _handler(operation))


def _handler(operation: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        if not operation.public:
            require_admin(request, gateway.admin_tokens, gateway.directory)
        return await operation.handler(request, gateway)

    return handle


#: Every admin operation (the modules of this package declare theirs on it when imported).
ADMIN = AdminApi()


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400 saying what is wrong with it. Numbers JSON
    cannot carry back (``1e400``, ``NaN``, ``Infinity``) are refused: stored, they would be
    answered as invalid JSON."""
    timeout_s = request.app[GATEWAY].settings.server.body_timeout_s
    raw = await requests.read_body(request, timeout_s)
    return requests.json_object(raw, finite_numbers=True)


def validated(model: type[M], data: Any, at: str = "") -> M:
    """``data`` as ``model``, or 400 naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        described = describe_validation(exc, at)
        first = exc.errors(include_url=False)[0]["loc"]
        param = ".".join(str(part) for part in first) or None
        raise invalid_request(
            f"Invalid request body:\n{described}" if described else "Invalid request body.",
            param,
        ) from None


def as_json(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status, headers=headers)


def error(status: int, message: str, code: str) -> GatewayError:
    return GatewayError(status, message, code=code)
