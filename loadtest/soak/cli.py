"""``python -m loadtest.soak [--duration S] [--write BENCHMARKS.md]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from loadtest.report import run_and_publish
from loadtest.services import stop_on_sigterm
from loadtest.soak.measurement import SoakResult, soak
from loadtest.soak.rendering import SECTION, render
from loadtest.soak.stack import start_stack

DEFAULT_DURATION_S = 600.0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.soak",
        description="A soak at saturation with cancellations and a replica restart: answers by "
        "kind, resident memory, what admission holds after.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"seconds of load (default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help=f"replace (or append) FILE's {SECTION} section"
    )
    args = parser.parse_args(argv)
    stop_on_sigterm()
    started = time.monotonic()

    def measure() -> SoakResult:
        with contextlib.ExitStack() as exits:
            workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="fg-soak-")))
            return asyncio.run(soak(start_stack(exits, workdir), args.duration))

    def clean(result: SoakResult) -> bool:
        assert result.left is not None
        return result.left.clean and not result.unexpected

    return run_and_publish(
        "soak",
        measure,
        lambda result: render(result, argv, time.monotonic() - started),
        SECTION,
        args.write,
        clean,
    )
