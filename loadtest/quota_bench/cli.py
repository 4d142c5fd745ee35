"""``python -m loadtest.quota_bench [--window S] [--write BENCHMARKS.md]`` (``make bench``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

from loadtest.quota_bench.measurement import TOLERANCE, measure
from loadtest.quota_bench.rendering import SECTION, render
from loadtest.quota_bench.stack import logs, start_stack
from loadtest.quota_bench.workload import KEYS
from loadtest.report import write_section

DEFAULT_WINDOW_S = 60.0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM behaves as Ctrl-C: the load is cancelled, every process started is stopped."""
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.quota_bench",
        description="Quotas across three replicas: how close to the limits a minute of "
        "overload is admitted.",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=DEFAULT_WINDOW_S,
        metavar="S",
        help=f"seconds measured per tenant after its burst (default {DEFAULT_WINDOW_S:g})",
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help=f"replace (or append) FILE's {SECTION} section"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fg-quota-")))
            try:
                urls = start_stack(stack, workdir)
                windows = asyncio.run(measure(urls, KEYS, args.window))
            finally:
                for name, lines in logs(workdir).items():
                    shown = "\n".join(lines[-10:])
                    print(f"{name} logged {len(lines)} lines, the last:\n{shown}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"quota_bench: {exc}", file=sys.stderr)
        return 1
    section = render(windows, argv, time.monotonic() - started)
    print(section)
    if args.write:
        write_section(args.write, SECTION, section)
        print(f"\nwrote the {SECTION} section of {args.write}", file=sys.stderr)
    held = all(abs(w.deviation) <= TOLERANCE and w.other == 0 for w in windows)
    return 0 if held else 1
