"""``python -m loadtest.admission_bench [--duration S] [--requests N] [--write BENCHMARKS.md]``.

Also the entry point of the benchmark's worker processes (``--worker REDIS_URL``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loadtest.admission_bench.measurement import measure, run_worker
from loadtest.admission_bench.rendering import SECTION, render
from loadtest.admission_bench.workload import MIXES
from loadtest.report import write_section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.admission_bench")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--worker", metavar="REDIS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--mix", choices=sorted(MIXES), default="open", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.mix, args.duration)
        return 0

    results = measure(args.requests, args.duration)
    section = render(results)
    print(section)
    if args.write:
        write_section(args.write, SECTION, section)
    print(
        json.dumps({r.label + f" x{r.processes}": round(r.per_second) for r in results.rates}),
        file=sys.stderr,
    )
    return 0
