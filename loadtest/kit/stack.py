"""The processes of one run: simulated engines, a private Redis, gateway replicas.

Every run starts its own: fresh engines (empty queues and KV), a fresh Redis (no virtual
counters, estimation history or leases from the previous mode) and fresh gateways, so that
modes run with the same seed are compared from the same state. Each process logs to a file in
the run's work directory, and every one is stopped however the run ends.

The gateway configuration is generated from the scenario (:func:`gateway_config`): one backend
per engine with the pool's budget, one tenant per scenario tenant with its weight and limits
(queue timeouts converted to wall seconds), and the mode's admission policy.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from fairgate.keys import AdmissionKeys
from loadtest.kit.modes import Mode
from loadtest.kit.scenario import Scenario, deep_merge
from loadtest.kit.workload import Endpoints
from loadtest.services import free_port, redis_server, spawn, wait_http_ok, wait_listening

KEY_PREFIX = "fairgate"


def tenants_of(scenario: Scenario, mode: Mode) -> list[str]:
    """The tenants that take part in ``mode``: ``alone`` modes keep the shared pool's tenants."""
    if mode.alone:
        return [t for t in scenario.tenants if scenario.pool_of(t) == scenario.shared_pool]
    return list(scenario.tenants)


def pools_of(scenario: Scenario, mode: Mode) -> list[str]:
    """The pools whose engines ``mode`` needs: all of them only when pools are isolated."""
    return list(scenario.pools) if mode.pools else [scenario.shared_pool]


def gateway_config(
    scenario: Scenario, mode: Mode, redis_url: str, engines: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """fairgate's configuration for ``mode``; ``engines`` maps pool -> backend name -> URL.

    In ``-pools`` modes every pool is configured and requests are classified into them by
    fairgate's routing rules (:func:`routing_rules`): by estimated cost, whoever sends them.
    """
    scale = scenario.time_scale
    pools = {
        pool: {
            "backends": {
                name: {
                    "url": url,
                    "models": [scenario.model],
                    "max_concurrency": scenario.pools[pool].max_concurrency,
                    "max_inflight_tokens": scenario.pools[pool].max_inflight_tokens,
                }
                for name, url in backends.items()
            }
        }
        for pool, backends in engines.items()
    }
    tenants = {}
    for name in tenants_of(scenario, mode):
        spec = scenario.tenants[name]
        tenant: dict[str, Any] = {
            "weight": spec.weight,
            "max_concurrency": spec.max_concurrency,
            "max_inflight_tokens": spec.max_inflight_tokens,
            "max_queued": spec.max_queued,
            "queue_timeout_s": spec.queue_timeout_s / scale,
            "api_keys": [scenario.key(name)],
        }
        if spec.priority:
            tenant["priority"] = spec.priority
        if spec.quotas:
            tenant["quotas"] = wall_quotas(spec.quotas, scale)
        tenants[name] = tenant
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 8080, "health_check_interval_s": 1.0},
        "redis": {"url": redis_url, "key_prefix": KEY_PREFIX},
        "pools": pools,
        "tenants": tenants,
        "estimation": {
            "input_weight": scenario.service.input,
            "output_weight": scenario.service.output,
        },
        "admission": {"policy": mode.policy or "vtc"},
    }
    if mode.pools:
        config["routing"] = {"rules": routing_rules(scenario)}
    return deep_merge(config, scenario.gateway)


def wall_quotas(quotas: dict[str, Any], scale: float) -> dict[str, Any]:
    """A scenario's quotas (per simulated minute or day) per wall minute or day, as fairgate
    counts them: ``scale`` times as many, since ``scale`` simulated minutes pass in one."""
    return {
        key: wall_quotas(value, scale) if isinstance(value, dict) else round(value * scale)
        for key, value in quotas.items()
    }


def routing_rules(scenario: Scenario) -> list[dict[str, Any]]:
    """The scenario's ``routing:`` rules; without them, one rule per tenant with a ``pool:``
    other than the shared one (classification by tenant, the weaker form)."""
    if scenario.routing:
        return [dict(rule) for rule in scenario.routing]
    return [
        {"name": f"tenant-{name}", "pool": scenario.pool_of(name), "tenants": [name]}
        for name in scenario.tenants
        if scenario.pool_of(name) != scenario.shared_pool
    ]


@contextlib.contextmanager
def running(scenario: Scenario, mode: Mode, workdir: Path) -> Iterator[Endpoints]:
    """Start what ``mode`` needs, yield where to send each tenant, stop it all afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        engines: dict[str, dict[str, str]] = {}
        started = []
        for pool in pools_of(scenario, mode):
            engines[pool] = {}
            for index in range(scenario.pools[pool].engines):
                name, port = f"{pool}-{index}", free_port()
                process = _spawn(stack, workdir / f"{mode}-{name}.log", _sim_args(scenario, port))
                engines[pool][name] = f"http://127.0.0.1:{port}"
                started.append((port, process))
        for port, process in started:
            wait_listening(port, process)
        flat = {name: url for backends in engines.values() for name, url in backends.items()}
        tenants = tenants_of(scenario, mode)
        if not mode.through_gateway:
            shared = list(engines[scenario.shared_pool].values())
            yield Endpoints({t: shared for t in tenants}, flat)
            return
        redis_url = stack.enter_context(redis_server())
        config_path = workdir / f"{mode}.yaml"
        config = gateway_config(scenario, mode, redis_url, engines)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        replicas = []
        for index in range(mode.replicas):
            port = free_port()
            args = ["serve", "--config", str(config_path)]
            if mode.workers > 1:
                args += ["--workers", str(mode.workers)]
            env = {"FAIRGATE_SERVER__PORT": str(port)}
            log = workdir / f"{mode}-gateway-{index}.log"
            replicas.append((port, _spawn(stack, log, args, env)))
        urls = [f"http://127.0.0.1:{port}" for port, _ in replicas]
        for (_, process), url in zip(replicas, urls, strict=True):
            wait_http_ok(f"{url}/readyz", process)
        yield Endpoints(
            {t: urls for t in tenants}, flat, redis_url, AdmissionKeys.of(KEY_PREFIX).queued
        )


def _sim_args(scenario: Scenario, port: int) -> list[str]:
    engine = scenario.engine
    args = [
        "sim",
        "--profile", str(engine.profile),
        "--port", str(port),
        "--time-scale", str(scenario.time_scale),
        "--seed", str(scenario.seed),
        "--model", scenario.model,
    ]  # fmt: skip
    for flag, value in (
        ("--max-num-seqs", engine.max_num_seqs),
        ("--max-num-batched-tokens", engine.max_num_batched_tokens),
        ("--num-gpu-blocks", engine.num_gpu_blocks),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args


def _spawn(
    stack: contextlib.ExitStack, log: Path, args: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``fairgate ARGS`` in a child process that logs to ``log`` and stops with ``stack``."""
    argv = [sys.executable, "-m", "fairgate.cli", "--log-level", "warning", *args]
    return spawn(stack, argv, log, env)
