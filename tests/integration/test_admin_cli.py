"""``fairgate admin``: an operator's terminal against a live gateway's admin API.

The command runs as a real subprocess (``python -m fairgate.cli admin ...``) against an
in-process gateway on loopback with a real redis-server and a simulated engine; the keys it
makes are used with the official ``openai`` client. The gateway answers on the test's event
loop, so the subprocess is awaited (asyncio), never waited for blocking.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import sys
from pathlib import Path

import openai
import pytest
from aiohttp import web

from fairgate.settings import load_settings
from tests.conftest import (
    RunningGateway,
    RunningSim,
    ServeApp,
    StartGateway,
    StartSim,
    gateway_config,
)

REPO = Path(__file__).resolve().parents[2]
MODEL = "llama-3-8b"


@pytest.fixture
async def sim(start_sim: StartSim) -> RunningSim:
    return await start_sim(time_scale=100.0)


@pytest.fixture
async def gateway(start_gateway: StartGateway, sim: RunningSim, redis_url: str) -> RunningGateway:
    return await start_gateway(
        gateway_config(redis_url, {"interactive": [sim.url]}, admin={"tokens": ["admin-secret"]})
    )


async def fairgate_admin(
    url: str, *args: str, token: str | None = "admin-secret"
) -> tuple[int, str, str]:
    """Run ``fairgate admin ARGS`` with the URL and token in its environment: exit status,
    stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRGATE_ADMIN_")}
    env["FAIRGATE_ADMIN_URL"] = url
    if token is not None:
        env["FAIRGATE_ADMIN_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fairgate.cli", "admin", *args,
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def chat(gateway: RunningGateway, key: str) -> str:
    answer = await gateway.client(key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    return answer.choices[0].message.content or ""


async def test_an_operator_onboards_a_tenant_and_rotates_its_key(gateway: RunningGateway) -> None:
    run = functools.partial(fairgate_admin, gateway.url)
    status, out, err = await run(
        "tenants", "create", "acme", "--weight", "3", "--max-concurrency", "5",
        "--pools", "interactive", "--tpm", "100000", "--set", "allow_priority_header=true",
    )  # fmt: skip
    assert status == 0, err
    assert out.startswith("created tenant acme (version ")
    assert re.search(r"quotas\.tokens_per_minute\s+100000", out)
    _, listed, _ = await run("tenants", "list")
    header, *rows = listed.splitlines()
    assert header.split()[:3] == ["ID", "WEIGHT", "PRIO"]
    assert [row.split()[0] for row in rows] == ["a", "acme", "b"]
    acme = next(row.split() for row in rows if row.startswith("acme"))
    assert acme[1:3] == ["3", "0"] and "interactive" in acme and "tpm" in acme

    status, out, err = await run("keys", "create", "acme", "--name", "ci", "--expires-in", "30d")
    assert status == 0, err
    assert "shown this once" in out
    secrets = re.findall(r"^  (\S+)$", out, re.MULTILINE)
    assert len(secrets) == 1
    assert await chat(gateway, secrets[0])
    status, out, _ = await run("keys", "create", "acme", "--json")
    made = json.loads(out)
    assert status == 0 and made["tenant"] == "acme" and made["expires_at"] is None
    _, out, _ = await run("keys", "list", "acme", "--json")
    first = next(k for k in json.loads(out)["data"] if k["name"] == "ci")
    assert sorted(k["id"] for k in json.loads(out)["data"]) == sorted([first["id"], made["id"]])
    _, table, _ = await run("keys", "list", "acme")
    assert first["id"] in table and secrets[0] not in table and made["key"] not in table

    status, out, err = await run("keys", "revoke", "acme", first["id"])
    assert (status, out.strip()) == (0, f"revoked key {first['id']} of tenant acme"), err
    with pytest.raises(openai.AuthenticationError):
        await chat(gateway, secrets[0])
    assert await chat(gateway, made["key"])


async def test_a_stale_version_is_refused_and_says_why(gateway: RunningGateway) -> None:
    run = functools.partial(fairgate_admin, gateway.url)
    _, out, _ = await run("tenants", "get", "a", "--json")
    version = json.loads(out)["version"]
    status, out, err = await run(
        "tenants", "update", "a", "--set", "weight=4", "--rpm", "60", "--if-match", str(version)
    )
    assert status == 0, err
    assert out.startswith("updated tenant a") and re.search(r"weight\s+4\b", out)
    stale = str(version)
    status, out, err = await run("tenants", "update", "a", "--weight", "5", "--if-match", stale)
    assert status == 1 and out == ""
    assert "changed meanwhile" in err and "409" in err and "version_conflict" in err
    _, out, _ = await run("--json", "tenants", "get", "a")
    tenant = json.loads(out)
    assert (tenant["weight"], tenant["quotas"]["requests_per_minute"]) == (4, 60)
    # null resets a setting (a merge patch); the quota's other fields are left as they were.
    status, _, err = await run("tenants", "update", "a", "--set", "weight=null")
    assert status == 0, err
    assert json.loads((await run("tenants", "get", "a", "--json"))[1])["weight"] == 1
    status, out, err = await run("tenants", "delete", "a", "--if-match", str(version))
    assert status == 1 and "changed meanwhile" in err
    status, out, err = await run("tenants", "delete", "a")
    assert (status, out.strip()) == (0, "deleted tenant a and its keys"), err
    with pytest.raises(openai.AuthenticationError):
        await chat(gateway, "key-a")


async def test_config_export_prints_a_config_file(gateway: RunningGateway, tmp_path: Path) -> None:
    await fairgate_admin(gateway.url, "tenants", "create", "acme", "--weight", "2.5")
    status, out, err = await fairgate_admin(gateway.url, "config", "export")
    assert status == 0, err
    assert out.startswith("# fairgate configuration exported") and "admin-secret" not in out
    path = tmp_path / "exported.yaml"
    path.write_text(out)
    assert load_settings(path).tenants["acme"].weight == 2.5
    status, out, _ = await fairgate_admin(gateway.url, "config", "export", "--json")
    assert status == 0 and json.loads(out)["tenants"]["acme"]["weight"] == 2.5


async def test_refusals_print_the_api_message_and_exit_1(
    gateway: RunningGateway, unused_tcp_port: int
) -> None:
    status, out, err = await fairgate_admin(gateway.url, "tenants", "get", "nobody")
    assert (status, out) == (1, "") and "No tenant 'nobody'" in err and "HTTP 404" in err
    status, _, err = await fairgate_admin(
        gateway.url, "tenants", "create", "acme", "--set", "wieght=2"
    )
    assert status == 1 and "wieght" in err and "HTTP 400" in err
    status, _, err = await fairgate_admin(gateway.url, "tenants", "create", "a")
    assert status == 1 and "exists already" in err
    status, _, err = await fairgate_admin(gateway.url, "tenants", "list", token="wrong")
    assert status == 1 and "Incorrect admin token" in err
    status, _, err = await fairgate_admin(gateway.url, "tenants", "list", token="key-a")
    assert status == 1 and "cannot use the admin API" in err
    nowhere = f"http://127.0.0.1:{unused_tcp_port}"
    status, _, err = await fairgate_admin(nowhere, "tenants", "list")
    assert status == 1 and f"cannot reach the admin API at {nowhere}" in err


async def test_a_wrong_command_line_exits_2_before_calling(gateway: RunningGateway) -> None:
    cases = [
        (("tenants", "list"), None, "no admin token"),
        (("keys", "create", "a", "--expires-in", "soon"), "admin-secret", "duration"),
        (("tenants", "update", "a", "--set", "weight"), "admin-secret", "FIELD=VALUE"),
        (("tenants", "update", "a", "--weight", "2", "--set", "weight=3"), "admin-secret",
         "given twice"),
        (("tenants", "update", "a"), "admin-secret", "nothing to change"),
        (("tenants", "update", "a", "--weight", "2", "--if-match", "abc"), "admin-secret",
         "--if-match"),
        (("tenants", "frobnicate"), "admin-secret", "invalid choice"),
    ]  # fmt: skip
    for args, token, message in cases:
        status, out, err = await fairgate_admin(gateway.url, *args, token=token)
        assert (status, out) == (2, ""), (args, err)
        assert message in err, (args, err)
    _, out, _ = await fairgate_admin(gateway.url, "tenants", "get", "a", "--json")
    assert json.loads(out)["weight"] == 1  # nothing was sent


async def test_usage_passes_the_range_and_prints_a_table(serve_app: ServeApp) -> None:
    """Against a stand-in answering in the usage endpoint's documented shape."""
    asked: list[tuple[str, dict[str, str], str]] = []

    async def usage(request: web.Request) -> web.Response:
        asked.append(
            (request.match_info["tenant"], dict(request.query), request.headers["Authorization"])
        )
        row = {"requests": 3, "prompt_tokens": 30, "completion_tokens": 12}
        return web.json_response(
            {
                "object": "usage",
                "tenant": "acme",
                "from": "2025-01-01",
                "to": "2025-01-02",
                "data": [
                    {"date": "2025-01-01", "model": MODEL, **row, "rejections": {}},
                    {"date": "2025-01-02", "model": MODEL, **row, "rejections": {"quota": 2}},
                ],
                "total": {
                    "requests": 6,
                    "prompt_tokens": 60,
                    "completion_tokens": 24,
                    "rejections": {"quota": 2},
                },  # fmt: skip
            }
        )

    app = web.Application()
    app.router.add_get("/admin/v1/tenants/{tenant}/usage", usage)
    url = await serve_app(app)
    status, out, err = await fairgate_admin(
        url, "usage", "acme", "--from", "2025-01-01", "--to", "2025-01-02"
    )
    assert status == 0, err
    assert asked == [("acme", {"from": "2025-01-01", "to": "2025-01-02"}, "Bearer admin-secret")]
    title, header, *rows = out.splitlines()
    assert title == "usage of tenant acme, 2025-01-01 to 2025-01-02"
    assert header.split()[:3] == ["DATE", "MODEL", "REQUESTS"]
    assert rows[1].split() == ["2025-01-02", MODEL, "3", "30", "12", "quota", "2"]
    assert rows[2].split() == ["TOTAL", "6", "60", "24", "quota", "2"]
    status, out, _ = await fairgate_admin(url, "usage", "acme", "--json")
    assert status == 0 and json.loads(out)["total"]["requests"] == 6
    assert asked[-1][1] == {}
