"""The ``fairgate`` command.

Subcommands:
  ``serve``         run the gateway
  ``sim``           run one simulated engine (an OpenAI-compatible server that behaves like vLLM)
  ``up``            start the local stack described by a config file (what ``make run`` does)
  ``check-config``  validate a config file and print what it declares
  ``loadtest``      run load-test scenarios and write their reports (``fairgate loadtest -h``)
  ``plan``          KV-cache capacity and budgets, per backend of a config or for presets
  ``admin``         tenants, keys, usage and config of a running deployment (its admin API)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fairgate import admin_cli, kv_capacity
from fairgate.settings import BackendConfig, ConfigError, Settings, load_settings
from fairgate.workers import worker_count

if TYPE_CHECKING:
    from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "fairgate.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"fairgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairgate",
        description="A multi-tenant fairness gateway for LLM inference: an OpenAI-compatible "
        "proxy that queues requests in Redis and releases them to engines in weighted-fair order.",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run one gateway replica: the OpenAI-compatible API, admission in the Redis "
        "of the config, and the backends it declares (which must already be running).",
    )
    _config_option(serve)
    serve.add_argument(
        "--workers",
        help="gateway processes sharing this host's ports, each a full replica on the same "
        "Redis: a count, or 'auto' for one per core (default: the config's server.workers, 1)",
    )
    # A worker's own arguments, given by its supervisor (fairgate/workers.py), not by people.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--listen-fd", type=int, action="append", help=argparse.SUPPRESS)
    serve.add_argument("--private-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--sibling-ports", help=argparse.SUPPRESS)
    serve.set_defaults(handler=_run_serve)

    sim = commands.add_parser("sim", help="run a simulated engine (vLLM-like, no GPU needed)")
    sim.add_argument(
        "--profile",
        default="h100-llama3-8b",
        help="a bundled profile's name or a profile YAML file (default: %(default)s)",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8001)
    sim.add_argument("--model", action="append", dest="models", help="served model id (repeatable)")
    sim.add_argument("--time-scale", type=float, default=1.0, help="simulated s per wall s")
    sim.add_argument("--seed", type=int, default=0, help="seed of the output-length draws")
    sim.add_argument("--max-num-seqs", type=int)
    sim.add_argument("--max-num-batched-tokens", type=int)
    sim.add_argument("--long-prefill-token-threshold", type=int)
    sim.add_argument("--max-model-len", type=int)
    sim.add_argument("--num-gpu-blocks", type=int, help="KV capacity in blocks (overrides profile)")
    sim.set_defaults(handler=_run_sim)

    up = commands.add_parser(
        "up",
        help="start the local stack of a config file (make run)",
        description="Start everything a config file declares on this machine (a private Redis, "
        "its simulated engines, the gateway) and stop it all on Ctrl-C: what `make run` does.",
    )
    _config_option(up)
    up.set_defaults(handler=_run_up)

    check = commands.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file (YAML plus FAIRGATE_* environment overrides) and "
        "print the pools, backends and tenants it declares; exit status 2 if invalid.",
    )
    _config_option(check)
    check.set_defaults(handler=_check_config)

    loadtest = commands.add_parser(
        "loadtest", help="run load-test scenarios", add_help=False, prefix_chars="+"
    )
    loadtest.add_argument("args", nargs="*")  # all of them for loadtest.kit.cli
    loadtest.set_defaults(handler=_run_loadtest)

    drain = commands.add_parser(
        "drain", help="stop new work to a backend on every replica (running work finishes)"
    )
    drain.add_argument("backend", help="backend name, as in the config's pools")
    _config_option(drain)
    drain.add_argument("--undo", action="store_true", help="take work again")
    drain.add_argument("--wait", action="store_true", help="return once nothing runs on it")
    drain.add_argument(
        "--url",
        help="drain through a gateway's admin API (http://host:port) instead of its Redis",
    )
    drain.add_argument(
        "--admin-token",
        default=os.environ.get("FAIRGATE_ADMIN_TOKEN"),
        help="admin token for --url (default: $FAIRGATE_ADMIN_TOKEN)",
    )
    drain.set_defaults(handler=_run_drain)

    plan = commands.add_parser("plan", help="KV-cache capacity and budgets (config or presets)")
    plan.add_argument("--config", type=Path, help="print the derivation for each backend")
    plan.add_argument("--preset", help="model preset (fairgate/presets.yaml)")
    plan.add_argument("--gpu", help="GPU preset")
    plan.add_argument("--gpu-memory-gib", type=float, help="GPU memory instead of a preset")
    plan.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    plan.add_argument("--context", type=int, help="context length for the concurrency figure")
    plan.add_argument("--weight-dtype", default="bf16", help="bf16, fp16, fp8, int8, int4")
    plan.add_argument("--kv-dtype", default="auto", help="auto (16-bit), fp8, ...")
    plan.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    plan.add_argument("--reserve-gib", type=float, help="activations etc. per GPU (2.5)")
    plan.add_argument("--block-size", type=int, default=16)
    plan.add_argument("--max-num-seqs", type=int)
    plan.add_argument("--headroom", type=float, help="share of KV for max_inflight_tokens (0.9)")
    plan.set_defaults(handler=_run_plan)

    admin_cli.add_parser(commands)
    return parser


def _config_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the gateway's YAML config (default: {_shown(DEFAULT_CONFIG)})",
    )


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it is inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _run_loadtest(args: argparse.Namespace) -> int:
    from loadtest.kit.cli import main as loadtest

    return loadtest(args.args)


def _render_backend(name: str, pool: str, backend: BackendConfig) -> str:
    """What ``fairgate plan --config`` prints for one backend: the derivation and the budgets."""
    title = f"backend {name} (pool {pool}, {backend.engine}, {backend.url})"
    lines = [title]
    if backend.capacity is not None:
        lines.extend(
            "  " + line
            for line in kv_capacity.plan_capacity(backend.capacity).render().splitlines()
        )
    else:
        lines.append("  no capacity declared: budgets as configured")
    for field in ("max_concurrency", "max_inflight_tokens"):
        source = "derived" if field in backend.derived_budgets else "configured"
        if field not in backend.model_fields_set and backend.capacity is None:
            source = "default"
        lines.append(f"  budget {field}: {getattr(backend, field):,} ({source})")
    if backend.engine in ("vllm", "sglang", "tgi"):
        lines.append(
            "  at run time the KV capacity the engine reports replaces the derived one "
            "(backends/engine_load.py)"
        )
    return "\n".join(lines)


def _run_plan(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    if args.config is not None:
        settings = load_settings(args.config)
        blocks = [_render_backend(n, p, b) for n, (p, b) in settings.backends().items()]
        print("\n\n".join(blocks))
        return 0
    if args.preset is None:
        print(kv_capacity.render_matrix(utilization=args.gpu_memory_utilization))
        print("\nKV tokens per engine; '-': no room for KV; '!': one full context does not fit.")
        print("Details: fairgate plan --preset MODEL --gpu GPU --tp N [--context N]")
        return 0
    given = {
        "gpu": args.gpu,
        "gpu_memory_gib": args.gpu_memory_gib,
        "model": args.preset,
        "tensor_parallel_size": args.tp,
        "context_length": args.context,
        "weight_dtype": args.weight_dtype,
        "kv_cache_dtype": args.kv_dtype,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "reserve_gib": args.reserve_gib,
        "block_size": args.block_size,
        "max_num_seqs": args.max_num_seqs,
        "headroom": args.headroom,
    }
    try:
        spec = kv_capacity.CapacityConfig(**{k: v for k, v in given.items() if v is not None})
        print(kv_capacity.plan_capacity(spec).render())
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            where = ".".join(str(part) for part in err["loc"]) or "arguments"
            print(
                f"fairgate plan: {where}: {err['msg'].removeprefix('Value error, ')}",
                file=sys.stderr,
            )
        return 2
    except kv_capacity.CapacityError as exc:
        print(f"fairgate plan: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_drain(args: argparse.Namespace) -> int:
    """Drain a backend through Redis, which every replica's admission reads at each decision,
    or with ``--url`` through a gateway's admin API (which drains it the same way)."""
    if args.url:
        return _drain_by_api(args)
    from admission.controller import Admission
    from backends.pools import Router
    from backends.state import BackendStates
    from fairgate.redis_client import connect

    settings = load_settings(args.config)
    if args.backend not in settings.backends():
        known = ", ".join(sorted(settings.backends()))
        print(f"fairgate drain: no backend {args.backend!r} (known: {known})", file=sys.stderr)
        return 2

    async def run() -> None:
        redis = connect(settings.redis)
        states = BackendStates(Router(settings).backends, Admission(redis, settings), settings)
        try:
            await states.drain(args.backend, not args.undo)
            await _drained(args, lambda: states.running(args.backend))
        finally:
            await redis.aclose()

    _run_async(run())
    return 0


async def _drained(args: argparse.Namespace, running: Callable[[], Awaitable[int]]) -> None:
    """Say what the drain did; with ``--wait``, wait until nothing runs on the backend."""
    left = await running()
    state = "takes work again" if args.undo else "drained: it gets no new work"
    print(f"{args.backend} {state}; {left} requests running on it")
    while args.wait and not args.undo and left:
        await asyncio.sleep(0.5)
        left = await running()
    if args.wait and not args.undo:
        print(f"{args.backend}: nothing runs on it any more")


def _drain_by_api(args: argparse.Namespace) -> int:
    """``fairgate drain --url``: the admin API's drain actions, and its state for ``--wait``."""
    import aiohttp

    if not args.admin_token:
        print("fairgate drain: --url needs --admin-token or FAIRGATE_ADMIN_TOKEN", file=sys.stderr)
        return 2
    base = args.url.rstrip("/") + "/admin/v1"
    headers = {"Authorization": f"Bearer {args.admin_token}"}
    failed: list[str] = []

    async def run() -> None:
        async with aiohttp.ClientSession(headers=headers, raise_for_status=False) as http:
            action = "undrain" if args.undo else "drain"
            async with http.post(f"{base}/backends/{args.backend}/{action}") as response:
                if response.status != 200:
                    error = (await response.json(content_type=None)).get("error", {})
                    failed.append(error.get("message", f"HTTP {response.status}"))
                    return

            async def running() -> int:
                async with http.get(f"{base}/state") as response:
                    response.raise_for_status()
                    state = await response.json()
                found = [b for b in state["backends"] if b["name"] == args.backend]
                return int(found[0]["in_flight"]["requests"]) if found else 0

            await _drained(args, running)

    try:
        _run_async(run())
    except (aiohttp.ClientError, ValueError) as exc:
        failed.append(f"{args.url} did not answer as a fairgate gateway: {exc}")
    if failed:
        print(f"fairgate drain: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def _run_sim(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from loadtest.simulator.profile import load_profile
    from loadtest.simulator.server import create_app

    try:
        profile = load_profile(args.profile).with_overrides(
            **{
                "scheduler.max_num_seqs": args.max_num_seqs,
                "scheduler.max_num_batched_tokens": args.max_num_batched_tokens,
                "scheduler.long_prefill_token_threshold": args.long_prefill_token_threshold,
                "max_model_len": args.max_model_len,
                "kv_cache.num_blocks": args.num_gpu_blocks,
            }
        )
    except (OSError, ValidationError) as exc:
        print(f"fairgate sim: bad profile {args.profile}: {exc}", file=sys.stderr)
        return 2

    app = create_app(profile, args.models, args.time_scale, args.seed)
    served = ", ".join(args.models or [profile.model])
    banner = f"simulated engine {profile.name} serving {served} on http://{args.host}:{args.port}"
    _serve_until_signalled(
        app, args.host, (args.port,), f"{banner} (time scale {args.time_scale:g})"
    )
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app

    settings = load_settings(args.config)
    server = settings.server
    if args.worker_index is not None:
        return _run_worker(args, settings)
    try:
        workers = worker_count(args.workers or server.workers)
    except ValueError as exc:
        raise ConfigError(f"--workers: {exc}") from exc
    if workers > 1:
        return _supervise(args, settings, workers)
    ports = (server.port,) if server.admin_port is None else (server.port, server.admin_port)
    _serve_until_signalled(
        create_app(settings), server.host, ports, _banner(settings), server.idle_timeout_s
    )
    return 0


def _banner(settings: Settings, workers: int = 1) -> str:
    host, port, admin_port = settings.server.host, settings.server.port, settings.server.admin_port
    processes = f", {workers} worker processes" if workers > 1 else ""
    return (
        f"fairgate listening on http://{host}:{port}/v1 "
        f"({len(settings.pools)} pools, {len(settings.tenants)} tenants in the file{processes}), "
        f"admin API on http://{host}:{admin_port or port}/admin/v1"
    )


def _supervise(args: argparse.Namespace, settings: Settings, workers: int) -> int:
    """Bind the ports once per worker (SO_REUSEPORT) and keep ``workers`` workers serving."""
    from fairgate.workers import Supervisor, reuse_port_sockets

    server = settings.server
    ports = [server.port] if server.admin_port is None else [server.port, server.admin_port]
    listeners = [reuse_port_sockets(server.host, port, workers) for port in ports]
    command = [sys.executable, "-m", "fairgate.cli", "--log-level", args.log_level, "serve"]
    command += ["--config", str(args.config)]
    logging.getLogger("fairgate").info("%s", _banner(settings, workers))
    return Supervisor(command, listeners, grace_s=server.worker_grace_s).run()


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    """One worker of ``fairgate serve --workers N``: serve the sockets its supervisor gave."""
    import socket

    from fairgate.serving import serve_sockets, until_signalled
    from fairgate.workers import orphaned
    from gateway.app import create_app
    from gateway.worker_metrics import WorkerPlace

    supervisor = os.getppid()
    place = WorkerPlace(args.worker_index, tuple(map(int, args.sibling_ports.split(","))))
    sockets = [socket.socket(fileno=fd) for fd in [*args.listen_fd, args.private_fd]]
    app = create_app(settings, worker=place)

    async def run() -> None:
        runner = await serve_sockets(app, sockets, settings.server.idle_timeout_s)
        logging.getLogger("fairgate").info("worker %d serving", place.index)
        try:
            await until_signalled(unless=lambda: orphaned(supervisor))
        finally:
            await runner.cleanup()

    _run_async(run())
    return 0


def _run_up(args: argparse.Namespace) -> int:
    from fairgate.launcher import run_stack

    settings = load_settings(args.config)
    return run_stack(settings, args.config)


def _check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    print(f"{args.config}: valid")
    for pool_name, pool in settings.pools.items():
        print(f"  pool {pool_name}: models {', '.join(sorted(pool.models))}")
        for name, backend in pool.backends.items():
            print(f"    backend {name}: {backend.url} ({backend.engine})")
    for tenant_id, tenant in settings.tenants.items():
        print(f"  tenant {tenant_id}: weight {tenant.weight:g}, {len(tenant.key_hashes())} key(s)")
    return 0


def _serve_until_signalled(
    app: web.Application,
    host: str,
    ports: tuple[int, ...],
    banner: str,
    idle_timeout_s: float | None = None,
) -> None:
    """Serve ``app`` on uvloop until SIGINT or SIGTERM, then shut it down cleanly."""
    from fairgate.serving import IDLE_TIMEOUT_S, serve, until_signalled

    async def run() -> None:
        runner = await serve(app, host, *ports, idle_timeout_s=idle_timeout_s or IDLE_TIMEOUT_S)
        logging.getLogger("fairgate").info("%s", banner)
        try:
            await until_signalled()
        finally:
            await runner.cleanup()

    _run_async(run())


def _run_async(coro: object) -> None:
    """Run on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
