"""``python -m loadtest.calibration [--profile PATH] [--write BENCHMARKS.md]`` (``make bench``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtest.calibration.measurement import calibrate
from loadtest.calibration.rendering import SECTION, render_section
from loadtest.report import write_section
from loadtest.simulator.profile import DEFAULT_PROFILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.calibration",
        description="Calibration of the engine simulator: its figures next to the published "
        "ones it is fitted to.",
    )
    parser.add_argument(
        "--profile", default=DEFAULT_PROFILE, help="a bundled profile's name or a profile YAML file"
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help=f"replace (or append) FILE's {SECTION} section"
    )
    args = parser.parse_args(argv)

    section = render_section(calibrate(args.profile))
    print(section)
    if args.write:
        write_section(args.write, SECTION, section)
        print(f"\nwrote the {SECTION} section of {args.write}", file=sys.stderr)
    return 0
