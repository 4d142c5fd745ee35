"""The live state (``GET /admin/v1/state``), the drain actions and the status page (``/admin/``).

Real parts: gateways in-process on loopback (two replicas on one real redis-server), simulated
engines running in real time (so that streams stay open while the state is read), the
official ``openai`` client for the tenants' side, and Debian's ``chromium``, headless, for the
page (skipped where it is not installed; ``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fairgate import cli
from tests.conftest import (
    RedisProcess,
    RunningGateway,
    RunningSim,
    StartGateway,
    StartSim,
    gateway_config,
)

ADMIN = {"Authorization": "Bearer admin-secret"}
ADMIN_TOKENS = {"tokens": ["admin-secret"]}
DRAIN = "/admin/v1/backends/interactive-0/drain"
MODEL = "llama-3-8b"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
#: Set to a path to write the page's screenshot there (docs/admin-status.png is made so).
SCREENSHOT = os.environ.get("FAIRGATE_SCREENSHOT")


async def call(
    gateway: RunningGateway, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with gateway.http.request(
        method, f"{gateway.url}{path}", headers=ADMIN if headers is None else headers
    ) as response:
        return response.status, await response.json(content_type=None)


async def state(gateway: RunningGateway) -> dict[str, Any]:
    status, body = await call(gateway, "GET", "/admin/v1/state")
    assert status == 200, body
    return body


def by_id(items: list[dict[str, Any]], key: str = "id") -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        assert loop.time() < deadline, f"not true within {within_s} s"
        await asyncio.sleep(0.05)


class Streams:
    """Streaming requests held open (the engine runs in real time) until let go."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def open(self, gateway: RunningGateway, key: str) -> asyncio.Future[str]:
        """Send a long streaming request; the future gets its backend once it is granted."""
        granted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._hold(gateway, key, granted)))
        return granted

    async def _hold(self, gateway: RunningGateway, key: str, granted: asyncio.Future[str]) -> None:
        async with gateway.client(key).chat.completions.with_streaming_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "tell me a long story"}],
            max_tokens=4000,
            stream=True,
            extra_body={"ignore_eos": True},
        ) as response:
            granted.set_result(response.headers["X-Fairgate-Backend"])
            async for _ in response.iter_bytes():
                pass  # the engine's output streams on, charging its tenant, until let go

    async def let_go(self) -> None:
        """Close every stream and leave every queue (the clients go away)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


@pytest.fixture
async def streams() -> AsyncIterator[Streams]:
    held = Streams()
    yield held
    await held.let_go()


# ----------------------------------------------------------------------------- the state


async def test_the_state_shows_queues_work_in_flight_counters_and_shares(
    start_gateway: StartGateway, start_sim: StartSim, redis_url: str, streams: Streams
) -> None:
    sim = await start_sim(time_scale=1.0)
    gateway = await start_gateway(
        gateway_config(
            redis_url,
            {"interactive": [sim.url]},
            admin={"tokens": ["admin-secret"]},
            tenants={  # one request each at a time: the others queue
                "a": {"api_keys": ["key-a"], "weight": 1, "max_concurrency": 1},
                "b": {"api_keys": ["key-b"], "weight": 3, "max_concurrency": 1},
                "c": {"api_keys": ["key-c"], "weight": 2, "priority": 1},
            },
        )
    )
    running = [streams.open(gateway, "key-a"), streams.open(gateway, "key-b")]
    assert sorted(await asyncio.gather(*running)) == ["interactive-0", "interactive-0"]
    waiting = [streams.open(gateway, k) for k in ("key-a", "key-a", "key-b")]

    async def all_queued() -> bool:
        return sum(t["queued"] for t in (await state(gateway))["tenants"]) == 3

    await eventually(all_queued)
    seen = await state(gateway)
    assert not any(w.done() for w in waiting)
    assert (seen["object"], seen["replica"]) == ("state", seen["replica"])
    tenants = by_id(seen["tenants"])
    assert [t["id"] for t in seen["tenants"]] == ["a", "b", "c"]
    a, b, c = tenants["a"], tenants["b"], tenants["c"]
    assert (a["queued"], a["in_flight"]["requests"]) == (2, 1)
    assert (b["queued"], b["in_flight"]["requests"]) == (1, 1)
    assert (c["queued"], c["in_flight"], c["pools"]) == (0, {"requests": 0, "tokens": 0}, {})
    assert a["in_flight"]["tokens"] > 0
    assert a["pools"] == {"interactive": {"in_flight": a["in_flight"]}}
    # a and b compete (c, idle, has no share): 1 : 3 by weight
    assert (a["weight_share"], b["weight_share"], c["weight_share"]) == (0.25, 0.75, None)
    assert a["virtual_counter"] > 0 and b["virtual_counter"] > 0  # their input, charged
    assert (a["weight"], b["weight"], c["priority"]) == (1, 3, 1)
    backend = by_id(seen["backends"], "name")["interactive-0"]
    assert backend["in_flight"] == {
        "requests": 2,
        "tokens": a["in_flight"]["tokens"] + b["in_flight"]["tokens"],
    }
    assert (backend["pool"], backend["healthy"], backend["drained"]) == ("interactive", True, False)
    assert (backend["down_until"], backend["ejected_until"]) == (None, None)
    assert backend["budget"]["requests"] > 2 and backend["engine_kind"] == "vllm"
    pool = by_id(seen["pools"], "name")["interactive"]
    assert pool == {
        "name": "interactive",
        "queued": 3,
        "in_flight": backend["in_flight"],
        "backends": ["interactive-0"],
    }

    async def engine_reports_both() -> bool:  # the engine's own view, from this replica's scrape
        found = by_id((await state(gateway))["backends"], "name")["interactive-0"]["engine"]
        return found["running"] == 2 and found["waiting"] == 0 and found["kv_cache_usage"] > 0

    await eventually(engine_reports_both)

    async def both_served_recently() -> bool:  # output streams: charged to a and b alike
        shares = by_id((await state(gateway))["tenants"])
        return all(shares[t]["recent_service"] > 0 for t in ("a", "b"))

    await eventually(both_served_recently)
    seen = await state(gateway)
    shares = {t["id"]: t["recent_share"] for t in seen["tenants"]}
    assert seen["window_s"] > 0
    assert shares["c"] == 0 and shares["a"] + shares["b"] == pytest.approx(1)

    await streams.let_go()

    async def idle() -> bool:
        seen = await state(gateway)
        return not any(t["queued"] or t["in_flight"]["requests"] for t in seen["tenants"]) and all(
            b["in_flight"] == {"requests": 0, "tokens": 0} for b in seen["backends"]
        )

    await eventually(idle)
    seen = await state(gateway)
    assert all(t["weight_share"] is None and t["pools"] == {} for t in seen["tenants"])
    assert seen["pools"][0]["queued"] == 0


# -------------------------------------------------------------------------- drain actions


@pytest.fixture
async def replicas(
    start_gateway: StartGateway, start_sim: StartSim, redis_url: str
) -> tuple[RunningGateway, RunningGateway]:
    """Two replicas of one gateway in front of two engines (one pool), on one Redis."""
    sims = [await start_sim(time_scale=1.0) for _ in range(2)]
    config = gateway_config(
        redis_url, {"interactive": [s.url for s in sims]}, admin={"tokens": ["admin-secret"]}
    )
    return await start_gateway(config), await start_gateway(config)


async def test_a_drain_through_either_replica_holds_on_both_and_lifts(
    replicas: tuple[RunningGateway, RunningGateway], streams: Streams
) -> None:
    first, second = replicas
    held = await streams.open(first, "key-a")  # runs on through its backend's drain
    other = ({"interactive-0", "interactive-1"} - {held}).pop()

    status, drained = await call(first, "POST", f"/admin/v1/backends/{held}/drain")
    assert status == 200
    assert (drained["object"], drained["name"], drained["drained"]) == ("backend", held, True)
    assert drained["in_flight"]["requests"] == 1  # what runs there finishes
    seen = by_id((await state(second))["backends"], "name")
    assert (seen[held]["drained"], seen[other]["drained"]) == (True, False)
    opened = [streams.open(gateway, "key-a") for gateway in (first, second, first, second)]
    assert set(await asyncio.gather(*opened)) == {other}  # no new work on either replica
    await streams.let_go()

    status, lifted = await call(second, "POST", f"/admin/v1/backends/{held}/undrain")
    assert (status, lifted["drained"]) == (200, False)
    status, _ = await call(second, "POST", f"/admin/v1/backends/{other}/drain")
    assert status == 200
    opened = [streams.open(gateway, "key-b") for gateway in (first, second)]
    assert set(await asyncio.gather(*opened)) == {held}  # the drain is lifted everywhere
    await streams.let_go()
    status, _ = await call(first, "POST", f"/admin/v1/backends/{other}/undrain")
    assert status == 200
    seen = by_id((await state(second))["backends"], "name")
    assert not seen[held]["drained"] and not seen[other]["drained"]


async def test_drains_are_idempotent_and_fairgate_drain_can_use_the_api(
    replicas: tuple[RunningGateway, RunningGateway], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = replicas
    for _ in range(2):
        status, body = await call(first, "POST", "/admin/v1/backends/interactive-1/drain")
        assert (status, body["drained"]) == (200, True)
    by_api = ["drain", "interactive-1", "--url", second.url, "--admin-token", "admin-secret"]
    assert await asyncio.to_thread(cli.main, [*by_api, "--undo"]) == 0
    assert "interactive-1 takes work again; 0 requests running on it" in capsys.readouterr().out
    seen = by_id((await state(first))["backends"], "name")
    assert not seen["interactive-1"]["drained"]
    assert await asyncio.to_thread(cli.main, [*by_api, "--wait"]) == 0
    assert "nothing runs on it any more" in capsys.readouterr().out
    assert by_id((await state(first))["backends"], "name")["interactive-1"]["drained"]
    wrong = ["drain", "nope", "--url", second.url, "--admin-token", "admin-secret"]
    assert await asyncio.to_thread(cli.main, wrong) == 1
    assert "No backend 'nope'" in capsys.readouterr().err
    refused = ["drain", "interactive-1", "--url", second.url, "--admin-token", "wrong"]
    assert await asyncio.to_thread(cli.main, refused) == 1
    assert "Incorrect admin token" in capsys.readouterr().err


async def test_unknown_backends_are_404_and_every_call_needs_an_admin_token(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    gateway, _ = replicas
    for action in ("drain", "undrain"):
        status, body = await call(gateway, "POST", f"/admin/v1/backends/nope/{action}")
        assert (status, body["error"]["code"]) == (404, "not_found")
        assert body["error"]["message"] == "No backend 'nope'."
    for path in ("/admin/v1/state", "/admin/v1/backends/interactive-0/drain"):
        method = "GET" if path.endswith("state") else "POST"
        status, body = await call(gateway, method, path, headers={})
        assert (status, body["error"]["code"]) == (401, "invalid_admin_token")
        status, _ = await call(gateway, method, path, {"Authorization": "Bearer key-a"})
        assert status == 403  # a tenant's key is not an admin token
    seen = by_id((await state(gateway))["backends"], "name")
    assert not seen["interactive-0"]["drained"]  # the refused drain did nothing


async def test_without_redis_the_state_and_drains_are_503_and_come_back_with_it(
    start_gateway: StartGateway,
    start_sim: StartSim,
    redis_process: RedisProcess,
) -> None:
    sim = await start_sim(time_scale=100.0)
    gateway = await start_gateway(
        gateway_config(redis_process.url, {"interactive": [sim.url]}, admin=ADMIN_TOKENS)
    )
    redis_process.stop()
    for method, path in (("GET", "/admin/v1/state"), ("POST", DRAIN)):
        status, body = await call(gateway, method, path)
        assert (status, body["error"]["code"]) == (503, "admission_unavailable"), body
    redis_process.start()  # back, and empty: the scripts' configuration is gone from it
    seen = await state(gateway)
    assert [t["id"] for t in seen["tenants"]] == ["a", "b"]  # the directory's, held here
    assert [p["name"] for p in seen["pools"]] == ["interactive"]
    backend = seen["backends"][0]
    assert (backend["name"], backend["pool"], backend["in_flight"]["requests"]) == (
        "interactive-0",
        "interactive",
        0,
    )
    status, body = await call(gateway, "POST", DRAIN)
    assert (status, body["drained"]) == (200, True)


# ------------------------------------------------------------------------------ the page


async def test_the_page_and_its_files_are_public_and_locked_to_their_origin(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    gateway, _ = replicas
    for path, kind in (
        ("/admin/", "text/html"),
        ("/admin/app.js", "text/javascript"),
        ("/admin/style.css", "text/css"),
    ):
        async with gateway.http.get(f"{gateway.url}{path}") as response:
            assert (response.status, response.content_type) == (200, kind)
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            text = await response.text()
        assert "http://" not in text and "https://" not in text  # nothing from elsewhere
    async with gateway.http.get(f"{gateway.url}/admin", allow_redirects=False) as response:
        assert (response.status, response.headers["Location"]) == (308, "/admin/")
    async with gateway.http.get(f"{gateway.url}/admin/v1/openapi.json") as response:
        paths = (await response.json())["paths"]
    assert paths["/admin/"]["get"]["security"] == []
    assert "text/html" in paths["/admin/"]["get"]["responses"]["200"]["content"]
    assert "/admin/v1/state" in paths and "/admin/v1/backends/{backend}/drain" in paths


async def render(url: str, profile: Path, screenshot: str | None = None) -> str:
    """The page's DOM once its script ran (and a screenshot of it, if asked)."""
    args = [
        CHROMIUM or "chromium",
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--virtual-time-budget=5000",
    ]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    else:
        args.append("--dump-dom")
    browser = await asyncio.create_subprocess_exec(
        *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(browser.communicate(), timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            browser.kill()
    assert browser.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install chromium): the status page's test "
    "needs a real browser",
)
async def test_a_browser_shows_the_live_state_on_the_page(
    start_gateway: StartGateway,
    start_sim: StartSim,
    redis_url: str,
    streams: Streams,
    tmp_path: Path,
) -> None:
    sims: list[RunningSim] = [await start_sim(time_scale=1.0) for _ in range(3)]
    gateway = await start_gateway(
        gateway_config(
            redis_url,
            {"interactive": [sims[0].url, sims[1].url], "batch": [sims[2].url]},
            admin={"tokens": ["admin-secret"]},
            tenants={
                "acme": {"api_keys": ["key-acme"], "weight": 3, "max_concurrency": 3},
                "globex": {"api_keys": ["key-globex"], "weight": 1, "max_concurrency": 1},
                "initech": {"api_keys": ["key-initech"], "weight": 2, "pools": ["batch"]},
                "umbrella": {"api_keys": ["key-umbrella"], "priority": 1},
            },
        )
    )
    await call(gateway, "POST", "/admin/v1/backends/interactive-1/drain")
    granted = [streams.open(gateway, "key-acme") for _ in range(3)]
    granted += [streams.open(gateway, "key-globex"), streams.open(gateway, "key-initech")]
    await asyncio.gather(*granted)
    for key in ("key-acme", "key-acme", "key-globex", "key-globex", "key-globex"):
        streams.open(gateway, key)  # these wait: their tenants are at their concurrency

    async def queued() -> bool:
        return sum(t["queued"] for t in (await state(gateway))["tenants"]) == 5

    await eventually(queued)
    dom = await render(f"{gateway.url}/admin/#token=admin-secret", tmp_path / "profile")
    for tenant in ("acme", "globex", "initech", "umbrella"):
        assert f'data-tenant="{tenant}"' in dom
    for backend in ("interactive-0", "interactive-1", "batch-0"):
        assert f'data-backend="{backend}"' in dom
    assert '<section id="login" class="login" hidden="">' in dom  # the token was taken
    assert ">drained<" in dom and "3 / 4" in dom  # interactive-1; 3 of 4 tenants active
    assert "of service · fair 50%" in dom  # acme's share bar: weight 3 of the 6 active

    refused = await render(f"{gateway.url}/admin/#token=wrong", tmp_path / "profile-2")
    assert '<section id="login" class="login">' in refused
    assert "Incorrect admin token." in refused and "data-tenant" not in refused
    if SCREENSHOT:
        await render(f"{gateway.url}/admin/#token=admin-secret", tmp_path / "p3", SCREENSHOT)
        shrink(Path(SCREENSHOT))


def shrink(png: Path) -> None:
    """A palette PNG: the page has few colours, and the docs' image stays small."""
    from PIL import Image

    with Image.open(png) as image:
        image.convert("RGB").quantize(colors=64).save(png, optimize=True)
