"""The processes of the quota benchmark: Redis, one simulated engine, three gateway replicas.

Each is its own process on loopback, logging to a file in the run's work directory, started
through :mod:`loadtest.services` and stopped with the :class:`contextlib.ExitStack` that
started it, also on an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import yaml

from loadtest.quota_bench.workload import MODEL, REPLICAS, TIME_SCALE, tenants_config
from loadtest.services import free_ports, redis_server, spawn, wait_http_ok, wait_listening

KEY_PREFIX = "fairgate-quota-bench"


def replica_config(redis_url: str, engine: str) -> dict[str, Any]:
    """One pool with the simulated engine, the overloading tenants (see
    :func:`~loadtest.quota_bench.workload.tenants_config`)."""
    backend = {"url": engine, "models": [MODEL], "max_concurrency": 256}
    return {
        "redis": {"url": redis_url, "key_prefix": KEY_PREFIX},
        "pools": {"sim": {"backends": {"sim-0": backend}}},
        "tenants": tenants_config(),
    }


def start_stack(stack: contextlib.ExitStack, workdir: Path) -> list[str]:
    """Redis, the engine and the replicas, all ready; the replicas' URLs."""
    redis_url = stack.enter_context(redis_server())
    engine_port, *ports = free_ports(1 + REPLICAS)
    fairgate = [sys.executable, "-m", "fairgate.cli", "--log-level", "warning"]
    sim_args = ["sim", "--port", str(engine_port), "--time-scale", str(TIME_SCALE)]
    engine = spawn(stack, [*fairgate, *sim_args, "--model", MODEL], workdir / "sim.log")
    wait_listening(engine_port, engine)
    config = workdir / "fairgate.yaml"
    config.write_text(yaml.safe_dump(replica_config(redis_url, f"http://127.0.0.1:{engine_port}")))
    urls, started = [], []
    for index, port in enumerate(ports):
        env = {"FAIRGATE_SERVER__PORT": str(port)}
        argv = [*fairgate, "serve", "--config", str(config)]
        started.append(spawn(stack, argv, workdir / f"gateway-{index}.log", env))
        urls.append(f"http://127.0.0.1:{port}")
    for url, process in zip(urls, started, strict=True):
        wait_http_ok(f"{url}/readyz", process)
    return urls


def logs(workdir: Path) -> dict[str, list[str]]:
    """The lines each process logged, for those that logged any."""
    found = {}
    for path in sorted(workdir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        if lines:
            found[path.stem] = lines
    return found
