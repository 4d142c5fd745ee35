"""``python -m loadtest.proxy_overhead [--duration S] [--baseline REV] [--write BENCHMARKS.md]``
(``make bench`` runs it without ``--baseline``).

Also the entry point of the benchmark's own servers (``--serve upstream|forwarder``), which it
starts as child processes of this same module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtest.proxy_overhead.measurement import (
    CONCURRENCIES,
    DEFAULT_DURATION_S,
    DEFAULT_WARMUP_S,
    METRICS,
    run_benchmark,
)
from loadtest.proxy_overhead.rendering import SECTION, render_section
from loadtest.proxy_overhead.stack import MODULE
from loadtest.proxy_overhead.workload import MODES, SERVER_APPS, run_server
from loadtest.report import run_and_publish
from loadtest.services import stop_on_sigterm


def _parser() -> argparse.ArgumentParser:
    cells = len(MODES) * len(METRICS) * len(CONCURRENCIES)
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Proxy overhead: the latency and throughput fairgate's proxy path adds, "
        "next to a bare forwarder.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"seconds measured per cell (default {DEFAULT_DURATION_S:g}; {cells} cells)",
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
        help=f"numbers of concurrent clients (default {' '.join(map(str, CONCURRENCIES))})",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run fairgate as the git revision REV had it, next to fairgate now without "
        "and with quotas (before/after in one run)",
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help=f"replace (or append) FILE's {SECTION} section"
    )
    # The child processes this benchmark starts for its own servers.
    parser.add_argument("--serve", choices=sorted(SERVER_APPS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a listening socket to serve
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.serve:
        return run_server(args.serve, args.port, args.upstream, args.fd)

    stop_on_sigterm()  # a terminated run stops its children too
    return run_and_publish(
        "proxy_overhead",
        lambda: run_benchmark(args.concurrency, args.duration, args.warmup, args.baseline),
        lambda run: render_section(run, argv),
        SECTION,
        args.write,
    )
