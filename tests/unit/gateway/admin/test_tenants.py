"""gateway/admin/tenants.py: the versions ``If-Match`` names."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from fairgate.errors import GatewayError
from gateway.admin.tenants import if_match


@pytest.mark.parametrize(
    ("value", "version"),
    [("", None), ("*", None), ('"3"', 3), ('W/"12"', 12), ("7", 7), (' "4" ', 4)],
)
def test_if_match_names_a_version_or_none(value: str, version: int | None) -> None:
    headers = {"If-Match": value} if value else {}
    assert if_match(make_mocked_request("PATCH", "/admin/v1/tenants/a", headers=headers)) == version


@pytest.mark.parametrize("value", ['"abc"', '"-1"', '"3", "4"', "W/x"])
def test_an_if_match_that_is_no_version_is_400(value: str) -> None:
    with pytest.raises(GatewayError) as caught:
        if_match(make_mocked_request("PATCH", "/admin/v1/tenants/a", headers={"If-Match": value}))
    assert caught.value.status == 400
