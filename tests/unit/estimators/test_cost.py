"""estimators/cost.py: what a request costs before it runs (service units and tokens held)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from estimators.cost import Cost


def cost(**changes: Any) -> Cost:
    fields: dict[str, Any] = {
        "prompt_tokens": 100,
        "counted_prompt_tokens": 90,
        "prompt_source": "tiktoken",
        "expected_output": 20,
        "likely_output": 50,
        "max_output": 200,
        "reasoning": False,
        "input_weight": 1.0,
        "output_weight": 2.0,
    }
    return Cost(**{**fields, **changes})


def test_weighted_service_is_input_and_expected_output_by_their_weights() -> None:
    assert cost().weighted == 1.0 * 100 + 2.0 * 20
    assert cost(input_weight=0.5, output_weight=4.0).weighted == 0.5 * 100 + 4.0 * 20


def test_tokens_held_are_prompt_and_likely_output() -> None:
    assert cost().inflight_tokens == 150
    assert cost(prompt_tokens=0, likely_output=0).inflight_tokens == 0


def test_the_corrected_prompt_estimate_is_what_counts() -> None:
    assert cost(counted_prompt_tokens=1).weighted == cost(counted_prompt_tokens=1000).weighted


def test_a_cost_is_frozen() -> None:
    with pytest.raises(ValidationError):
        cost().prompt_tokens = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "change",
    [
        {"prompt_tokens": -1},
        {"expected_output": -1},
        {"input_weight": 0.0},
        {"output_weight": -1.0},
        {"prompt_source": "guess"},
    ],
)
def test_impossible_costs_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        cost(**change)
