"""Inference request bodies: parsed once, checked leniently, forwarded nearly untouched.

The gateway checks only what it needs to route and account for a request: a JSON object with
a string ``model`` and the input field of its endpoint (``messages``, ``prompt`` or ``input``)
of the right shape. Every other field, known or not (``ignore_eos``, ``top_k``,
``chat_template_kwargs``...), goes to the engine exactly as sent; engines validate their own
parameters and their 4xx answers reach the client unchanged. The one exception is the field
that steers the engine's own scheduling (``priority``): only the gateway sets it.

The one change fairgate makes: a streamed request always asks the engine for the final usage
chunk, so the gateway learns the true token counts; whether the client asked for it is
remembered so the relay can drop the chunk again.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from fairgate.errors import GatewayError, body_too_large, invalid_request


class Endpoint(enum.Enum):
    """The inference endpoints fairgate serves, by path."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"

    @property
    def streams(self) -> bool:
        return self is not Endpoint.EMBEDDINGS


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1)
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None


_TokenInput = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class _Chat(_Lenient):
    messages: list[dict[str, Any]] = Field(min_length=1)


class _Completion(_Lenient):
    prompt: _TokenInput


class _Embedding(_Lenient):
    input: _TokenInput


_SHAPES: dict[Endpoint, type[_Lenient]] = {
    Endpoint.CHAT: _Chat,
    Endpoint.COMPLETIONS: _Completion,
    Endpoint.EMBEDDINGS: _Embedding,
}


@dataclass(slots=True)
class InferenceRequest:
    """A validated inference request and the body to forward."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    client_wants_usage: bool
    raw: bytes | None = None  # the client's bytes, while the body is forwarded unchanged

    def upstream_body(
        self, extra: dict[str, Any] | None = None, drop: tuple[str, ...] = ()
    ) -> bytes:
        """The JSON sent to the engine: the client's own bytes unless the body was changed,
        ``extra`` fields are set for this engine, or fields the client may not set are in it
        (``drop``)."""
        dropped = [name for name in drop if name in self.body]
        if self.raw is not None and not extra and not dropped:
            return self.raw
        body = {**self.body, **(extra or {})}
        for name in dropped:
            if not extra or name not in extra:
                del body[name]
        return json.dumps(body, separators=(",", ":")).encode()

    def sent(self) -> InferenceRequest:
        """The request once an engine has its body: what the relay and the settlement read
        of it (endpoint, model, stream, usage asked), without the body, which would otherwise
        stay parsed for as long as the answer streams (a short chat's is about 1.3 KB, a long
        prompt's its whole text, issue 17)."""
        return replace(self, body={}, raw=None)


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The request's body, decoded per its ``Content-Encoding``.

    413 at once for a ``Content-Length`` above the limit (before a byte of the body is read);
    400 for a body that cannot be decoded (it says ``deflate`` and is not, or it ends before
    its ``Content-Length``); 408 for a body that has not arrived within ``timeout_s``, so a
    client that trickles its body holds a connection no longer than that. The connection is
    closed after such an answer: what is left of the body cannot be trusted.
    """
    length = request.content_length
    if length is not None and length > request.client_max_size:
        raise _closing(body_too_large(request.client_max_size))
    try:
        if request.content.is_eof():  # the whole body is here already: no deadline to arm
            return await request.read()
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except RequestPayloadError as exc:
        cause = exc.__cause__ or exc
        raise _closing(invalid_request(f"The request body could not be read: {cause}.")) from None
    except TimeoutError:
        raise _closing(
            GatewayError(
                408,
                f"The request body did not arrive within {timeout_s:g} s.",
                code="request_timeout",
            )
        ) from None


def _closing(error: GatewayError) -> GatewayError:
    error.headers["Connection"] = "close"
    return error


class _NotFinite(ValueError):
    """A number JSON cannot carry back: ``1e400`` (infinite as a float), ``NaN``,
    ``Infinity``."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _no_constant(text: str) -> Any:
    raise _NotFinite(text)


def json_object(raw: bytes, finite_numbers: bool = False) -> dict[str, Any]:
    """A body as a JSON object; 400 saying why it is not one. Nesting deeper than the
    interpreter's recursion limit and integers of more than 4,300 digits (Python's limit on
    converting them) are refused here, so nothing later meets them; with ``finite_numbers``,
    so are numbers JSON cannot carry back (what is stored and answered again must be JSON).
    Inference bodies keep them: the engine judges its own parameters."""
    try:
        if finite_numbers:
            body = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
        else:
            body = json.loads(raw)
    except _NotFinite as exc:
        raise invalid_request(f"The request body has a number JSON cannot carry: {exc}.") from None
    except RecursionError:
        raise invalid_request("The request body is not valid JSON: nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError, invalid UTF-8, an integer of 5,000 digits
        raise invalid_request(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    return body


def parse_request(endpoint: Endpoint, raw: bytes) -> InferenceRequest:
    """Parse and check a request body; 400 with the reason if it cannot be served."""
    body = json_object(raw)
    try:
        checked = _SHAPES[endpoint].model_validate(body)
    except ValidationError as exc:
        raise _describe(exc) from None
    stream = bool(checked.stream) and endpoint.streams
    options = checked.stream_options or {}
    wants_usage = bool(options.get("include_usage"))
    if stream and not wants_usage:
        body["stream_options"] = {**options, "include_usage": True}
    unchanged = raw if not stream or wants_usage else None
    client_usage = stream and wants_usage
    return InferenceRequest(endpoint, body, checked.model, stream, client_usage, unchanged)


_TOKEN_INPUT = "a string, an array of strings, an array of token ids or an array of those"


def _describe(exc: ValidationError) -> Exception:
    """The first problem, named by its top-level parameter, as OpenAI words it."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    param = str(first["loc"][0]) if first["loc"] else "body"
    if first["type"] == "missing":
        return invalid_request(f"Missing required parameter: '{param}'.", param)
    if param in {"prompt", "input"}:
        return invalid_request(f"Invalid type for '{param}': expected {_TOKEN_INPUT}.", param)
    path = ".".join(str(part) for part in first["loc"])
    return invalid_request(f"Invalid value for '{path}': {first['msg']}.", param)
