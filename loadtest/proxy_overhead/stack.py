"""The processes of the proxy-overhead benchmark: Redis, the upstream, the forwarder, fairgate
(and fairgate as another revision had it, when asked for).

Each is its own process on loopback (free ports, a private ``redis-server``), logging to a file
in the run's work directory, started through :mod:`loadtest.services` and stopped with the
:class:`contextlib.ExitStack` that started it, also on an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.access_log import LINE_START as ACCESS_LOG_LINE
from loadtest.proxy_overhead.workload import (
    API_KEY,
    BASELINE,
    CHAT_PATH,
    LOOPBACK,
    MODEL,
    QUOTA_API_KEY,
    QUOTA_TENANT,
    QUOTAS,
    TENANT,
    TRACED,
    WORKER_COUNT,
    WORKERS,
)
from loadtest.revisions import accepted_config, revision_env
from loadtest.services import (
    free_ports,
    log_tail,
    redis_command,
    spawn,
    wait_http_ok,
    wait_listening,
)

#: What ``python -m`` runs for the upstream and the forwarder (``--serve KIND``).
MODULE = "loadtest.proxy_overhead"


@dataclass(frozen=True)
class Target:
    """One way of reaching the upstream's chat endpoint, and the processes it adds to the path."""

    mode: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    #: The processes whose CPU time is the path's own cost, by name (none when direct).
    processes: dict[str, int] = field(default_factory=dict)


def fairgate_config(port: int, redis_port: int, upstream: str) -> dict[str, Any]:
    """One pool with one backend (the upstream), two tenants, limits far above the load: the
    second has quotas too (checked on every request, never refusing)."""
    limits = {"max_concurrency": 4096, "max_queued": 4096, "max_inflight_tokens": 100_000_000}
    return {
        "server": {"host": LOOPBACK, "port": port},
        "redis": {"url": f"redis://{LOOPBACK}:{redis_port}/0", "key_prefix": "fairgate-bench"},
        "pools": {
            "bench": {
                "backends": {
                    "upstream-0": {"url": upstream, "models": [MODEL], "max_concurrency": 4096}
                }
            }
        },
        "tenants": {
            TENANT: {**limits, "api_keys": [API_KEY]},
            QUOTA_TENANT: {**limits, "api_keys": [QUOTA_API_KEY], "quotas": QUOTAS},
        },
        # Off, whatever OTEL_* variables the environment has: the traced path is another process.
        "telemetry": {"traces": {"enabled": False}},
    }


def traced_config(port: int, redis_port: int, upstream: str) -> dict[str, Any]:
    """The same gateway tracing every request (the default ratio, 1), spans sent to the
    upstream's stand-in collector; an admission domain of its own in the same Redis."""
    config = fairgate_config(port, redis_port, upstream)
    config["redis"]["key_prefix"] = "fairgate-bench-traces"
    config["telemetry"] = {"traces": {"enabled": True, "endpoint": upstream}}
    return config


def workers_config(port: int, redis_port: int, upstream: str) -> dict[str, Any]:
    """The same gateway as ``fairgate serve --workers 2``; its own admission domain."""
    config = fairgate_config(port, redis_port, upstream)
    config["redis"]["key_prefix"] = "fairgate-bench-workers"
    config["server"]["workers"] = WORKER_COUNT
    return config


def baseline_config(port: int, redis_port: int, upstream: str, checkout: Path) -> dict[str, Any]:
    """The gateway as ``checkout``'s revision can run it: the tenant without quotas only (the
    path measured), an admission domain of its own, less what that revision did not know yet
    (:func:`loadtest.revisions.accepted_config`: a ``telemetry`` section, say)."""
    config = fairgate_config(port, redis_port, upstream)
    config["redis"]["key_prefix"] = "fairgate-bench-baseline"
    config["tenants"] = {TENANT: config["tenants"][TENANT]}
    return accepted_config(checkout, config)


#: The processes whose log is shown after the run if they wrote anything (Redis always does).
_QUIET_SERVERS = ("upstream", "forwarder", "control", "fairgate", TRACED, WORKERS, BASELINE)


def server_logs(workdir: Path) -> dict[str, list[str]]:
    """The lines each server logged, for those that logged any: a warning may explain a figure
    (fairgate's access log, one line per request on its standard error, aside)."""
    logs = {}
    for name in _QUIET_SERVERS:
        path = workdir / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        lines = [line for line in lines if not line.startswith(ACCESS_LOG_LINE)]
        if lines:
            logs[name] = lines
    return logs


Ready = Callable[[subprocess.Popen[bytes]], None]


def start_process(
    stack: contextlib.ExitStack,
    name: str,
    argv: list[str],
    ready: Ready,
    workdir: Path,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` logging to ``workdir/NAME.log`` (with the descriptors ``pass_fds``) and
    wait until ``ready`` returns.

    What the readiness check last saw and the tail of the log are the error message if the
    process dies or does not become ready.
    """
    log = workdir / f"{name}.log"
    process = spawn(stack, argv, log, env, pass_fds)
    try:
        ready(process)
    except RuntimeError as exc:
        raise RuntimeError(f"{name} did not become ready ({exc}):\n{log_tail(log)}") from None
    return process


def start_redis(stack: contextlib.ExitStack, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A private ``redis-server`` on ``port``, ready."""
    return start_process(
        stack,
        "redis",
        redis_command(port, workdir),
        lambda process: wait_listening(port, process),
        workdir,
    )


def start_stack(
    stack: contextlib.ExitStack, workdir: Path, baseline: Path | None = None
) -> list[Target]:
    """Redis, the upstream, the forwarder, fairgate, fairgate tracing, fairgate with two
    workers (and fairgate at ``baseline``'s code), each in its own process, all ready."""
    (
        redis_port,
        upstream_port,
        forwarder_port,
        gateway_port,
        traced_port,
        workers_port,
        baseline_port,
    ) = free_ports(7)
    upstream = f"http://{LOOPBACK}:{upstream_port}"
    forwarder = f"http://{LOOPBACK}:{forwarder_port}"
    this = [sys.executable, "-m", MODULE]

    def http_ok(url: str) -> Ready:
        return lambda process: wait_http_ok(url, process)

    redis = start_redis(stack, redis_port, workdir)
    start_process(
        stack,
        "upstream",
        [*this, "--serve", "upstream", "--port", str(upstream_port)],
        http_ok(upstream + "/health"),
        workdir,
    )
    forwarding = start_process(
        stack,
        "forwarder",
        [*this, "--serve", "forwarder", "--port", str(forwarder_port), "--upstream", upstream],
        http_ok(forwarder + "/health"),
        workdir,
    )
    fairgate = start_fairgate(
        stack, "fairgate", fairgate_config(gateway_port, redis_port, upstream), workdir
    )
    traced = start_fairgate(
        stack, TRACED, traced_config(traced_port, redis_port, upstream), workdir
    )
    supervisor = start_fairgate(
        stack, WORKERS, workers_config(workers_port, redis_port, upstream), workdir
    )
    workers = {f"worker-{i}": pid for i, pid in enumerate(worker_pids(supervisor))}
    gateway_processes = {"fairgate": fairgate.pid, "redis": redis.pid}
    targets = [
        Target("direct", upstream + CHAT_PATH),
        Target("forwarder", forwarder + CHAT_PATH, processes={"forwarder": forwarding.pid}),
        gateway_target("fairgate", gateway_port, gateway_processes),
        gateway_target("quotas", gateway_port, gateway_processes, QUOTA_API_KEY),
        gateway_target(TRACED, traced_port, {TRACED: traced.pid, "redis": redis.pid}),
        gateway_target(
            WORKERS, workers_port, {WORKERS: supervisor.pid, **workers, "redis": redis.pid}
        ),
    ]
    if baseline is not None:
        config = baseline_config(baseline_port, redis_port, upstream, baseline)
        before = start_fairgate(stack, BASELINE, config, workdir, revision_env(baseline))
        targets.append(
            gateway_target(BASELINE, baseline_port, {BASELINE: before.pid, "redis": redis.pid})
        )
    return targets


def gateway_target(mode: str, port: int, processes: dict[str, int], key: str = API_KEY) -> Target:
    """The path through the gateway on ``port`` as the tenant of ``key``; ``processes`` are
    the gateway's and its Redis's."""
    headers = {"Authorization": f"Bearer {key}"}
    return Target(mode, f"http://{LOOPBACK}:{port}{CHAT_PATH}", headers, processes)


def worker_pids(
    supervisor: subprocess.Popen[bytes], count: int = WORKER_COUNT, timeout_s: float = 60.0
) -> list[int]:
    """The pids of a ``fairgate serve --workers N`` supervisor's workers, once all ``count``
    run."""
    children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [int(pid) for pid in children.read_text().split()]
        if len(pids) == count:
            return pids
        time.sleep(0.05)
    raise RuntimeError(f"{WORKERS}: {count} workers never ran")


def start_fairgate(
    stack: contextlib.ExitStack,
    name: str,
    config: dict[str, Any],
    workdir: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``fairgate serve`` with ``config``, ready once Redis answers and the upstream passed
    its health probe; ``env`` adds to its environment (a ``PYTHONPATH`` to run another
    checkout's code)."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"http://{LOOPBACK}:{config['server']['port']}/readyz"
    argv = [sys.executable, "-m", "fairgate.cli", "--log-level", "warning", "serve",
            "--config", str(path)]  # fmt: skip
    return start_process(
        stack, name, argv, lambda process: wait_http_ok(url, process), workdir, env
    )
