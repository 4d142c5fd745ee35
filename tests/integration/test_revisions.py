"""loadtest/revisions.py with real processes: a revision's own settings decide what of the
configuration of now it is given, and its code (not this checkout's) is what runs.

The benchmarks run from this checkout's root, where ``python -m`` would import this checkout's
``fairgate`` ahead of ``PYTHONPATH``; the tests run from there too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from loadtest.proxy_overhead.stack import baseline_config, fairgate_config
from loadtest.proxy_overhead.workload import QUOTA_TENANT, TENANT
from loadtest.revisions import REPO, accepted_config, baseline_checkout

#: The last revision before the admin API and quotas (issue 14): no quotas, no telemetry.
BEFORE_QUOTAS = "3fa4aae"

#: fairgate's settings as a revision before quotas and telemetry had them, reduced to what the
#: benchmark's configuration holds.
OLD_SETTINGS = """
from typing import Any
from pydantic import BaseModel, ConfigDict

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

class Tenant(Strict):
    max_concurrency: int
    max_queued: int
    max_inflight_tokens: int
    api_keys: list[str]

class Settings(Strict):
    server: dict[str, Any]
    redis: dict[str, Any]
    pools: dict[str, Any]
    tenants: dict[str, Tenant]
"""


def old_checkout(root: Path) -> Path:
    package = root / "fairgate"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(OLD_SETTINGS)
    return root


@pytest.fixture(autouse=True)
def _from_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def test_the_revision_s_own_settings_say_what_to_drop(tmp_path: Path) -> None:
    config = fairgate_config(8080, 6379, "http://127.0.0.1:8000")
    accepted = accepted_config(old_checkout(tmp_path / "old"), config)
    assert "telemetry" not in accepted
    assert "quotas" not in accepted["tenants"][QUOTA_TENANT]
    assert accepted["tenants"][TENANT] == config["tenants"][TENANT]
    assert accepted["server"] == config["server"] and accepted["redis"] == config["redis"]


def test_a_checkout_without_fairgate_is_refused_rather_than_run_as_the_code_of_now(
    tmp_path: Path,
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="was imported from"):
        accepted_config(tmp_path / "empty", fairgate_config(8080, 6379, "http://127.0.0.1:8000"))


def test_the_revision_before_quotas_gets_the_tenant_without_quotas_and_no_telemetry(
    tmp_path: Path,
) -> None:
    known = subprocess.run(
        ["git", "cat-file", "-e", f"{BEFORE_QUOTAS}^{{commit}}"], cwd=REPO, capture_output=True
    )
    if known.returncode != 0:
        pytest.skip(f"this clone does not have {BEFORE_QUOTAS}")
    checkout = baseline_checkout(BEFORE_QUOTAS, tmp_path)
    config = baseline_config(8080, 6379, "http://127.0.0.1:8000", checkout)
    assert set(config) == {"server", "redis", "pools", "tenants"}  # no telemetry
    assert list(config["tenants"]) == [TENANT]
    assert config["redis"]["key_prefix"] == "fairgate-bench-baseline"


def test_a_revision_git_does_not_know_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="git archive no-such-revision: fatal: "):
        baseline_checkout("no-such-revision", tmp_path)
