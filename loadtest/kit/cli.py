"""``fairgate loadtest`` (also ``python -m loadtest.kit``): run scenarios, write their reports.

Examples::

    fairgate loadtest weighted-shares                 # a shipped scenario, every mode, full length
    fairgate loadtest --all --short --write BENCHMARKS.md --out docs/loadtest   # make bench
    fairgate loadtest my-traffic.yaml --modes direct,vtc-pools
    fairgate loadtest weighted-shares --target http://127.0.0.1:8080   # your own gateway
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from loadtest.kit.modes import parse_mode
from loadtest.kit.report import write_reports
from loadtest.kit.runner import run_scenario
from loadtest.kit.scenario import ScenarioError, load_scenario, shipped_scenarios


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairgate loadtest",
        description="Run load-test scenarios against simulated engines, fairgate, or a URL.",
        epilog="Shipped scenarios: " + ", ".join(p.stem for p in shipped_scenarios()),
    )
    parser.add_argument("scenarios", nargs="*", help="scenario files or shipped scenario names")
    parser.add_argument("--all", action="store_true", help="every shipped scenario")
    parser.add_argument("--short", action="store_true", help="the short versions (make bench)")
    parser.add_argument("--modes", help="comma-separated modes instead of the scenario's")
    parser.add_argument(
        "--target",
        metavar="URL",
        help="send everything to this OpenAI-compatible base URL (without /v1); start nothing",
    )
    parser.add_argument("--out", type=Path, default=Path("loadtest-results"), help="reports here")
    parser.add_argument("--write", type=Path, metavar="BENCHMARKS.md", help="update its sections")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    paths = [*args.scenarios, *(shipped_scenarios() if args.all else [])]
    if not paths:
        parser().error("name a scenario, or give --all")
    try:
        scenarios = [load_scenario(p, short=args.short) for p in paths]
        modes = [parse_mode(m) for m in args.modes.split(",")] if args.modes else None
    except (ScenarioError, ValueError) as exc:
        print(f"fairgate loadtest: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fairgate-loadtest-") as workdir:
        for scenario in scenarios:
            result = run_scenario(
                scenario, Path(workdir), modes, args.target, progress=not args.no_progress
            )
            command = f"fairgate loadtest {scenario.name}" + (" --short" if args.short else "")
            section = write_reports(result, args.out, args.write, command)
            print(section + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
