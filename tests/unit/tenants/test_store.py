"""tenants/store.py: the JSON merge patch (RFC 7396) tenant updates are made with."""

from __future__ import annotations

from typing import Any

import pytest

from tenants.store import merge_patch


@pytest.mark.parametrize(
    ("target", "patch", "merged"),
    [  # RFC 7396, appendix A (the cases that apply to objects)
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({"a": "foo"}, {}, {"a": "foo"}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, merged: Any) -> None:
    assert merge_patch(target, patch) == merged


def test_merge_patch_leaves_its_inputs_alone() -> None:
    target = {"quotas": {"requests_per_minute": 1}}
    merge_patch(target, {"quotas": {"tokens_per_minute": 2}})
    assert target == {"quotas": {"requests_per_minute": 1}}
