"""``fairgate up``: start the local stack that a config file describes (``make run``).

Every backend with a ``simulator:`` section gets a simulated engine on its URL's port, each in
its own process (so engines and gateway use separate cores, as real ones would). The launcher
waits until each answers ``/health``, prints how to reach it, and stops everything it started
on Ctrl-C or SIGTERM. Backends without ``simulator:`` are real engines and are left alone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fairgate.settings import BackendConfig, Settings

_HEALTH_TIMEOUT_S = 30.0


def run_stack(settings: Settings, config_path: Path) -> int:
    """Start the simulated engines, wait for Ctrl-C, stop them. Returns an exit status."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, (pool, backend) in settings.backends().items():
            if backend.simulator is not None:
                processes.append(_start_simulator(backend, config_path))
                _wait_healthy(str(backend.url), processes[-1])
                models = ", ".join(backend.models)
                print(f"  engine {name} (pool {pool}) ready at {backend.url} serving {models}")
        _print_examples(settings)
        _wait_for_signal(processes)
        return 0
    except RuntimeError as exc:
        print(f"fairgate up: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop(processes)


def _start_simulator(backend: BackendConfig, config_path: Path) -> subprocess.Popen[bytes]:
    spec = backend.simulator
    assert spec is not None
    profile = spec.profile if spec.profile.exists() else config_path.parent / spec.profile
    command = [
        sys.executable, "-m", "fairgate.cli", "--log-level", "warning", "sim",
        "--profile", str(profile),
        "--host", backend.url.host or "127.0.0.1",
        "--port", str(backend.url.port),
        "--time-scale", str(spec.time_scale),
        "--seed", str(spec.seed),
    ]  # fmt: skip
    for model in backend.models:
        command += ["--model", model]
    return subprocess.Popen(command)


def _wait_healthy(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _HEALTH_TIMEOUT_S
    url = base_url.rstrip("/") + "/health"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the engine for {base_url} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {_HEALTH_TIMEOUT_S:.0f} s")


def _print_examples(settings: Settings) -> None:
    backend = next(b for _, b in settings.backends().values())
    base = str(backend.url).rstrip("/")
    model = backend.models[0]
    hello = [{"role": "user", "content": "Hello!"}]
    body = json.dumps({"model": model, "messages": hello, "max_tokens": 16})
    client = f'OpenAI(base_url="{base}/v1", api_key="none")'
    call = f"chat.completions.create(model={json.dumps(model)}, messages={json.dumps(hello)})"
    print(
        f"""
Simulated engines are up. Try one directly (the gateway in front of them comes next):

  curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{body}'

  python -c 'from openai import OpenAI; print({client}.{call}.choices[0].message.content)'

Metrics: {base}/metrics     Press Ctrl-C to stop.
""",
        flush=True,
    )


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
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
