"""Processes a benchmark starts for itself: a private Redis, free loopback ports, servers.

Benchmarks never use the machine's shared Redis on 6379: each starts its own, without
persistence, and stops it however the run ends. A child server logs to a file (not the
terminal), does not inherit the caller's ``REDIS_URL`` or ``FAIRGATE_*`` variables (they would
override its generated configuration and point it at someone else's Redis), and is stopped
with the :class:`contextlib.ExitStack` that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


def stop_on_sigterm() -> None:
    """SIGTERM behaves as Ctrl-C from now on: the event loop's runner cancels the load, and
    the run's cleanup stops every process it started."""
    signal.signal(signal.SIGTERM, _as_ctrl_c)


def _as_ctrl_c(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all bound at once, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Block until something accepts connections on ``port``; fail if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:.0f} s")


def wait_http_ok(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Block until ``url`` answers 200; fail if ``process`` exits or the time runs out.

    The error says what the last attempt saw (a status and body, or a connection error).
    """
    deadline = time.monotonic() + timeout_s
    seen = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process for {url} exited with {process.returncode} ({seen})")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return  # urlopen raises HTTPError for any status >= 400
        except urllib.error.HTTPError as exc:
            seen = f"GET {url}: {exc.code} {exc.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as exc:
            seen = f"GET {url}: {exc}"
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f} s ({seen})")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment minus ``REDIS_URL`` and ``FAIRGATE_*``, plus ``extra``."""
    inherited = {
        k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("FAIRGATE_")
    }
    return {**inherited, **(extra or {})}


def spawn(
    stack: contextlib.ExitStack,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` logging to ``log``, with :func:`child_env` (and the descriptors
    ``pass_fds``: a listening socket it serves on), stopped when ``stack`` closes."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(env),
            pass_fds=pass_fds,
        )
    stack.callback(stop, process)
    return process


def log_tail(log: Path, chars: int = 2000) -> str:
    """The end of a child's log: what to show when it did not start."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill if it does not go within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def redis_command(port: int, workdir: Path | None = None) -> list[str]:
    """A private, non-persistent ``redis-server`` on loopback ``port`` (files in ``workdir``)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    command = [executable, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    command += ["--appendonly", "no"]
    return command + (["--dir", str(workdir)] if workdir is not None else [])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private, non-persistent redis-server on a free port; yields its URL."""
    port = free_port()
    process = subprocess.Popen(redis_command(port), stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)
