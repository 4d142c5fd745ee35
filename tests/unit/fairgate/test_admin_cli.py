"""fairgate/admin_cli.py: what the command line's values mean before anything is sent."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from fairgate import cli
from fairgate.admin_cli import (
    UsageError,
    nest,
    parse_assignment,
    parse_duration,
    parse_value,
    parse_version,
    render_tenant,
    table,
    tenant_fields,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86_400),
        ("12h", 12 * 3600),
        ("90m", 5400),
        ("3600s", 3600),
        ("3600", 3600),
        ("1.5h", 5400),
        ("2w", 14 * 86_400),
        (" 12H ", 12 * 3600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "0s", "-1h", "12 hours", "1h30m", "3x", "1e3s"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("2.5", 2.5),
        ("true", True),
        ("null", None),
        ('["a", "b"]', ["a", "b"]),
        ('{"x": 1}', {"x": 1}),
        ("acme", "acme"),
        ('"007"', "007"),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("", ""),
    ],
)
def test_values_are_json_else_text(text: str, value: Any) -> None:
    assert parse_value(text) == value


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("weight=3", ("weight",), 3),
        ("quotas.tokens_per_minute=1000", ("quotas", "tokens_per_minute"), 1000),
        (
            'quotas.models."llama-3.1-8b".requests_per_minute=10',
            ("quotas", "models", "llama-3.1-8b", "requests_per_minute"),
            10,
        ),
        ("pools=[]", ("pools",), []),
        ("quotas=null", ("quotas",), None),
        ("name=a=b", ("name",), "a=b"),
    ],
)
def test_assignments(text: str, path: tuple[str, ...], value: Any) -> None:
    assert parse_assignment(text) == (path, value)


@pytest.mark.parametrize("text", ["weight", "=3", ".weight=3", "weight.=3", "a..b=1", '"a=1'])
def test_bad_assignments_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="FIELD=VALUE"):
        parse_assignment(text)


def test_assignments_nest_into_one_object() -> None:
    body = nest(
        [
            (("weight",), 2),
            (("quotas", "tokens_per_minute"), 100),
            (("quotas", "models", "m", "requests_per_minute"), 5),
            (("quotas", "tokens_per_day"), None),
        ]
    )
    assert body == {
        "weight": 2,
        "quotas": {
            "tokens_per_minute": 100,
            "tokens_per_day": None,
            "models": {"m": {"requests_per_minute": 5}},
        },
    }


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        ([(("weight",), 2), (("weight",), 3)], "given twice"),
        ([(("quotas",), None), (("quotas", "tokens_per_day"), 1)], "inside quotas"),
        ([(("quotas", "tokens_per_day"), 1), (("quotas",), None)], "fields inside it"),
        ([(("weight",), 2), (("weight", "x"), 3)], "inside weight"),
    ],
)
def test_a_field_given_twice_is_refused(
    assignments: list[tuple[tuple[str, ...], Any]], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        nest(assignments)


def _parsed(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(["admin", *argv])


def test_flags_are_other_spellings_of_the_same_paths() -> None:
    args = _parsed(
        "tenants", "update", "acme", "--weight", "3", "--pools", "a, b", "--tpm", "100",
        "--set", "quotas.tokens_per_day=1000", "--set", "allow_pool_header=true",
    )  # fmt: skip
    assert tenant_fields(args) == {
        "weight": 3.0,
        "pools": ["a", "b"],
        "quotas": {"tokens_per_minute": 100, "tokens_per_day": 1000},
        "allow_pool_header": True,
    }
    clash = _parsed("tenants", "create", "x", "--rpm", "5", "--set", "quotas.requests_per_minute=6")
    with pytest.raises(UsageError, match="given twice"):
        tenant_fields(clash)


def test_common_options_go_before_or_after_the_subcommand() -> None:
    before = _parsed("--url", "http://x:1", "--json", "tenants", "list")
    after = _parsed("tenants", "list", "--url", "http://x:1", "--json")
    assert (before.url, before.json) == (after.url, after.json) == ("http://x:1", True)
    assert not hasattr(_parsed("tenants", "list"), "url")  # then the environment decides


@pytest.mark.parametrize(("text", "header"), [("3", '"3"'), ('"3"', '"3"'), ('W/"12"', '"12"')])
def test_versions(text: str, header: str) -> None:
    assert parse_version(text) == header


@pytest.mark.parametrize("text", ["", "x", "-1", "*", "3.0"])
def test_bad_versions_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--if-match"):
        parse_version(text)


def test_tables_and_tenants_render_for_a_person() -> None:
    rows = [("a", 1.0, True), ("long-name", None, False)]
    assert table(("ID", "WEIGHT", "ON"), rows).splitlines() == [
        "ID         WEIGHT  ON",
        "a          1       true",
        "long-name  -       false",
    ]
    shown = render_tenant(
        {"object": "tenant", "id": "acme", "version": 7, "weight": 2.5, "pools": ["x", "y"],
         "quotas": {"tokens_per_minute": 10, "models": {}}}
    )  # fmt: skip
    assert shown.splitlines() == [
        "tenant acme (version 7)",
        "  weight                    2.5",
        "  pools                     x,y",
        "  quotas.tokens_per_minute  10",
        "  quotas.models             {}",
    ]
