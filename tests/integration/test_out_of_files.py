"""A gateway that may open no more files answers 503 itself and blames no engine.

At thousands of streams a gateway holds two sockets per stream; past its open-file limit a
connection to an engine fails with EMFILE. That is the gateway's limit, not the engine's
failure: counted against the backend (as a refused connection is), it marked every backend
down at once, their health probes failing alike, and the gateway refused everything until the
limit freed. Here the limit is lowered (the soft one: any process may) so that no socket
can be opened while it holds, on a real gateway in this
process, a real redis-server, and a stand-in engine in a process of its own (the limit is
this one's) that closes its connection after each answer, so that the gateway must connect
anew for each request.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from loadtest.services import free_port, stop, wait_http_ok
from tests.conftest import RunningGateway, StartGateway, gateway_config

CHAT = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}


#: The stand-in engine, run as ``python -c ENGINE PORT``.
ENGINE = """
import sys
from aiohttp import web
from tests.conftest import completion_body

async def chat(request):
    await request.read()
    response = web.json_response(completion_body("ok", 5, 1))
    response.force_close()  # the next request needs a new connection
    return response

async def health(request):
    response = web.Response()
    response.force_close()
    return response

app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@pytest.fixture
def closing_engine() -> Iterator[str]:
    """The URL of an engine that closes the connection of every answer (probes' too)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", ENGINE, str(port)], stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(url + "/health", process)
        yield url
    finally:
        stop(process)


@contextlib.contextmanager
def no_new_files() -> Iterator[None]:
    """No file (socket) can be opened in this process until the block ends: the soft limit of
    open files at 3. A new file takes the lowest number free, and every number below 3 is
    taken (standard input, output and error), so it fails with EMFILE; those already open
    work as before."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _chat(http: aiohttp.ClientSession, gateway: RunningGateway) -> tuple[int, dict]:
    async with http.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": "Bearer key-a"},
    ) as response:
        return response.status, await response.json()


async def test_out_of_file_descriptors_is_the_gateways_503_and_no_engines_failure(
    start_gateway: StartGateway, closing_engine: str, redis_url: str
) -> None:
    gateway = await start_gateway(gateway_config(redis_url, {"p": [closing_engine]}))
    async with aiohttp.ClientSession() as http:  # its one keep-alive connection, open now
        assert (await _chat(http, gateway))[0] == 200

        with no_new_files():
            status, body = await _chat(http, gateway)
            # the health probes meet the same limit meanwhile (every 0.2 s here)
            for _ in range(3):
                assert (await _chat(http, gateway))[0] == 503

        assert status == 503, body
        assert body["error"]["code"] == "out_of_file_descriptors"
        assert "open-file limit" in body["error"]["message"]
        # the backend was not marked down: served again as soon as files may be opened
        status, body = await _chat(http, gateway)
        assert status == 200, body
