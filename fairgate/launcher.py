"""``fairgate up``: start the local stack that a config file describes (``make run``).

In order: a Redis for the gateway (unless the configured one already answers, e.g. through
``REDIS_URL``), a simulated engine for every backend with a ``simulator:`` section (each in its
own process, on its URL's port), and the gateway itself. Each must answer before the next
starts. Then it prints how to reach the gateway and waits; Ctrl-C or SIGTERM stops everything
it started, and it stops by itself, saying why, if any of them dies. Backends without
``simulator:`` are real engines and are left alone.

The children run in sessions of their own, so a Ctrl-C in the terminal reaches only this
process, which then stops them in reverse order: they never see the interrupt first and exit
before being asked, which looked like a crash.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from fairgate.settings import BackendConfig, Settings

_START_TIMEOUT_S = 30.0
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def run_stack(settings: Settings, config_path: Path) -> int:
    """Start the stack, wait for Ctrl-C, stop it. Returns an exit status."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if settings.redis.mode != "standalone":  # a Cluster or Sentinels: operated elsewhere
            print(f"  redis: {settings.redis.mode} (not started here)")
        elif redis := _start_redis_if_needed(settings.redis.url):
            processes.append(redis)
        for name, (pool, backend) in settings.backends().items():
            if backend.simulator is not None:
                processes.append(_start_simulator(backend, config_path))
                _wait_http(str(backend.url).rstrip("/") + "/health", processes[-1])
                models = ", ".join(backend.models)
                print(f"  engine {name} (pool {pool}) ready at {backend.url} serving {models}")
        processes.append(_fairgate("serve", "--config", str(config_path)))
        base = f"http://{settings.server.host}:{settings.server.port}"
        _wait_http(base + "/healthz", processes[-1])
        _print_examples(settings, base)
        _wait_for_signal(processes)
        return 0
    except RuntimeError as exc:
        print(f"fairgate up: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop(processes)


def _fairgate(*args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "fairgate.cli", "--log-level", "warning", *args]
    return subprocess.Popen(command, start_new_session=True)


def _start_redis_if_needed(url: str) -> subprocess.Popen[bytes] | None:
    """A private Redis on the configured loopback port, unless one already answers there."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if _listening(host, port):
        print(f"  redis at {url} (already running)")
        return None
    if parts.scheme != "redis" or host not in _LOOPBACK:
        raise RuntimeError(f"Redis at {url} does not answer (set REDIS_URL to a running one)")
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    process = subprocess.Popen(
        [server, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _listening(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.05)
    print(f"  redis started at {url}")
    return process


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _start_simulator(backend: BackendConfig, config_path: Path) -> subprocess.Popen[bytes]:
    spec = backend.simulator
    assert spec is not None
    profile = spec.profile  # a bundled profile's name, or a file relative to the config
    if Path(profile).suffix in (".yaml", ".yml") and not Path(profile).is_file():
        profile = str(config_path.parent / profile)
    args = [
        "sim",
        "--profile", str(profile),
        "--host", backend.url.host or "127.0.0.1",
        "--port", str(backend.url.port),
        "--time-scale", str(spec.time_scale),
        "--seed", str(spec.seed),
    ]  # fmt: skip
    for model in backend.models:
        args += ["--model", model]
    return _fairgate(*args)


def _wait_http(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process for {url} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {_START_TIMEOUT_S:.0f} s")


def _print_examples(settings: Settings, base: str) -> None:
    model = next(iter(sorted(next(iter(settings.pools.values())).models)))
    keys = {t: c.api_keys[0].get_secret_value() for t, c in settings.tenants.items() if c.api_keys}
    tenant, key = next(iter(keys.items()), ("(none)", "YOUR_KEY"))
    hello = [{"role": "user", "content": "Hello!"}]
    body = json.dumps({"model": model, "messages": hello, "max_tokens": 16})
    client = f'OpenAI(base_url="{base}/v1", api_key="{key}")'
    call = f"chat.completions.create(model={json.dumps(model)}, messages={json.dumps(hello)})"
    tenants = "\n".join(f"    {t:<12} {k}" for t, k in keys.items())
    print(
        f"""
fairgate is up: OpenAI base URL {base}/v1 (tenant {tenant} in the examples)

  curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {key}' \\
    -H 'Content-Type: application/json' -d '{body}'

  {_python()} -c 'from openai import OpenAI; print({client}.{call}.choices[0].message.content)'

  demo keys:
{tenants}
{_admin_examples(settings, base)}
Readiness: {base}/readyz     Press Ctrl-C to stop.
""",
        flush=True,
    )


def _admin_examples(settings: Settings, base: str) -> str:
    """How to reach the admin API, if a token in clear is configured (the demo's)."""
    if not settings.admin.tokens:
        return ""
    token = settings.admin.tokens[0].get_secret_value()
    admin = (
        base
        if settings.server.admin_port is None
        else base.rsplit(":", 1)[0] + (f":{settings.server.admin_port}")
    )
    return f"""
  admin API (token {token}):
    curl -s {admin}/admin/v1/tenants -H 'Authorization: Bearer {token}'
    {_python()} -m fairgate.cli admin --url {admin} --token {token} tenants list
  status page: {admin}/admin/#token={token}
"""


def _python() -> str:
    """This Python (the one with ``openai`` installed), relative to the working directory
    where it is inside it: ``.venv/bin/python`` under ``make run``."""
    try:
        return str(Path(sys.executable).relative_to(Path.cwd()))
    except ValueError:
        return sys.executable


def _wait_for_signal(processes: list[subprocess.Popen[bytes]]) -> None:
    """Block until Ctrl-C / SIGTERM, or until a child dies (then report it)."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            for process in processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a child process exited with status {process.returncode}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
