"""loadtest/simulator/profile.py: bundled profiles by name, any other by its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.simulator.profile import (
    DEFAULT_PROFILE,
    bundled_profiles,
    load_profile,
    profile_path,
)


def test_the_default_profile_is_bundled_and_loads_by_name() -> None:
    assert DEFAULT_PROFILE in bundled_profiles()
    assert load_profile(DEFAULT_PROFILE).kv_cache.capacity_tokens == 467_280


def test_a_path_is_taken_as_a_path(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text(profile_path(DEFAULT_PROFILE).read_text().replace("29205", "10000"))
    assert load_profile(own).kv_cache.num_blocks == 10_000
    assert load_profile(str(own)).kv_cache.num_blocks == 10_000


def test_an_unknown_name_lists_the_bundled_ones() -> None:
    with pytest.raises(FileNotFoundError, match=r"bundled: .*h100-llama3-8b"):
        profile_path("a100-nothing")
