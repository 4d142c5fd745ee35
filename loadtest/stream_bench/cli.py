"""``python -m loadtest.stream_bench [--short] [--baseline REV] [--write BENCHMARKS.md]``.

Also the entry point of the benchmark's upstream (``--serve upstream``), which it starts as a
child process of this same module.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from loadtest.proxy_overhead.workload import run_app
from loadtest.report import write_section
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
        "--no-pin", action="store_true", help="do not pin the gateways and the rest to CPUs"
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help=f"replace (or append) FILE's {SECTION} section"
    )
    parser.add_argument("--serve", choices=["upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM behaves as Ctrl-C: the event loop's runner cancels the load, cleanup follows."""
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.serve:
        return run_app(upstream_app(), args.port)

    signal.signal(signal.SIGTERM, _interrupt)
    streams = args.streams or list(SHORT_STREAMS if args.short else STREAMS)
    scale = not (args.short or args.no_scale)
    try:
        rounds = args.rounds or (SHORT_ROUNDS if args.short else ROUNDS)
        run = run_benchmark(streams, rounds, args.short, scale, args.baseline, not args.no_pin)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"stream_bench: {exc}", file=sys.stderr)
        return 1
    section = render_section(run, argv)
    print(section)
    if args.write:
        write_section(args.write, SECTION, section)
        print(f"\nwrote the {SECTION} section of {args.write}", file=sys.stderr)
    return 0
