"""``--baseline REV`` of the slow-stream benchmark runs REV's code, not this checkout's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtest.services import child_env
from loadtest.stream_bench.stack import baseline_env

REPO = Path(__file__).resolve().parents[2]


def test_a_baseline_runs_its_own_code_when_started_from_this_checkouts_root(
    tmp_path: Path,
) -> None:
    # A checkout whose gateway package has a module this one has not: found only if the
    # baseline's tree comes first on the path of a `python -m` started from the repository.
    package = tmp_path / "gateway"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "where.py").write_text("print(__file__)\n")
    ran = subprocess.run(
        [sys.executable, "-m", "gateway.where"],
        cwd=REPO,
        env=child_env(baseline_env(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert Path(ran.stdout.strip()).resolve().is_relative_to(tmp_path.resolve())
