"""What every benchmark needs to report: Markdown tables, the machine, its BENCHMARKS.md section.

Each benchmark owns one section of BENCHMARKS.md, delimited by ``<!-- NAME:start -->`` and
``<!-- NAME:end -->``, and rewrites only that section, so that benchmarks run separately (or
by ``make bench``, one after the other) never overwrite each other's figures.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Run = TypeVar("Run")

BENCHMARKS_INTRO = (
    "Measured figures for fairgate and its load-test kit. Each section says how to reproduce it."
)


def markdown_table(headers: list[str], align: str, rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; ``align`` has one letter per column, ``l`` or ``r``."""
    rule = [":---" if side == "l" else "---:" for side in align]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [headers, rule, *rows])


def machine() -> str:
    """Where a report was produced, for figures that depend on the machine's speed."""
    processor = platform.processor() or platform.machine()
    return (
        f"{processor}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )


def revision() -> str:
    """The commit measured, and whether the working tree differed from it.

    Figures of code that keeps changing are comparable only between runs of the same revision.
    """
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def section_markers(name: str) -> tuple[str, str]:
    """The HTML comments that delimit the section ``name`` (invisible once rendered)."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(path: Path, name: str, section: str) -> None:
    """Replace the section ``name`` of ``path``, or append it; create the file if needed."""
    start_marker, end_marker = section_markers(name)
    block = f"{start_marker}\n{section}\n{end_marker}"
    if not path.exists():
        text = f"# fairgate benchmarks\n\n{BENCHMARKS_INTRO}\n\n{block}\n"
    else:
        text = path.read_text(encoding="utf-8")
        start, end = text.find(start_marker), text.find(end_marker)
        if 0 <= start < end:
            text = text[:start] + block + text[end + len(end_marker) :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def run_and_publish(
    prog: str,
    measure: Callable[[], Run],
    render: Callable[[Run], str],
    name: str,
    path: Path | None,
    passed: Callable[[Run], bool] | None = None,
) -> int:
    """A benchmark command's end: measure, print the section ``name`` (and write it into
    ``path``); the exit status (1 if ``passed`` says the run failed its check). Ctrl-C (or
    SIGTERM, see :func:`loadtest.services.stop_on_sigterm`) and a failure to start say so in
    one line."""
    try:
        run = measure()
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    section = render(run)
    print(section)
    if path is not None:
        write_section(path, name, section)
        print(f"\nwrote the {name} section of {path}", file=sys.stderr)
    return 0 if passed is None or passed(run) else 1
