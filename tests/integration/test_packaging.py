"""An installed wheel works from any directory: its data files (Lua scripts, GPU and model
presets, the status page) travel inside its packages and load with importlib.resources, not
from the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("fairgate", "gateway", "admission", "estimators", "backends", "tenants", "loadtest")

CONFIG = """\
pools:
  interactive:
    backends:
      gpu-0:
        url: http://127.0.0.1:8000
        models: [llama-3-8b]
        capacity: {gpu: h100-80gb, model: llama-3-8b}
tenants:
  acme: {api_keys: [sk-acme-test]}
"""


def _run(args: list[str], cwd: Path, site: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _copy_sources(to: Path) -> None:
    """What the wheel is built from (the checkout's packages and metadata), elsewhere."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO / package, to / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, to / name)


def test_an_installed_wheel_plans_and_checks_configs_outside_the_repo(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    source, dist = tmp_path / "source", tmp_path / "dist"
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    _copy_sources(source)  # building writes build/ and *.egg-info next to the sources
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", dist, source], check=True, timeout=300)
    wheels = list(dist.glob("fairgate-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", site, *wheels], check=True)
    elsewhere.mkdir()
    (elsewhere / "fairgate.yaml").write_text(CONFIG)

    where = _run(["-c", "import admission, fairgate; print(fairgate.__file__, admission.__file__)"],
                 elsewhere, site)  # fmt: skip
    assert all(Path(f).is_relative_to(site) for f in where.split())  # not the checkout's
    checked = _run(["-m", "fairgate.cli", "check-config", "--config", "fairgate.yaml"],
                   elsewhere, site)  # fmt: skip
    assert "valid" in checked
    planned = _run(["-m", "fairgate.cli", "plan", "--config", "fairgate.yaml"], elsewhere, site)
    assert "max_inflight_tokens: 396,158 (derived)" in planned  # from the packaged presets
    composed = "len(p.AdmissionPolicy('shadow').compose('tick'))"
    lua = _run(["-c", f"import admission.policy as p; print({composed})"], elsewhere, site)
    named = "import loadtest.simulator.profile as p; print(p.load_profile(p.DEFAULT_PROFILE).name)"
    assert _run(["-c", named], elsewhere, site).strip() == "h100-llama3-8b-bf16"
    assert int(lua) > 1000
    page = "from gateway.admin.status_page import _asset as a; print(*map(len, map(a, {})))"
    sizes = _run(["-c", page.format(("index.html", "app.js", "style.css"))], elsewhere, site)
    assert all(int(size) > 1000 for size in sizes.split())  # the status page's files
