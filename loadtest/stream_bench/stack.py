"""The processes of the slow-stream benchmark: Redis, the pacing upstream, the forwarder,
fairgate, and optionally fairgate as another revision had it, with the CPUs each may use.

The gateways (the paths measured) run on CPU 0, everything else (Redis, the upstream, the load
generator) on CPU 1, where the machine has two: a gateway's pauses and CPU time are then its
own, not the side effect of the client's. Started through
:func:`loadtest.proxy_overhead.stack.start_process` (logs in the run's work directory, stopped
with the :class:`contextlib.ExitStack` that started them).
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairgate.workers import reuse_port_sockets
from loadtest.proxy_overhead.stack import (
    fairgate_config,
    start_fairgate,
    start_process,
    start_redis,
    worker_pids,
)
from loadtest.proxy_overhead.workload import LOOPBACK, QUOTA_TENANT, TENANT
from loadtest.revisions import accepted_config, revision_env
from loadtest.services import free_ports, wait_http_ok

#: What ``python -m`` runs for this benchmark's upstream (``--serve upstream``).
MODULE = "loadtest.stream_bench"
#: The forwarder is the proxy-overhead benchmark's, unchanged: the same floor for both.
FORWARDER_MODULE = "loadtest.proxy_overhead"
#: The paths every run measures, and the control: the forwarder spending fairgate's extra CPU.
FORWARDER, FAIRGATE, CONTROL = "forwarder", "fairgate", "control"
#: Where the gateways run, and where everything else does (with two CPUs or more).
GATEWAY_CPU, REST_CPU = 0, 1
#: The scheduling priority (nice value) of every process of the run, where allowed (root).
PRIORITY = -10
#: Streams the gateways and the client may hold open at once, each a socket or two.
MOST_STREAMS = 20_000
#: File descriptors this process and its children may open: every stream is a socket in the
#: client, two in a gateway and one in the upstream.
OPEN_FILES = 65_536


@dataclass(frozen=True)
class Target:
    """One path measured: its name, its URL's port, and the processes whose CPU time and
    memory are its own cost, by role: ``gateway`` (one process, or each of several sharing
    the port), and ``redis`` for fairgate."""

    name: str
    port: int
    processes: dict[str, tuple[int, ...]]

    @property
    def gateways(self) -> tuple[int, ...]:
        return self.processes["gateway"]


def gateway_config(port: int, redis_port: int, upstream: str, prefix: str) -> dict[str, Any]:
    """The proxy-overhead benchmark's gateway, with room for :data:`MOST_STREAMS` streams (in
    requests and tokens: a limit is not what this benchmark measures) and an admission domain
    of its own (``prefix``) in the shared Redis."""
    config = fairgate_config(port, redis_port, upstream)
    config["redis"]["key_prefix"] = prefix
    room = {"max_concurrency": MOST_STREAMS, "max_queued": MOST_STREAMS}
    for tenant in (TENANT, QUOTA_TENANT):
        config["tenants"][tenant] |= room | {"max_inflight_tokens": 1_000_000_000}
    for backend in config["pools"]["bench"]["backends"].values():
        # and tokens: 200,000 by default, which 10,000 streams' estimates exceed (they queue)
        backend |= {"max_concurrency": MOST_STREAMS, "max_inflight_tokens": 1_000_000_000}
    return config


def raise_open_files() -> None:
    """As many open files as :data:`OPEN_FILES` (children inherit it), or as the hard limit
    allows when this process may not raise it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, max(hard, OPEN_FILES)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pin(pid: int, cpu: int) -> bool:
    """Run ``pid`` on ``cpu`` only, if this machine has it, ahead of other work on it where
    this process may say so (:data:`PRIORITY`); whether it was pinned.

    On a machine other work shares, a gateway that waits for its CPU falls behind its streams
    for reasons of no interest here; the priority keeps that wait short (it does not change
    what the paths measured cost).
    """
    if not hasattr(os, "sched_setaffinity") or cpu >= (os.cpu_count() or 1):
        return False
    os.sched_setaffinity(pid, {cpu})
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, PRIORITY)
    return True


def start_stack(
    stack: contextlib.ExitStack,
    workdir: Path,
    baseline: Path | None,
    pinned: bool,
    scale_processes: int = 1,
    control: bool = False,
) -> tuple[list[Target], int]:
    """Redis, the upstream, the forwarder, fairgate (and fairgate at ``baseline``'s code, and
    the control forwarder if asked), all ready and pinned if asked; and, with
    ``scale_processes`` > 1, the forwarder and fairgate again as that many processes each
    (:func:`start_scale_paths`). The paths, and Redis's pid."""
    raise_open_files()
    ports = free_ports(8)
    redis_port, upstream_port, forwarder_port, gateway_port, baseline_port = ports[:5]
    upstream = f"http://{LOOPBACK}:{upstream_port}"
    redis = start_redis(stack, redis_port, workdir)
    serving = start_process(
        stack,
        "upstream",
        [sys.executable, "-m", MODULE, "--serve", "upstream", "--port", str(upstream_port)],
        lambda process: wait_http_ok(upstream + "/health", process),
        workdir,
    )
    forwarder = start_forwarder(stack, FORWARDER, forwarder_port, upstream, workdir)
    config = gateway_config(gateway_port, redis_port, upstream, "fairgate-streams")
    fairgate = start_fairgate(stack, "fairgate", config, workdir)
    paths = [
        Target(FORWARDER, forwarder_port, {"gateway": (forwarder.pid,)}),
        Target(FAIRGATE, gateway_port, {"gateway": (fairgate.pid,), "redis": (redis.pid,)}),
    ]
    if baseline is not None:
        config = gateway_config(baseline_port, redis_port, upstream, "fairgate-streams-base")
        config = accepted_config(baseline, config)  # less what that revision did not know
        before = start_fairgate(stack, "baseline", config, workdir, revision_env(baseline))
        paths.append(
            Target("baseline", baseline_port, {"gateway": (before.pid,), "redis": (redis.pid,)})
        )
    if control:
        controlling = start_forwarder(stack, CONTROL, ports[7], upstream, workdir)
        paths.append(Target(CONTROL, ports[7], {"gateway": (controlling.pid,)}))
    if scale_processes > 1:
        scale_ports = (ports[5], ports[6])
        paths += start_scale_paths(
            stack, workdir, scale_processes, scale_ports, upstream, (redis_port, redis.pid)
        )
    if pinned:
        for path in paths:
            for pid in path.gateways:
                pin(pid, GATEWAY_CPU)
        for pid in (redis.pid, serving.pid, os.getpid()):
            pin(pid, REST_CPU)
    return paths, redis.pid


def start_forwarder(
    stack: contextlib.ExitStack,
    kind: str,
    port: int,
    upstream: str,
    workdir: Path,
    sock: socket.socket | None = None,
    name: str | None = None,
) -> subprocess.Popen[bytes]:
    """The forwarder, or the control (``kind``), serving ``port`` (on the listening ``sock``
    this process hands it, one of several sharing the port, if given), ready; its log named
    ``name`` (``kind`` by default)."""
    where = ["--port", str(port)] if sock is None else ["--fd", str(sock.fileno())]
    argv = [sys.executable, "-m", FORWARDER_MODULE, "--serve", kind, *where, "--upstream", upstream]
    url = f"http://{LOOPBACK}:{port}/health"
    return start_process(
        stack,
        name or kind,
        argv,
        lambda process: wait_http_ok(url, process),
        workdir,
        pass_fds=[] if sock is None else [sock.fileno()],
    )


def start_scale_paths(
    stack: contextlib.ExitStack,
    workdir: Path,
    count: int,
    ports: tuple[int, int],
    upstream: str,
    redis: tuple[int, int],
) -> list[Target]:
    """The forwarder and fairgate as ``count`` processes each, for a scale turn one process
    may not hold (its open-file limit): ``count`` forwarders serving one port (each on a
    ``SO_REUSEPORT`` socket this process binds and hands it, as ``fairgate serve --workers``
    does), and ``fairgate serve --workers count``. ``ports``: the forwarders' and fairgate's;
    ``redis``: its port and pid."""
    (port, fairgate_port), (redis_port, redis_pid) = ports, redis
    sockets = reuse_port_sockets(LOOPBACK, port, count)
    for sock in sockets:
        stack.callback(sock.close)
    forwarders = [
        start_forwarder(stack, FORWARDER, port, upstream, workdir, sock, f"forwarder-{i}").pid
        for i, sock in enumerate(sockets)
    ]
    config = gateway_config(fairgate_port, redis_port, upstream, "fairgate-streams-workers")
    config["server"]["workers"] = count
    supervisor = start_fairgate(stack, "fairgate-workers", config, workdir)
    workers = tuple(worker_pids(supervisor, count))
    return [
        Target(FORWARDER, port, {"gateway": tuple(forwarders)}),
        Target(FAIRGATE, fairgate_port, {"gateway": workers, "redis": (redis_pid,)}),
    ]
