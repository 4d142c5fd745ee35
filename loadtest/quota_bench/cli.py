"""``python -m loadtest.quota_bench [--window S] [--write BENCHMARKS.md]`` (``make bench``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from loadtest.quota_bench.measurement import TOLERANCE, Window, measure
from loadtest.quota_bench.rendering import SECTION, render
from loadtest.quota_bench.stack import logs, start_stack
from loadtest.quota_bench.workload import KEYS
from loadtest.report import run_and_publish
from loadtest.services import stop_on_sigterm

DEFAULT_WINDOW_S = 60.0


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
    stop_on_sigterm()
    started = time.monotonic()

    def run() -> list[Window]:
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fg-quota-")))
            try:
                urls = start_stack(stack, workdir)
                return asyncio.run(measure(urls, KEYS, args.window))
            finally:
                for name, lines in logs(workdir).items():
                    shown = "\n".join(lines[-10:])
                    print(f"{name} logged {len(lines)} lines, the last:\n{shown}", file=sys.stderr)

    def held(windows: list[Window]) -> bool:
        return all(abs(w.deviation) <= TOLERANCE and w.other == 0 for w in windows)

    return run_and_publish(
        "quota_bench",
        run,
        lambda windows: render(windows, argv, time.monotonic() - started),
        SECTION,
        args.write,
        held,
    )
