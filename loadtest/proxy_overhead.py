"""Proxy overhead: the latency and throughput fairgate's proxy path adds, next to a bare forwarder.

``python -m loadtest.proxy_overhead [--duration S] [--write BENCHMARKS.md]`` (``make bench``)

One upstream that answers instantly is reached three ways, side by side in one run: directly,
through a minimal aiohttp forwarder, and through fairgate (``fairgate serve``, with its own
Redis). The upstream costs almost nothing, so whatever a path adds above "direct" is that
path's own cost. The forwarder (one shared client session, no auth, no parsing, streams relayed
with ``iter_any``) is the floor for any Python proxy on aiohttp, so fairgate is judged against
it rather than against zero: its added p50 latency should stay within 1.5x the forwarder's and
its throughput within 20% of the forwarder's.

Every server runs in its own process on loopback, on uvloop and behind the same
:func:`fairgate.serving.serve`, so the three paths differ only in their request handlers. The
load generator runs in this process: a closed loop of N workers, each sending its next request
as soon as the previous one is done, for a fixed time per cell after a warm-up, the three paths
taking turns in one-second slices. All processes share this machine's CPUs, so absolute figures
depend on it; the ratios between paths measured in the same run are the result, and the CPU
time each path's processes spend per request explains them.

Every process this benchmark starts is stopped when it ends, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import uvloop
import yaml
from aiohttp import web

from fairgate.serving import serve, until_signalled
from loadtest.report import machine, markdown_table, revision, write_section
from loadtest.services import free_ports

#: The section of BENCHMARKS.md this benchmark owns (see :mod:`loadtest.report`).
SECTION = "proxy-overhead"
MODULE = "loadtest.proxy_overhead"
LOOPBACK = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
MODEL = "bench-model"
TENANT = "bench"
API_KEY = "fg-bench-key"

MODES = ("direct", "forwarder", "fairgate")
CONCURRENCIES = (1, 16, 64)
DEFAULT_DURATION_S = 5.0
DEFAULT_WARMUP_S = 1.0
#: The paths of a cell take turns in slices this long (see :func:`measure_workload`).
SLICE_S = 1.0
#: fairgate's added p50 may be at most this multiple of the forwarder's.
TARGET_ADDED_P50_RATIO = 1.5
#: fairgate's requests/s must be at least this fraction of the forwarder's.
TARGET_THROUGHPUT_RATIO = 0.8
#: The full path's absolute targets: requests/s from one gateway process (non-streaming, at
#: the best concurrency measured) and added p50 at concurrency 1 (non-streaming).
TARGET_FULL_PATH_RPS = 2000.0
TARGET_ALONE_ADDED_S = 0.001

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=30.0)

# ------------------------------------------------------------------ what the upstream says

STREAM_CHUNKS = 16
_USAGE = {"prompt_tokens": 12, "completion_tokens": STREAM_CHUNKS, "total_tokens": 28}


def _event(payload: dict[str, Any]) -> bytes:
    """One SSE event carrying ``payload``, as engines write them."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A ``chat.completion.chunk`` in OpenAI's shape."""
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": choices,
        **extra,
    }


#: Built once: the upstream must cost as close to nothing per request as aiohttp allows.
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello " * STREAM_CHUNKS},
                "finish_reason": "length",
            }
        ],
        "usage": _USAGE,
    }
).encode()
CONTENT_EVENTS = tuple(
    _event(
        _chunk(
            [
                {
                    "index": 0,
                    "delta": {"content": "hello "},
                    "finish_reason": "length" if i == STREAM_CHUNKS - 1 else None,
                }
            ]
        )
    )
    for i in range(STREAM_CHUNKS)
)
USAGE_EVENT = _event(_chunk([], usage=_USAGE))
DONE_EVENT = b"data: [DONE]\n\n"

#: The client asks for usage, so every path sends it the same events (fairgate always asks
#: the engine for usage, and would otherwise drop the chunk again on the way back).
CHAT_REQUEST: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Hello!"}],
    "max_tokens": STREAM_CHUNKS,
}
STREAM_REQUEST = {**CHAT_REQUEST, "stream": True, "stream_options": {"include_usage": True}}
#: Events a complete stream carries: the content chunks, the usage chunk and [DONE].
STREAM_EVENTS = STREAM_CHUNKS + 2


# ------------------------------------------------------------------------ the two servers


async def _health(request: web.Request) -> web.Response:
    """Liveness: fairgate's health checker probes its backend here, the benchmark both servers."""
    return web.Response(text="ok")


def upstream_app() -> web.Application:
    """An OpenAI-style chat endpoint that answers at once: prebuilt bodies, no sleeps."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=COMPLETION, content_type="application/json")
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for event in CONTENT_EVENTS:  # one write per event, as an engine sends its tokens
            await response.write(event)
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(USAGE_EVENT)
        await response.write(DONE_EVENT)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    app.router.add_get("/health", _health)
    return app


_SESSION = web.AppKey("session", aiohttp.ClientSession)


def forwarder_app(upstream: str) -> web.Application:
    """The least a Python proxy can do: relay body and response through one shared session."""

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[_SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[_SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app[_SESSION].post(
            upstream + request.path, data=body, headers={"Content-Type": "application/json"}
        ) as answer:
            if answer.content_type != "text/event-stream":
                return web.Response(
                    status=answer.status, body=await answer.read(), content_type=answer.content_type
                )
            response = web.StreamResponse(status=answer.status)
            response.content_type = answer.content_type
            await response.prepare(request)
            async for data in answer.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post(CHAT_PATH, forward)
    app.router.add_get("/health", _health)
    return app


#: The servers this module runs in a child process of its own: ``--serve KIND``.
SERVER_APPS: dict[str, Callable[[argparse.Namespace], web.Application]] = {
    "upstream": lambda args: upstream_app(),
    "forwarder": lambda args: forwarder_app(args.upstream),
}


def run_server(kind: str, args: argparse.Namespace) -> int:
    """Serve one app until SIGINT/SIGTERM, on the same loop and listener as ``fairgate serve``.

    Same event loop, same ``serve`` (no access log, handler cancellation), same signal handling:
    the three paths then differ only in what their handlers do.
    """

    async def main() -> None:
        runner = await serve(SERVER_APPS[kind](args), LOOPBACK, args.port)
        try:
            await until_signalled()
        finally:
            await runner.cleanup()

    uvloop.run(main())
    return 0


# -------------------------------------------------------------------------- processes


#: A readiness check: None once the process is ready, else what it saw instead.
Probe = Callable[[], str | None]


def http_ok(url: str) -> Probe:
    """Ready when ``url`` answers 200."""

    def probe() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return None  # urlopen raises HTTPError for any status >= 400
        except urllib.error.HTTPError as exc:
            return f"GET {url}: {exc.code} {exc.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as exc:
            return f"GET {url}: {exc}"

    return probe


def tcp_open(port: int) -> Probe:
    """Ready when something accepts connections on the loopback ``port``."""

    def probe() -> str | None:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            error = sock.connect_ex((LOOPBACK, port))
        return None if error == 0 else f"connect to port {port}: {os.strerror(error)}"

    return probe


def _child_env() -> dict[str, str]:
    """This environment minus what would override the generated config (``REDIS_URL``, ...)."""
    return {
        k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("FAIRGATE_")
    }


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Ask politely (SIGTERM), then insist (SIGKILL) if it has not exited in time."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_process(
    stack: contextlib.ExitStack,
    name: str,
    argv: list[str],
    ready: Probe,
    logs: Path,
) -> subprocess.Popen[bytes]:
    """Start ``argv``, registered on ``stack`` for stopping, and wait until ``ready``.

    Its output goes to a log file rather than the terminal; what the probe last saw and the
    tail of that log are the error message if the process dies or does not become ready.
    """
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_child_env()
        )
    stack.callback(stop_process, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while (seen := ready()) is not None:
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-2000:]
            state = f"exited with {process.returncode}" if process.poll() is not None else seen
            raise RuntimeError(f"{name} did not become ready ({state}):\n{tail}")
        time.sleep(0.05)
    return process


@dataclass(frozen=True)
class Target:
    """One way of reaching the upstream's chat endpoint, and the processes it adds to the path."""

    mode: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    #: The processes whose CPU time is the path's own cost, by name (none when direct).
    processes: dict[str, int] = field(default_factory=dict)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; NaN where /proc is missing.

    On a machine with fewer cores than busy processes, CPU per request is what throughput
    and the queueing part of latency follow, and it is much steadier than either.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(stat[11]) + int(stat[12])) / _CLOCK_TICKS


def fairgate_config(port: int, redis_port: int, upstream: str) -> dict[str, Any]:
    """One pool with one backend (the upstream), one tenant, limits far above the load."""
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
            TENANT: {
                "max_concurrency": 4096,
                "max_queued": 4096,
                "max_inflight_tokens": 100_000_000,
                "api_keys": [API_KEY],
            }
        },
    }


#: The processes whose log is shown after the run if they wrote anything (Redis always does).
_QUIET_SERVERS = ("upstream", "forwarder", "fairgate")


def server_logs(workdir: Path) -> dict[str, list[str]]:
    """The lines each server logged, for those that logged any: a warning may explain a figure."""
    logs = {}
    for name in _QUIET_SERVERS:
        path = workdir / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        if lines:
            logs[name] = lines
    return logs


def start_stack(stack: contextlib.ExitStack, workdir: Path) -> list[Target]:
    """Redis, the upstream, the forwarder and fairgate, each in its own process, all ready."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    redis_port, upstream_port, forwarder_port, gateway_port = free_ports(4)
    upstream = f"http://{LOOPBACK}:{upstream_port}"
    forwarder = f"http://{LOOPBACK}:{forwarder_port}"
    gateway = f"http://{LOOPBACK}:{gateway_port}"
    this = [sys.executable, "-m", MODULE]

    redis = start_process(
        stack,
        "redis",
        [redis_server, "--bind", LOOPBACK, "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        tcp_open(redis_port),
        workdir,
    )  # fmt: skip
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
    config = workdir / "fairgate.yaml"
    config.write_text(yaml.safe_dump(fairgate_config(gateway_port, redis_port, upstream)))
    fairgate = start_process(
        stack,
        "fairgate",
        [sys.executable, "-m", "fairgate.cli", "--log-level", "warning", "serve",
         "--config", str(config)],
        http_ok(gateway + "/readyz"),  # Redis answers and the upstream passed its health probe
        workdir,
    )  # fmt: skip
    return [
        Target("direct", upstream + CHAT_PATH),
        Target("forwarder", forwarder + CHAT_PATH, processes={"forwarder": forwarding.pid}),
        Target(
            "fairgate",
            gateway + CHAT_PATH,
            {"Authorization": f"Bearer {API_KEY}"},
            processes={"fairgate": fairgate.pid, "redis": redis.pid},
        ),
    ]


# ----------------------------------------------------------------------- load generator

Metric = Literal["ttfb", "total"]


@dataclass(frozen=True)
class Cell:
    """One measurement: a path, streamed or not, at a number of concurrent clients."""

    mode: str
    stream: bool
    concurrency: int


@dataclass
class Samples:
    """What the requests of one cell showed: latencies (s) of the correct ones, failures, cost."""

    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0  # seconds under load
    cpu: dict[str, float] = field(default_factory=dict)  # CPU s of the path's processes


@dataclass(frozen=True)
class Result:
    """A measured cell."""

    cell: Cell
    samples: Samples

    @property
    def rps(self) -> float:
        return len(self.samples.total) / self.samples.elapsed

    def cpu_per_request(self, process: str | None = None) -> float:
        """CPU seconds per request of one of the path's processes, or of all (NaN if unknown)."""
        spent = (
            self.samples.cpu.get(process, math.nan) if process else sum(self.samples.cpu.values())
        )
        return spent / max(len(self.samples.total), 1)

    def percentile(self, metric: Metric, q: float) -> float:
        """Nearest-rank percentile ``q`` (0-1) of ``metric``, in seconds."""
        values = sorted(getattr(self.samples, metric))
        if not values:
            return math.nan
        return values[max(0, math.ceil(q * len(values)) - 1)]


def _complete(payload: bytes, stream: bool) -> bool:
    """Whether a 200 body is the whole answer: every event of a stream, a usage'd completion."""
    if stream:
        return payload.endswith(DONE_EVENT) and payload.count(b"\n\n") == STREAM_EVENTS
    return payload.endswith(b"}") and b'"usage"' in payload


async def _one_request(
    session: aiohttp.ClientSession, target: Target, body: bytes, stream: bool
) -> tuple[float, float] | None:
    """Time to the first body byte and to the end of one request; None if it failed."""
    started = time.perf_counter()
    async with session.post(target.url, data=body, headers=target.headers) as response:
        first = await response.content.readany()
        ttfb = time.perf_counter() - started
        rest = await response.content.read()
        total = time.perf_counter() - started
        ok = response.status == 200 and _complete(first + rest, stream)
    return (ttfb, total) if ok else None


async def _worker(
    session: aiohttp.ClientSession,
    target: Target,
    body: bytes,
    stream: bool,
    deadline: float,
    samples: Samples,
) -> None:
    """One closed-loop client: the next request leaves as soon as the previous one is done."""
    while time.perf_counter() < deadline:
        try:
            timing = await _one_request(session, target, body, stream)
        except (aiohttp.ClientError, TimeoutError):
            timing = None
        if timing is None:
            samples.errors += 1
        else:
            samples.ttfb.append(timing[0])
            samples.total.append(timing[1])


async def _load(
    session: aiohttp.ClientSession,
    target: Target,
    cell: Cell,
    duration: float,
    samples: Samples,
) -> None:
    """``cell.concurrency`` workers against ``target`` for ``duration`` s, added to ``samples``."""
    body = json.dumps(STREAM_REQUEST if cell.stream else CHAT_REQUEST).encode()
    cpu_before = {name: cpu_seconds(pid) for name, pid in target.processes.items()}
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(
            _worker(session, target, body, cell.stream, deadline, samples)
            for _ in range(cell.concurrency)
        )
    )
    samples.elapsed += time.perf_counter() - started
    for name, pid in target.processes.items():
        samples.cpu[name] = samples.cpu.get(name, 0.0) + cpu_seconds(pid) - cpu_before[name]


async def measure_workload(
    targets: list[Target], stream: bool, concurrency: int, duration: float, warmup: float
) -> list[Result]:
    """Every path at one workload and concurrency, interleaved in slices of about a second.

    Anything else this machine runs comes and goes over seconds; taking the paths in turn, a
    slice at a time, spreads such a burst over all of them instead of charging it to whichever
    path happened to be measured then. Each path is warmed up first (connections on every hop,
    the gateway's caches) and keeps its own client, so its connections stay open between slices.
    """
    cells = [Cell(target.mode, stream, concurrency) for target in targets]
    samples = [Samples() for _ in targets]
    rounds = max(1, round(duration / SLICE_S))
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0), timeout=CLIENT_TIMEOUT
                )
            )
            for _ in targets
        ]
        for session, target, cell in zip(sessions, targets, cells, strict=True):
            await _load(session, target, cell, warmup, Samples())
        for _ in range(rounds):
            for session, target, cell, cell_samples in zip(
                sessions, targets, cells, samples, strict=True
            ):
                await _load(session, target, cell, duration / rounds, cell_samples)
    return [Result(cell, cell_samples) for cell, cell_samples in zip(cells, samples, strict=True)]


async def measure_all(
    targets: list[Target], concurrencies: Iterable[int], duration: float, warmup: float
) -> tuple[dict[Cell, Result], str]:
    """Every cell, with progress on stderr; also the event loop's class, for the report."""
    loop = asyncio.get_running_loop()
    loop_name = f"{type(loop).__module__}.{type(loop).__name__}"
    results: dict[Cell, Result] = {}
    for stream in (False, True):
        for concurrency in concurrencies:
            for result in await measure_workload(targets, stream, concurrency, duration, warmup):
                results[result.cell] = result
                print(
                    f"{workload(stream):>13} c={concurrency:<3} {result.cell.mode:>9}: "
                    f"{result.rps:8,.0f} req/s  p50 {ms(result.percentile('total', 0.5))}"
                    f"  errors {result.samples.errors}",
                    file=sys.stderr,
                    flush=True,
                )
    return results, loop_name


# ------------------------------------------------------------------------------ report


def workload(stream: bool) -> str:
    return "streaming" if stream else "non-streaming"


def ms(seconds: float, signed: bool = False) -> str:
    return f"{seconds * 1e3:{'+' if signed else ''}.2f} ms"


def us(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e6:,.0f} µs"


def cpu_cell(result: Result) -> str:
    """CPU per request of a path, with its Redis's share when it has one."""
    shown = us(result.cpu_per_request())
    if "redis" in result.samples.cpu:
        shown += f" (Redis {us(result.cpu_per_request('redis'))})"
    return shown


def added(results: dict[Cell, Result], cell: Cell, metric: Metric, q: float) -> float:
    """Percentile ``q`` of ``metric`` on ``cell``'s path minus the same percentile direct.

    A difference of percentiles, not a percentile of differences: the two runs are separate.
    """
    direct = results[Cell("direct", cell.stream, cell.concurrency)]
    return results[cell].percentile(metric, q) - direct.percentile(metric, q)


#: The latencies reported per workload: a whole response, or first byte and end of a stream.
METRICS: dict[bool, tuple[tuple[Metric, str], ...]] = {
    False: (("total", ""),),
    True: (("ttfb", "TTFB "), ("total", "total ")),
}


def cells_table(results: dict[Cell, Result], stream: bool, concurrencies: list[int]) -> str:
    """Every path of one workload: throughput, CPU, latencies and latency added over direct."""
    headers = ["Conc.", "Path", "req/s", "CPU/req"]
    for _, label in METRICS[stream]:
        headers += [f"{label}p50", f"{label}p99", f"added {label}p50", f"added {label}p99"]
    rows = []
    for concurrency in concurrencies:
        for mode in MODES:
            cell = Cell(mode, stream, concurrency)
            result = results[cell]
            cpu = "—" if mode == "direct" else cpu_cell(result)
            row = [str(concurrency), mode, f"{result.rps:,.0f}", cpu]
            for metric, _ in METRICS[stream]:
                row += [ms(result.percentile(metric, 0.5)), ms(result.percentile(metric, 0.99))]
                row += (
                    ["—", "—"]
                    if mode == "direct"
                    else [ms(added(results, cell, metric, q), signed=True) for q in (0.5, 0.99)]
                )
            rows.append(row + [str(result.samples.errors)])
    headers.append("Errors")
    return markdown_table(headers, "rl" + "r" * (len(headers) - 2), rows)


@dataclass(frozen=True)
class Headline:
    """fairgate against the forwarder for one workload, latency metric and concurrency."""

    stream: bool
    metric: Metric
    concurrency: int
    forwarder_added: float
    fairgate_added: float
    forwarder_rps: float
    fairgate_rps: float
    forwarder_cpu: float  # CPU seconds per request of the path's own processes
    fairgate_cpu: float
    fairgate_cpu_shown: str  # with Redis's share

    @property
    def name(self) -> str:
        label = dict(METRICS[self.stream])[self.metric].strip()
        return workload(self.stream) + (f", {label}" if label else "")

    @property
    def latency_ratio(self) -> float | None:
        """None when the forwarder adds nothing measurable (the ratio would mean nothing)."""
        return self.fairgate_added / self.forwarder_added if self.forwarder_added > 0 else None

    @property
    def throughput_ratio(self) -> float:
        return self.fairgate_rps / self.forwarder_rps

    @property
    def latency_met(self) -> bool:
        ratio = self.latency_ratio
        return self.fairgate_added <= 0 if ratio is None else ratio <= TARGET_ADDED_P50_RATIO

    @property
    def throughput_met(self) -> bool:
        return self.throughput_ratio >= TARGET_THROUGHPUT_RATIO


def headlines(results: dict[Cell, Result], concurrencies: list[int]) -> list[Headline]:
    """The comparisons the targets are about, one per workload, metric and concurrency."""
    found = []
    for stream, metrics in METRICS.items():
        for metric, _ in metrics:
            for c in concurrencies:
                forwarder, fairgate = Cell("forwarder", stream, c), Cell("fairgate", stream, c)
                found.append(
                    Headline(
                        stream,
                        metric,
                        c,
                        added(results, forwarder, metric, 0.5),
                        added(results, fairgate, metric, 0.5),
                        results[forwarder].rps,
                        results[fairgate].rps,
                        results[forwarder].cpu_per_request(),
                        results[fairgate].cpu_per_request(),
                        cpu_cell(results[fairgate]),
                    )
                )
    return found


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def headline_table(rows: list[Headline]) -> str:
    """fairgate / forwarder: added p50 and throughput, with the verdict on each target."""
    table = []
    for h in rows:
        ratio = h.latency_ratio
        shown = "n/a" if ratio is None else f"{ratio:.2f}×"
        table.append(
            [
                h.name,
                str(h.concurrency),
                ms(h.forwarder_added, signed=True),
                ms(h.fairgate_added, signed=True),
                f"{shown} ({_verdict(h.latency_met)})",
                f"{h.forwarder_rps:,.0f}",
                f"{h.fairgate_rps:,.0f}",
                f"{h.throughput_ratio:.2f} ({_verdict(h.throughput_met)})",
                f"{us(h.forwarder_cpu)} / {h.fairgate_cpu_shown}",
            ]
        )
    return markdown_table(
        [
            "Workload",
            "Conc.",
            "Forwarder added p50",
            "fairgate added p50",
            f"Ratio (target ≤ {TARGET_ADDED_P50_RATIO:g}×)",
            "Forwarder req/s",
            "fairgate req/s",
            f"Ratio (target ≥ {TARGET_THROUGHPUT_RATIO:g})",
            "CPU/req forwarder / fairgate",
        ],
        "lrrrrrrrr",
        table,
    )


def full_path_table(results: dict[Cell, Result], concurrencies: list[int]) -> str:
    """fairgate's absolute targets: requests/s from one process, added p50 when alone."""
    rows = []
    best = max(concurrencies, key=lambda c: results[Cell("fairgate", False, c)].rps)
    rps = results[Cell("fairgate", False, best)].rps
    rows.append(
        [
            f"requests/s, one gateway process (≥ {TARGET_FULL_PATH_RPS:,.0f})",
            f"{rps:,.0f} (non-streaming, concurrency {best})",
            _verdict(rps >= TARGET_FULL_PATH_RPS),
        ]
    )
    if 1 in concurrencies:
        paths: tuple[tuple[bool, Metric], ...] = ((False, "total"), (True, "ttfb"))
        for stream, metric in paths:
            alone = added(results, Cell("fairgate", stream, 1), metric, 0.5)
            what = "non-streaming" if not stream else "streaming, first byte"
            rows.append(
                [
                    f"added p50 at concurrency 1, {what} (< {ms(TARGET_ALONE_ADDED_S)})",
                    ms(alone),
                    _verdict(alone < TARGET_ALONE_ADDED_S),
                ]
            )
    return markdown_table(["Target", "fairgate", "Verdict"], "lrl", rows)


def _log_message(line: str, limit: int = 160) -> str:
    """A log line without its date and time, shortened."""
    message = line.split(" ", 2)[-1] if line[:4].isdigit() else line
    return message if len(message) <= limit else message[: limit - 1] + "…"


def reading(results: dict[Cell, Result], rows: list[Headline], logs: dict[str, list[str]]) -> str:
    """A plain-words summary computed from the figures, so that it stays true on every run."""
    alone = min((h for h in rows if not h.stream), key=lambda h: h.concurrency)
    latency_met = sum(h.latency_met for h in rows)
    throughput_rows = [h for h in rows if h.metric == "total"]  # one per measured cell
    throughput_met = sum(h.throughput_met for h in throughput_rows)
    ratios = [h.throughput_ratio for h in throughput_rows]
    errors = {mode: sum(r.samples.errors for r in results.values() if r.cell.mode == mode)
              for mode in MODES}  # fmt: skip
    alone_ratio = alone.latency_ratio
    text = [
        f"At concurrency {alone.concurrency}, non-streaming (nothing queues), a request through "
        f"fairgate takes {ms(alone.fairgate_added)} longer at p50 than direct, through the bare "
        f"forwarder {ms(alone.forwarder_added)}"
        + (f", so fairgate costs {alone_ratio:.2f}× the floor." if alone_ratio else "."),
        f"The latency target (added p50 ≤ {TARGET_ADDED_P50_RATIO:g}× the forwarder's) is met "
        f"in {latency_met} of {len(rows)} rows; the throughput target (≥ "
        f"{TARGET_THROUGHPUT_RATIO:g}× the forwarder's requests/s) in {throughput_met} of "
        f"{len(throughput_rows)} cells (fairgate/forwarder from {min(ratios):.2f} to "
        f"{max(ratios):.2f}).",
    ]
    cpu_ratios = [h.fairgate_cpu / h.forwarder_cpu for h in throughput_rows if h.forwarder_cpu > 0]
    if cpu_ratios:
        text.append(
            f"fairgate and its Redis spend {min(cpu_ratios):.1f}-{max(cpu_ratios):.1f}× the CPU "
            "time per request that the forwarder does; with every process competing for the same "
            "cores, that ratio is what sets the throughput ratio and the queueing part of the "
            "added latency."
        )
    if failed := {mode: n for mode, n in errors.items() if n}:
        counts = ", ".join(f"{n} through {mode}" for mode, n in failed.items())
        text.append(f"Requests that failed or came back incomplete: {counts}.")
    for name, lines in logs.items():
        text.append(
            f"{name} logged {len(lines)} lines during the run, the last: "
            f"`{_log_message(lines[-1])}`."
        )
    return " ".join(text)


def reproduce_command(argv: list[str]) -> str:
    """The exact command of this run; ``make bench`` runs the default one."""
    command = f"`{shlex.join(['python', '-m', MODULE, *argv])}`"
    return command + (" (what `make bench` runs)" if argv == ["--write", "BENCHMARKS.md"] else "")


def render_section(
    run: Run,
    concurrencies: list[int],
    duration: float,
    warmup: float,
    load_before: float,
    code_revision: str,
    argv: list[str],
    elapsed: float,
) -> str:
    """The BENCHMARKS.md section (without its delimiters)."""
    results = run.results
    rows = headlines(results, concurrencies)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    cpus = os.cpu_count()
    return f"""## Proxy overhead: fairgate next to a bare aiohttp forwarder

What fairgate's proxy path adds to a request, measured against an upstream that answers at once
(a prebuilt `chat.completion`, or {STREAM_CHUNKS} SSE content chunks, the usage chunk and
`[DONE]` written back to back), reached three ways in the same run: **direct**, through a
**forwarder** (a minimal aiohttp proxy: one shared client session, no auth, no parsing, streams
relayed with `iter_any`; the floor for any Python proxy) and through **fairgate**
(`fairgate serve`: one pool with the upstream as its backend, one tenant and its key, a private
`redis-server`). Each server is its own process on loopback, on uvloop, behind the same
`fairgate.serving.serve` listener. The load generator is closed loop: N clients each send the
next request as soon as the previous one ends, {duration:g} s per cell after a {warmup:g} s
warm-up; the three paths of a row take turns in slices of {SLICE_S:g} s, so that whatever else
the machine does is spread over all three. Streamed requests ask for
`stream_options.include_usage`, so every path returns the same events. TTFB is the first body
byte (the first content chunk); "added" is a path's percentile minus the same percentile
direct; CPU/req is the CPU time (user + system) the path's own processes spent per request:
the forwarder, or fairgate plus its Redis.

**This machine has {cpus} CPUs, shared by the load generator, the upstream, the proxy under
test and Redis.** From concurrency 16 up the machine is CPU-bound: added latency is then mostly
waiting for a CPU, and requests/s measures the CPU time of the whole chain per request, not the
proxy's alone. Other work on the machine adds noise (load average {load_before:.2f} when this
run started). Absolute figures do not transfer to other machines; the ratios between fairgate
and the forwarder, measured in the same run, are the result, and CPU/req is the steadiest of
them.

fairgate / forwarder (targets: added p50 within {TARGET_ADDED_P50_RATIO:g}× the forwarder's,
throughput within {1 - TARGET_THROUGHPUT_RATIO:.0%} of it):

{headline_table(rows)}

The full path's own targets (auth, estimate, admission, relay and release, against the instant
upstream):

{full_path_table(results, concurrencies)}

Non-streaming requests:

{cells_table(results, False, concurrencies)}

Streaming requests ({STREAM_CHUNKS} content chunks):

{cells_table(results, True, concurrencies)}

{reading(results, rows, run.logs)} p99 figures come from a few seconds per cell and move by a
millisecond or more between runs; read them as an order of magnitude.

Reproduce with {reproduce_command(argv)}.
Machine: {machine()}; load generator on `{run.loop_name}`; fairgate at {code_revision}; run on
{today}, {elapsed:.0f} s of wall time in all."""


# ------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"seconds measured per cell (default {DEFAULT_DURATION_S:g}; 18 cells)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP_S,
        metavar="S",
        help=f"seconds of unmeasured load before each cell (default {DEFAULT_WARMUP_S:g})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=list(CONCURRENCIES),
        metavar="N",
        help="numbers of concurrent clients (default 1 16 64)",
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help=f"replace (or append) FILE's {SECTION} section"
    )
    # The child processes this benchmark starts for its own servers.
    parser.add_argument("--serve", choices=sorted(SERVER_APPS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    return parser


@dataclass(frozen=True)
class Run:
    """Everything one run measured and observed."""

    results: dict[Cell, Result]
    loop_name: str
    logs: dict[str, list[str]]  # what each server logged, for those that did


def run_benchmark(concurrencies: list[int], duration: float, warmup: float) -> Run:
    """Start every process, measure every cell, stop every process, also on errors and Ctrl-C.

    What the servers logged is shown on stderr in every case: it may explain a failure.
    """
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fg-overhead-")))
        targets = start_stack(stack, workdir)
        try:
            results, loop_name = uvloop.run(measure_all(targets, concurrencies, duration, warmup))
        finally:
            logs = server_logs(workdir)
            for name, lines in logs.items():
                shown = "\n".join(lines[-20:])
                print(f"{name} logged {len(lines)} lines, the last:\n{shown}", file=sys.stderr)
        return Run(results, loop_name, logs)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM behaves as Ctrl-C: the event loop's runner cancels the load, cleanup follows."""
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.serve:
        return run_server(args.serve, args)

    started, load_before, code_revision = time.perf_counter(), os.getloadavg()[0], revision()
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated run stops its children too
    try:
        run = run_benchmark(args.concurrency, args.duration, args.warmup)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"proxy_overhead: {exc}", file=sys.stderr)
        return 1
    section = render_section(
        run,
        args.concurrency,
        args.duration,
        args.warmup,
        load_before,
        code_revision,
        argv,
        time.perf_counter() - started,
    )
    print(section)
    if args.write:
        write_section(args.write, SECTION, section)
        print(f"\nwrote the {SECTION} section of {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
