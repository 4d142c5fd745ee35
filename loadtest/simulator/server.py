"""The simulator's HTTP face: vLLM's OpenAI-compatible routes on aiohttp.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streamed or not),
``POST /v1/embeddings``,
``GET /v1/models``, ``GET /health``, ``GET /metrics``, ``POST /tokenize``, and two debug routes
that report simulated time: ``GET /sim/state`` (including the peak number of requests present
at once, overall and per ``X-Fairgate-Tenant`` header value) and ``GET /sim/requests/{id}`` (a
request's timeline, by the ``X-Request-Id`` it was sent with or the id in its response).

A client that disconnects aborts its request inside the engine, freeing its KV blocks at once,
as vLLM does; serve the app with :func:`fairgate.serving.serve`, which cancels a handler when
its client disconnects, so that a non-streamed request notices the disconnect too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from estimators.prompt_tokens import count_chat_prompt
from estimators.tokenizer import Tokenizer, default_tokenizer
from fairgate.errors import error_response
from loadtest.simulator.clock import SimClock
from loadtest.simulator.engine import Engine
from loadtest.simulator.metrics import EngineMetrics
from loadtest.simulator.output_lengths import output_length
from loadtest.simulator.profile import EngineProfile
from loadtest.simulator.protocol import (
    CHAT,
    COMPLETION,
    ChatRequest,
    CompletionRequest,
    Dialect,
    EmbeddingRequest,
    GenerationRequest,
    describe_validation_error,
    embedding,
    encode_embedding,
    envelope,
    token_text,
    usage,
)
from loadtest.simulator.sequence import Sequence

_Body = TypeVar("_Body", bound=BaseModel)

#: Prompts longer than this many characters are tokenized in a worker thread.
_OFF_LOOP_CHARS = 32_000
_MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class Simulator:
    """Everything one simulated engine process holds."""

    profile: EngineProfile
    models: list[str]
    engine: Engine
    tokenizer: Tokenizer
    seed: int
    started: int


SIMULATOR = web.AppKey("simulator", Simulator)


class RequestRejected(Exception):
    """A request vLLM would refuse; carries the error response to send."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


def bad_request(message: str, param: str | None = None) -> RequestRejected:
    return RequestRejected(error_response(400, message, "BadRequestError", 400, param))


def create_app(
    profile: EngineProfile,
    models: list[str] | None = None,
    time_scale: float = 1.0,
    seed: int = 0,
) -> web.Application:
    """An aiohttp application serving one simulated engine."""
    served = models or [profile.model]
    metrics = EngineMetrics(profile, served[0])
    engine = Engine(profile, SimClock(time_scale), metrics)
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[SIMULATOR] = Simulator(profile, served, engine, default_tokenizer(), seed, int(time.time()))

    async def run_engine(app: web.Application) -> Any:
        await engine.start()
        yield
        await engine.stop()

    app.cleanup_ctx.append(run_engine)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_get("/sim/state", sim_state)
    app.router.add_get("/sim/requests/{request_id}", sim_request)
    return app


# ---------------------------------------------------------------------------------- routes


async def chat_completions(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    try:
        body = await _parse(request, ChatRequest)
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        prompt_tokens = await _off_loop_if_long(
            _chars(messages),
            lambda: count_chat_prompt(messages, sim.tokenizer, tools=body.tools),
        )
        key = str(body.seed) if body.seed is not None else json.dumps(messages)
        return await _generate(request, sim, CHAT, body, prompt_tokens, key)
    except RequestRejected as rejected:
        return rejected.response


async def completions(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    try:
        body = await _parse(request, CompletionRequest)
        prompt = body.prompt
        if isinstance(prompt, str):
            prompt_tokens = await _off_loop_if_long(
                len(prompt), lambda: sim.tokenizer.count(prompt)
            )
        else:
            prompt_tokens = len(prompt)
        key = str(body.seed) if body.seed is not None else str(prompt)
        return await _generate(request, sim, COMPLETION, body, prompt_tokens, key)
    except RequestRejected as rejected:
        return rejected.response


async def embeddings(request: web.Request) -> web.Response:
    """Embeddings cost a prefill of all inputs and no decode; vectors are deterministic."""
    sim = request.app[SIMULATOR]
    try:
        body = await _parse(request, EmbeddingRequest)
        model = _served_model(sim, body.model)
        counts = [len(i) if isinstance(i, list) else sim.tokenizer.count(i) for i in body.inputs]
        if max(counts, default=0) >= sim.profile.max_model_len:
            raise bad_request("an input is longer than the model's context length", "input")
    except RequestRejected as rejected:
        return rejected.response
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    seq = sim.engine.submit(request_id, sum(counts), 1, "stop", _tenant(request))
    try:
        await _drain(seq)
    finally:
        if not seq.done:
            sim.engine.abort(seq)
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": encode_embedding(
                embedding(str(item), body.dimensions), body.encoding_format
            ),
        }
        for index, item in enumerate(body.inputs)
    ]
    total = sum(counts)
    result = {
        "id": f"embd-{seq.seq_id}",
        "object": "list",
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }
    return web.json_response(result, headers={"X-Request-Id": seq.seq_id})


async def list_models(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    data = [
        {
            "id": model,
            "object": "model",
            "created": sim.started,
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": sim.profile.max_model_len,
        }
        for model in sim.models
    ]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def metrics_text(request: web.Request) -> web.Response:
    body = request.app[SIMULATOR].engine.metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def tokenize(request: web.Request) -> web.Response:
    """vLLM's ``/tokenize``: a ``prompt`` string, or chat ``messages`` with the template."""
    sim = request.app[SIMULATOR]
    try:
        body = await _json_object(request)
    except RequestRejected as rejected:
        return rejected.response
    if isinstance(body.get("prompt"), str):
        tokens = sim.tokenizer.encode(body["prompt"])
    elif isinstance(body.get("messages"), list) and all(
        isinstance(m, dict) for m in body["messages"]
    ):
        count = count_chat_prompt(body["messages"], sim.tokenizer, tools=body.get("tools"))
        text = "".join(str(m.get("content") or "") for m in body["messages"])
        # Template tokens have no text here; they are represented by a header token id.
        tokens = (sim.tokenizer.encode(text) + [128006] * count)[:count]
    else:
        return bad_request("either `prompt` (a string) or `messages` (a list) is required").response
    return web.json_response(
        {
            "count": len(tokens),
            "max_model_len": sim.profile.max_model_len,
            "tokens": tokens,
            "token_strs": None,
        }
    )


async def sim_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIMULATOR].engine.state())


async def sim_request(request: web.Request) -> web.Response:
    engine = request.app[SIMULATOR].engine
    request_id = request.match_info["request_id"]
    for prefix in (CHAT.id_prefix, COMPLETION.id_prefix):
        request_id = request_id.removeprefix(prefix)
    seq = engine.lookup(request_id)
    if seq is None:
        return error_response(404, f"no request {request_id!r}", "NotFoundError", 404)
    return web.json_response(seq.timeline())


# ------------------------------------------------------------------------------ generation


async def _generate(
    request: web.Request,
    sim: Simulator,
    dialect: Dialect,
    body: GenerationRequest,
    prompt_tokens: int,
    length_key: str,
) -> web.StreamResponse:
    model = _served_model(sim, body.model)
    target, stop_reason = _plan_output(sim, body, prompt_tokens, length_key)
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    seq = sim.engine.submit(request_id, prompt_tokens, target, stop_reason, _tenant(request))
    response_id = dialect.id_prefix + seq.seq_id
    try:
        if body.stream:
            return await _stream(request, dialect, body, seq, response_id, model)
        await _drain(seq)
        result = envelope(dialect, response_id, model, streamed=False)
        text = "".join(token_text(i) for i in range(seq.output_tokens))
        result["choices"] = [dialect.choice(text, seq.finish_reason)]
        result["usage"] = usage(seq.prompt_tokens, seq.output_tokens)
        return web.json_response(result, headers={"X-Request-Id": seq.seq_id})
    finally:
        if not seq.done:  # the client went away (cancelled handler or broken pipe)
            sim.engine.abort(seq)


def _tenant(request: web.Request) -> str | None:
    """The tenant a fairgate gateway forwarded the request for (``X-Fairgate-Tenant``)."""
    return request.headers.get("X-Fairgate-Tenant") or None


def _served_model(sim: Simulator, requested: str | None) -> str:
    if requested is None:
        return sim.models[0]
    if requested not in sim.models:
        raise RequestRejected(
            error_response(
                404, f"The model `{requested}` does not exist.", "NotFoundError", 404, "model"
            )
        )
    return requested


def _plan_output(
    sim: Simulator, body: GenerationRequest, prompt_tokens: int, length_key: str
) -> tuple[int, str]:
    """How many tokens this request will produce, and why it will stop.

    As in vLLM (0.10 and later), the output is capped at what is left of the context: a prompt
    that leaves no room, or a ``max_tokens`` above the context length, is refused.
    """
    limit = sim.profile.max_model_len
    cap = body.output_cap
    if prompt_tokens >= limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"contains {prompt_tokens} input tokens, which exceeds this limit even without any "
            "output tokens. Please reduce the length of the input prompt.",
            "input_tokens",
        )
    if cap is not None and cap > limit:
        raise bad_request(
            f"max_tokens={cap} cannot be greater than max_model_len={limit}. "
            "Please request fewer output tokens.",
            "max_tokens",
        )
    max_output = min(cap or limit, limit - prompt_tokens)
    if body.ignore_eos:
        return max_output, "length"
    if body.sim_output_tokens is not None:
        drawn = body.sim_output_tokens
    else:
        drawn = output_length(sim.profile.output_lengths, sim.seed, length_key, max_output)
    target = min(max_output, max(drawn, body.min_tokens))
    return target, "length" if target >= max_output else "stop"


async def _drain(seq: Sequence) -> None:
    while await seq.outbox.get() is not None:
        pass


async def _stream(
    request: web.Request,
    dialect: Dialect,
    body: GenerationRequest,
    seq: Sequence,
    response_id: str,
    model: str,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Request-Id": seq.seq_id,
        }
    )
    await response.prepare(request)
    base = envelope(dialect, response_id, model, streamed=True)

    def event(fields: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps({**base, **fields}).encode() + b"\n\n"

    opening = dialect.opening()
    with contextlib.suppress(ConnectionResetError):
        payload = bytearray(event({"choices": [opening]}) if opening else b"")
        while (count := await seq.outbox.get()) is not None:
            last = count == seq.target_output
            text = token_text(count - 1)
            choice = dialect.delta(text, seq.stop_reason if last else None)
            payload += event({"choices": [choice]})
            if seq.outbox.empty():  # a slow reader gets the backlog in one write
                await response.write(bytes(payload))
                payload.clear()
        if body.include_usage:
            payload += event({"choices": [], "usage": usage(seq.prompt_tokens, seq.output_tokens)})
        await response.write(bytes(payload) + b"data: [DONE]\n\n")
        await response.write_eof()
    return response


# ------------------------------------------------------------------------------- parsing


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"Invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


async def _parse(request: web.Request, model: type[_Body]) -> _Body:
    body = await _json_object(request)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        raise bad_request(
            describe_validation_error(exc), ".".join(map(str, first)) or None
        ) from None


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))


async def _off_loop_if_long(size: int, count: Callable[[], int]) -> int:
    """Run a token count in a thread when it would stall the event loop (tiktoken frees the GIL)."""
    return await asyncio.to_thread(count) if size > _OFF_LOOP_CHARS else count()
