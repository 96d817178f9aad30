"""What an error answer quotes back of the request: enough to recognise the mistake, never
a deployment's token, never a 100 KB value."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

BIG = "x" * 100_000
TOKEN = "Tq3mYh0pZ-9sWcV2kLr8dN4bXe7uJf1aGi6oQy5tHn0"


def _bmc() -> dict[str, str]:
    return {"address": "10.0.0.1", "username": "admin", "password": "secret"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": BIG, "bmc": _bmc(), "nics": [{"mac": "52:54:00:00:00:01"}]}, "name"),
        ({"name": "n1", "bmc": _bmc(), "nics": [{"mac": BIG}]}, "nics.0.mac"),
    ],
)
def test_a_huge_invalid_value_is_quoted_by_its_start(
    client: TestClient, operator: dict[str, str], body: dict[str, Any], field: str
) -> None:
    refused = client.post("/api/v1/nodes", json=body, headers=operator)
    assert refused.status_code == 422
    assert len(refused.content) < 2_000
    (error,) = refused.json()["errors"]
    assert error["field"] == field
    assert repr("x" * 40) + "..." in error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/callback/{TOKEN}/done"),
        ("DELETE", f"/boot/answers/{TOKEN}"),
        ("GET", f"/boot/answers/{TOKEN}/user-data/extra"),
    ],
)
def test_an_error_never_repeats_a_token_from_the_path(
    client: TestClient, method: str, path: str
) -> None:
    answer = client.request(method, path)
    assert answer.status_code in (404, 405)
    assert TOKEN not in answer.text
    assert "<token>" in answer.json()["detail"]
