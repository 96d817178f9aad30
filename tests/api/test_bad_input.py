"""Bad input gets the right 4xx as problem+json and leaves the database unchanged."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import node_body, snapshot


@pytest.fixture
def existing(client: TestClient, operator: dict[str, str]) -> dict[str, Any]:
    response = client.post("/api/v1/nodes", json=node_body(), headers=operator)
    assert response.status_code == 201
    return response.json()  # type: ignore[no-any-return]


def _with(path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(node_body(name="new-node", mac="52:54:00:00:02:02"))
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_with(("nics", 0, "mac"), "52:54:00:00:02"), "nics.0.mac"),
        (_with(("nics", 0, "mac"), "zz:54:00:00:02:02"), "nics.0.mac"),
        (_with(("nics", 0, "mac"), "ff:ff:ff:ff:ff:ff"), "nics.0.mac"),
        (_with(("bmc", "address"), "10.0.0.256"), "bmc.address"),
        (_with(("bmc", "address"), "bmc_1.example.com"), "bmc.address"),
        (_with(("bmc", "port"), 70000), "bmc.port"),
        (_with(("bmc", "port"), 0), "bmc.port"),
        (_with(("bmc", "driver"), "wsman"), "bmc.driver"),
        (_with(("bmc", "password"), "x" * 21), "bmc.password"),
        (_with(("name",), "-bad-"), "name"),
        (_with(("name",), "a" * 64), "name"),
        (_with(("name",), "6f1c1b3e-5d53-4a4f-9d6e-6d1e4b7c0a11"), "name"),
        (_with(("rack_unit",), 0), "rack_unit"),
        (_with(("colour",), "blue"), "colour"),
        (_with(("bmc", "pasword"), "typo"), "bmc.pasword"),
        (
            _with(("nics",), [{"mac": "52:54:00:00:02:02"}, {"mac": "52-54-00-00-02-02"}]),
            "nics",
        ),
    ],
)
def test_invalid_fields_are_422(
    client: TestClient,
    app: FastAPI,
    operator: dict[str, str],
    existing: object,
    body: dict[str, Any],
    field: str,
) -> None:
    before = snapshot(app)
    response = client.post("/api/v1/nodes", json=body, headers=operator)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert field in {e["field"] for e in problem["errors"]}
    assert field in problem["detail"]
    assert "s3cret-bmc-pw" not in response.text
    assert snapshot(app) == before


def test_duplicate_name_or_mac_is_409(
    client: TestClient, app: FastAPI, operator: dict[str, str], existing: object
) -> None:
    before = snapshot(app)
    same_mac = client.post(
        "/api/v1/nodes", json=node_body(name="other", mac="52:54:00:00:01:01"), headers=operator
    )
    assert same_mac.status_code == 409
    assert same_mac.json()["errors"] == [
        {"field": "nics", "message": "MAC 52:54:00:00:01:01 belongs to node 'r01-u01'"}
    ]
    same_name = client.post(
        "/api/v1/nodes", json=node_body(mac="52:54:00:00:07:07"), headers=operator
    )
    assert same_name.status_code == 409
    assert snapshot(app) == before


def test_patch_taking_another_nodes_mac_is_409(
    client: TestClient, app: FastAPI, operator: dict[str, str], existing: object
) -> None:
    client.post(
        "/api/v1/nodes", json=node_body(name="two", mac="52:54:00:00:07:07"), headers=operator
    )
    before = snapshot(app)
    response = client.patch(
        "/api/v1/nodes/two", json={"nics": [{"mac": "52:54:00:00:01:01"}]}, headers=operator
    )
    assert response.status_code == 409
    assert snapshot(app) == before


def test_stale_if_match_is_412(
    client: TestClient, app: FastAPI, operator: dict[str, str], existing: object
) -> None:
    before = snapshot(app)
    response = client.patch(
        "/api/v1/nodes/r01-u01", json={"rack": "r09"}, headers={**operator, "If-Match": '"7"'}
    )
    assert response.status_code == 412
    assert snapshot(app) == before


def test_if_match_compares_strongly_and_wants_quotes(
    client: TestClient, app: FastAPI, operator: dict[str, str], existing: object
) -> None:
    """RFC 9110: a weak tag never matches If-Match, and a tag is quoted."""
    before = snapshot(app)
    current = client.get("/api/v1/nodes/r01-u01", headers=operator).headers["ETag"]
    for header, status in ((f"W/{current}", 412), (current.strip('"'), 400)):
        response = client.patch(
            "/api/v1/nodes/r01-u01", json={"rack": "r09"}, headers={**operator, "If-Match": header}
        )
        assert response.status_code == status, (header, response.text)
    assert "double quotes" in response.json()["detail"]
    assert snapshot(app) == before
    matched = client.patch(
        "/api/v1/nodes/r01-u01", json={"rack": "r09"}, headers={**operator, "If-Match": current}
    )
    assert matched.status_code == 200


def test_wrong_token_and_viewer_mutation_change_nothing(
    client: TestClient, app: FastAPI, viewer: dict[str, str], existing: object
) -> None:
    before = snapshot(app)
    body = node_body(name="x", mac="52:54:00:00:03:03")
    assert (
        client.post(
            "/api/v1/nodes", json=body, headers={"Authorization": "Bearer nope"}
        ).status_code
        == 401
    )
    assert client.post("/api/v1/nodes", json=body, headers=viewer).status_code == 403
    assert client.delete("/api/v1/nodes/r01-u01", headers=viewer).status_code == 403
    assert snapshot(app) == before


def test_oversize_body_is_413(
    client: TestClient, app: FastAPI, operator: dict[str, str], existing: object
) -> None:
    before = snapshot(app)
    big = b'{"name": "' + b"a" * (1024 * 1024) + b'"}'
    response = client.post(
        "/api/v1/nodes", content=big, headers={**operator, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"

    def chunks() -> Any:
        for _ in range(20):
            yield b"a" * 65536

    chunked = client.post(
        "/api/v1/racks/import", content=chunks(), headers={**operator, "Content-Type": "text/csv"}
    )
    assert chunked.status_code == 413
    assert snapshot(app) == before


def test_malformed_json_is_422(client: TestClient, operator: dict[str, str]) -> None:
    response = client.post(
        "/api/v1/nodes",
        content=b"{not json",
        headers={**operator, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
