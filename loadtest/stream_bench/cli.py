"""``python -m loadtest.stream_bench [--short] [--baseline REV] [--write BENCHMARKS.md]``.

Also the entry point of the benchmark's upstream (``--serve upstream``), which it starts as a
child process of this same module.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from loadtest.proxy_overhead.workload import run_app
from loadtest.report import run_and_publish
from loadtest.services import stop_on_sigterm
from loadtest.stream_bench.measurement import (
    ROUNDS,
    SHORT_ROUNDS,
    SHORT_STREAMS,
    STREAMS,
    run_benchmark,
)
from loadtest.stream_bench.rendering import SECTION, render_section
from loadtest.stream_bench.stack import MODULE
from loadtest.stream_bench.workload import upstream_app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Slow streams: thousands open at once through fairgate, next to a bare "
        "forwarder (CPU per chunk, memory per stream, TTFB, added gaps, pauses).",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help=f"{' and '.join(map(str, SHORT_STREAMS))} streams, shorter windows, no 10,000-"
        "stream turn (what `make bench` runs)",
    )
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        metavar="K",
        help=f"open streams per turn (default {' '.join(map(str, STREAMS))}, or the short set)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"turns of each path at each K, pooled (default {SHORT_ROUNDS} short, {ROUNDS} full)",
    )
    parser.add_argument(
        "--no-scale", action="store_true", help="skip the 10,000-stream turn of the full run"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run fairgate as the git revision REV had it (before/after in one run)",
    )
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="skip the control (the forwarder spending fairgate's extra CPU per chunk)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the gateways and the rest to CPUs"
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help=f"replace (or append) FILE's {SECTION} section"
    )
    parser.add_argument("--serve", choices=["upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser


def _serve_upstream(port: int) -> int:
    """The upstream, its cyclic collector off: it is the stand-in for an engine, not a path
    measured, and its own pauses (a full collection of its 2,000 streams' objects took 140-220
    ms) would delay every stream of whichever path's turn they fell in. It makes almost no
    cyclic garbage (a few hundred objects over a run), so memory stays flat without it."""
    gc.disable()
    return run_app(upstream_app(), port)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.serve:
        return _serve_upstream(args.port)

    stop_on_sigterm()  # a terminated run stops its children too
    streams = args.streams or list(SHORT_STREAMS if args.short else STREAMS)
    rounds = args.rounds or (SHORT_ROUNDS if args.short else ROUNDS)
    scale = not (args.short or args.no_scale)
    return run_and_publish(
        "stream_bench",
        lambda: run_benchmark(
            streams,
            rounds,
            args.short,
            scale,
            args.baseline,
            not args.no_pin,
            not args.no_control,
        ),
        lambda run: render_section(run, argv),
        SECTION,
        args.write,
    )
