"""loadtest/revisions.py: the configuration of now trimmed to what an older revision accepts.

The revision's settings are played here by small models as fairgate's were before quotas and
telemetry (the real revision's run in a process of its own, which the integration test does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, ValidationError

from fairgate.strict_model import StrictModel
from loadtest import revisions
from loadtest.proxy_overhead.stack import fairgate_config
from loadtest.proxy_overhead.workload import QUOTA_TENANT, TENANT
from loadtest.revisions import accepted_config, revision_env, unknown_keys, without


class OldTenant(StrictModel):
    """A tenant as fairgate knew it before quotas (one limit stricter than now, for the test
    of a rejected value)."""

    max_concurrency: int = Field(le=100_000)
    max_queued: int
    max_inflight_tokens: int
    api_keys: list[str]


class OldSettings(StrictModel):
    """The settings as fairgate knew them before telemetry."""

    server: dict[str, Any]
    redis: dict[str, Any]
    pools: dict[str, Any]
    tenants: dict[str, OldTenant]


def old_errors(checkout: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """What :func:`revisions.validation_errors` answers for a revision with ``OldSettings``
    (its locations as lists, as they come back in JSON)."""
    try:
        OldSettings(**config)
    except ValidationError as exc:
        return [{"loc": list(e["loc"]), "type": e["type"], "msg": e["msg"]} for e in exc.errors()]
    return []


def config_of_now() -> dict[str, Any]:
    return fairgate_config(8080, 6379, "http://127.0.0.1:8000")


def test_the_keys_an_old_revision_does_not_know_are_found_and_dropped() -> None:
    config = config_of_now()
    unknown = unknown_keys(old_errors(Path("old"), config))
    assert sorted(unknown) == [("telemetry",), ("tenants", QUOTA_TENANT, "quotas")]
    trimmed = without(config, unknown)
    assert "telemetry" not in trimmed and "quotas" not in trimmed["tenants"][QUOTA_TENANT]
    assert old_errors(Path("old"), trimmed) == []
    # the rest is kept as it was, and the configuration of now is left untouched
    assert trimmed["tenants"][TENANT] == config["tenants"][TENANT]
    assert trimmed["redis"] == config["redis"] and trimmed["pools"] == config["pools"]
    assert "telemetry" in config and "quotas" in config["tenants"][QUOTA_TENANT]


def test_only_unknown_keys_count_and_keys_already_gone_are_skipped() -> None:
    errors = [
        {"loc": ["server", "port"], "type": "less_than_equal", "msg": "too high"},
        {"loc": ["telemetry"], "type": "extra_forbidden", "msg": "Extra inputs are not permitted"},
    ]
    assert unknown_keys(errors) == [("telemetry",)]
    config = {"server": {"port": 1}, "telemetry": {}}
    assert without(config, [("telemetry",), ("telemetry", "traces"), ("nowhere", "x")]) == {
        "server": {"port": 1}
    }


def test_accepted_config_asks_the_revision_and_drops_only_what_it_rejects_as_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[dict[str, Any]] = []

    def validation_errors(checkout: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
        asked.append(config)
        return old_errors(checkout, config)

    monkeypatch.setattr(revisions, "validation_errors", validation_errors)
    config = config_of_now()
    accepted = accepted_config(Path("old"), config)
    assert accepted == without(config, [("telemetry",), ("tenants", QUOTA_TENANT, "quotas")])
    assert asked == [config, accepted]  # the trimmed configuration is validated again
    asked.clear()
    assert accepted_config(Path("old"), accepted) == accepted
    assert asked == [accepted]  # nothing to drop: asked once


def test_a_value_the_revision_rejects_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(revisions, "validation_errors", old_errors)
    config = config_of_now()
    config["tenants"][TENANT]["max_concurrency"] = 200_000
    with pytest.raises(RuntimeError, match=rf"tenants\.{TENANT}\.max_concurrency: Input should"):
        accepted_config(Path("old"), config)


def test_a_revision_runs_from_its_checkout_and_not_from_the_current_directory() -> None:
    env = revision_env(Path("/tmp/baseline"))
    assert env["PYTHONPATH"] == "/tmp/baseline"
    assert env["PYTHONSAFEPATH"] == "1"  # python -m would put the checkout of now first
