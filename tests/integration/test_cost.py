"""The service arithmetic of a request (VTC): input weight x prompt + output weight x output.

Admission charges a request's input when it is granted, its output as it is delivered, and
settles the whole at release; every one of those figures comes from these methods of ``Cost``.
"""

from __future__ import annotations

import pytest

from estimators.cost import Cost


def cost(input_weight: float = 1.5, output_weight: float = 4.0) -> Cost:
    return Cost(
        prompt_tokens=120,
        counted_prompt_tokens=100,
        prompt_source="tiktoken",
        expected_output=30,
        likely_output=90,
        max_output=500,
        reasoning=False,
        input_weight=input_weight,
        output_weight=output_weight,
    )


def test_input_service_is_the_prompt_estimate_weighted_unless_a_count_is_given() -> None:
    assert cost().input_service() == 1.5 * 120
    assert cost().input_service(200) == 1.5 * 200
    assert cost().input_service(0) == 0.0  # a count of none is a count, not "use the estimate"


def test_output_service_weighs_output_tokens() -> None:
    assert cost().output_service(7) == 4.0 * 7
    assert cost().output_service(0) == 0.0


def test_service_of_a_whole_request_is_input_plus_output() -> None:
    assert cost().service(200, 50) == 1.5 * 200 + 4.0 * 50
    assert cost().service(200, 50) == cost().input_service(200) + cost().output_service(50)


def test_the_expected_service_uses_the_estimates() -> None:
    assert cost().weighted == 1.5 * 120 + 4.0 * 30


@pytest.mark.parametrize(("input_weight", "output_weight"), [(1.0, 2.0), (0.25, 3.0)])
def test_the_weights_are_the_costs_own(input_weight: float, output_weight: float) -> None:
    spent = cost(input_weight, output_weight)
    assert spent.service(10, 10) == input_weight * 10 + output_weight * 10
