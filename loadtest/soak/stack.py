"""The processes of the soak: Redis, the simulated engines, the gateway replicas; one replica
SIGKILLed and started again on its port.

Each is its own process on loopback, logging to a file in the run's work directory, started
through :mod:`loadtest.services` and stopped with the :class:`contextlib.ExitStack` that
started it, also on an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadtest.services import free_ports, redis_server, spawn, wait_http_ok, wait_listening
from loadtest.soak.workload import (
    ENGINE_CONCURRENCY,
    ENGINES,
    LEASE_TTL_S,
    MODEL,
    REPLICAS,
    TIME_SCALE,
    tenants_config,
)

KEY_PREFIX = "fairgate-soak"
FAIRGATE = [sys.executable, "-m", "fairgate.cli", "--log-level", "warning"]


def replica_config(redis_url: str, engines: list[str]) -> dict[str, Any]:
    backends = {
        f"sim-{i}": {"url": url, "models": [MODEL], "max_concurrency": ENGINE_CONCURRENCY}
        for i, url in enumerate(engines)
    }
    return {
        "redis": {"url": redis_url, "key_prefix": KEY_PREFIX},
        "admission": {"lease_ttl_s": LEASE_TTL_S},
        "pools": {"sim": {"backends": backends}},
        "tenants": tenants_config(),
        "telemetry": {"access_log": {"enabled": False}},
    }


@dataclass
class Stack:
    """The running processes; :meth:`restart` kills one replica and starts it again."""

    exits: contextlib.ExitStack
    workdir: Path
    redis_url: str
    config: Path
    ports: list[int]
    replicas: list[subprocess.Popen[bytes]] = field(default_factory=list)
    restarts: int = 0

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start_replica(self, index: int) -> subprocess.Popen[bytes]:
        env = {"FAIRGATE_SERVER__PORT": str(self.ports[index])}
        log = self.workdir / f"gateway-{index}-{self.restarts}.log"
        argv = [*FAIRGATE, "serve", "--config", str(self.config)]
        return spawn(self.exits, argv, log, env)

    def restart(self, index: int) -> None:
        """SIGKILL replica ``index`` (its streams cut, its leases left to expire) and start it
        again on the same port, ready."""
        self.replicas[index].send_signal(signal.SIGKILL)
        self.replicas[index].wait()
        self.restarts += 1
        self.replicas[index] = self.start_replica(index)
        wait_http_ok(f"{self.urls[index]}/readyz", self.replicas[index])


def start_stack(exits: contextlib.ExitStack, workdir: Path) -> Stack:
    """Redis, the engines and the replicas, all ready."""
    redis_url = exits.enter_context(redis_server())
    (*engine_ports,) = free_ports(ENGINES)
    engines = []
    for i, port in enumerate(engine_ports):
        sim_args = ["sim", "--port", str(port), "--time-scale", str(TIME_SCALE), "--model", MODEL]
        engine = spawn(exits, [*FAIRGATE, *sim_args], workdir / f"sim-{i}.log")
        wait_listening(port, engine)
        engines.append(f"http://127.0.0.1:{port}")
    config = workdir / "fairgate.yaml"
    config.write_text(yaml.safe_dump(replica_config(redis_url, engines)))
    stack = Stack(exits, workdir, redis_url, config, free_ports(REPLICAS))
    stack.replicas = [stack.start_replica(i) for i in range(REPLICAS)]
    for url, process in zip(stack.urls, stack.replicas, strict=True):
        wait_http_ok(f"{url}/readyz", process)
    return stack


def rss_mib(process: subprocess.Popen[bytes]) -> float:
    """The process's resident memory now (Linux ``/proc``), in MiB."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {process.pid}")
