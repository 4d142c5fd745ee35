"""``python -m loadtest.soak [--duration S] [--write BENCHMARKS.md]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

from loadtest.report import write_section
from loadtest.soak.measurement import soak
from loadtest.soak.rendering import SECTION, render
from loadtest.soak.stack import start_stack

DEFAULT_DURATION_S = 600.0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM behaves as Ctrl-C: the load is cancelled, every process started is stopped."""
    signal.raise_signal(signal.SIGINT)


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
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as exits:
            workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="fg-soak-")))
            stack = start_stack(exits, workdir)
            result = asyncio.run(soak(stack, args.duration))
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    section = render(result, argv, time.monotonic() - started)
    print(section)
    if args.write:
        write_section(args.write, SECTION, section)
        print(f"\nwrote the {SECTION} section of {args.write}", file=sys.stderr)
    assert result.left is not None
    return 0 if result.left.clean and not result.unexpected else 1
