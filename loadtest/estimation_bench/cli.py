"""``python -m loadtest.estimation_bench [--requests N] [--seed S] [--write BENCHMARKS.md]``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import uvloop

from loadtest.estimation_bench.figures import EARLY_REQUESTS
from loadtest.estimation_bench.measurement import measure
from loadtest.estimation_bench.rendering import SECTION, render_section
from loadtest.estimation_bench.workload import DEFAULT_REQUESTS, DEFAULT_SEED
from loadtest.report import write_section

MODULE = "loadtest.estimation_bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Cost estimation on this machine: its speed, its effect on the event loop, "
        "and its accuracy.",
    )
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, metavar="N",
                        help="requests in the accuracy workload")  # fmt: skip
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="workload seed")
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help=f"replace (or append) FILE's {SECTION} section"
    )
    args = parser.parse_args(argv)
    if args.requests < 2 * EARLY_REQUESTS:
        parser.error(f"--requests must be at least {2 * EARLY_REQUESTS}")

    results = uvloop.run(measure(args.requests, args.seed))
    command = shlex.join(["python", "-m", MODULE, *(sys.argv[1:] if argv is None else argv)])
    section = render_section(results, command)
    print(section)
    if args.write:
        write_section(args.write, SECTION, section)
        print(f"\nwrote the {SECTION} section of {args.write}", file=sys.stderr)
    return 0
