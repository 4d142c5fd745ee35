"""``fairgate serve --workers N``: N gateway processes on one host, one port, one supervisor.

One Python process serves from one core. To use every core of a host, a supervisor (this
module, in the process the operator started) binds the listening sockets and starts N workers,
each a full replica of the gateway sharing the same Redis (its own admission owner, lease
reuse, directory follower), as any number of replicas on several hosts already do.

**Sockets.** For each port (the proxy's, and the admin API's if apart) the supervisor binds N
sockets with ``SO_REUSEPORT`` and hands worker *i* the *i*-th: the kernel spreads new
connections over them. The supervisor keeps every socket open, so when a worker dies the
connections the kernel queued on its socket wait (in its backlog) for its successor instead
of being refused, and no port is ever unbound while the host serves. Each worker also gets a
private loopback socket for its siblings (``/metrics`` of one worker shows every worker's
series, each labelled ``worker``: see :mod:`gateway.worker_metrics`).

**Life.** A worker that exits while the supervisor is not stopping is started again (after a
back-off if it keeps dying young, so a broken config does not spin). SIGTERM or SIGINT to the
supervisor is passed to every worker, each of which drains (lets its requests finish) and exits;
the supervisor waits for them, kills what outlives ``grace_s``, and exits. A worker whose
supervisor vanished (SIGKILL) stops by itself (:func:`orphaned`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

#: A worker that ran at least this long before it died is restarted at once.
HEALTHY_RUN_S = 10.0
#: Restart back-off of a worker that keeps dying young: doubles up to this.
MAX_BACKOFF_S = 30.0
#: How often the supervisor looks at its workers.
POLL_S = 0.2


def worker_count(value: str | int) -> int:
    """``--workers``: a positive count, or ``auto`` for the cores this process may use."""
    if value == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    count = int(value)
    if count < 1:
        raise ValueError(f"workers must be at least 1 or 'auto', not {value!r}")
    return count


def reuse_port_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port`` (port 0: one free port for all of them),
    each with ``SO_REUSEPORT``, inheritable, so the kernel balances connections over them."""
    sockets: list[socket.socket] = []
    for _ in range(count):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.set_inheritable(True)
        port = sock.getsockname()[1]  # the others join the port the first one got
        sockets.append(sock)
    return sockets


def private_socket() -> socket.socket:
    """A worker's loopback socket for its siblings (metrics), on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


@dataclass
class Worker:
    """One worker slot: its sockets, and the process filling it now (if any)."""

    index: int
    sockets: list[socket.socket]
    private: socket.socket
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0  # deaths in a row, each before HEALTHY_RUN_S
    restart_at: float = 0.0


@dataclass
class Supervisor:
    """Starts, restarts and stops the workers of one ``fairgate serve --workers N``.

    ``command`` is the worker's command line without its socket arguments (the supervisor adds
    ``--worker-index``, ``--listen-fd``, ``--private-fd`` and ``--sibling-ports``).
    """

    command: Sequence[str]
    listeners: list[list[socket.socket]]  # per port, one socket per worker
    grace_s: float = 60.0
    workers: list[Worker] = field(default_factory=list)
    _stopping: bool = False

    def __post_init__(self) -> None:
        count = len(self.listeners[0])
        self.workers = [
            Worker(i, [per_port[i] for per_port in self.listeners], private_socket())
            for i in range(count)
        ]

    @property
    def sibling_ports(self) -> list[int]:
        return [w.private.getsockname()[1] for w in self.workers]

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; 0 once every worker has stopped."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for worker in self.workers:
                self._start(worker)
            while not self._stopping:
                self._tend()
                time.sleep(POLL_S)
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self._stopping:
            log.info(
                "%s: stopping %d workers (each drains)",
                signal.Signals(signum).name,
                len(self.workers),
            )
        self._stopping = True

    def _start(self, worker: Worker) -> None:
        fds = [s.fileno() for s in worker.sockets]
        args = [*self.command, "--worker-index", str(worker.index)]
        for fd in fds:
            args += ["--listen-fd", str(fd)]
        args += ["--private-fd", str(worker.private.fileno())]
        args += ["--sibling-ports", ",".join(map(str, self.sibling_ports))]
        worker.process = subprocess.Popen(args, pass_fds=[*fds, worker.private.fileno()])
        worker.started = time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _tend(self) -> None:
        """Restart every worker that died (after its back-off)."""
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is not None:
                ran = now - worker.started
                worker.failures = 0 if ran >= HEALTHY_RUN_S else worker.failures + 1
                delay = (
                    min(MAX_BACKOFF_S, 0.5 * 2 ** (worker.failures - 1)) if worker.failures else 0.0
                )
                log.warning(
                    "worker %d (pid %d) exited with %s after %.1f s: restarting in %.1f s",
                    worker.index,
                    process.pid,
                    process.returncode,
                    ran,
                    delay,
                )
                worker.process, worker.restart_at = None, now + delay
            if worker.process is None and now >= worker.restart_at:
                self._start(worker)

    def _stop_all(self) -> int:
        running = [w.process for w in self.workers if w.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker pid %d outlived the %.0f s grace: killed", process.pid, self.grace_s
                )
                process.kill()
                process.wait()
        for worker in self.workers:
            worker.private.close()
            for sock in worker.sockets:
                sock.close()
        return 0


def orphaned(supervisor_pid: int) -> bool:
    """Whether this worker's supervisor is gone (it was killed; its workers must stop too)."""
    return os.getppid() != supervisor_pid
