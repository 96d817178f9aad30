"""/api/v1/racks/import: whole manifests, all rows or none."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import node_body, snapshot

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def roles(client: TestClient, admin: dict[str, str]) -> None:
    for name in ("compute", "storage"):
        assert client.post("/api/v1/roles", json={"name": name}, headers=admin).status_code == 201


def _import(client: TestClient, headers: dict[str, str], body: bytes, media_type: str) -> object:
    return client.post(
        "/api/v1/racks/import", content=body, headers={**headers, "Content-Type": media_type}
    )


@pytest.mark.parametrize(
    ("example", "media_type"),
    [("rack-a01.yaml", "application/yaml"), ("rack-a01.csv", "text/csv; charset=utf-8")],
)
def test_example_manifests_import(
    client: TestClient, operator: dict[str, str], roles: None, example: str, media_type: str
) -> None:
    response = client.post(
        "/api/v1/racks/import",
        content=(EXAMPLES / example).read_bytes(),
        headers={**operator, "Content-Type": media_type},
    )
    assert response.status_code == 201, response.text
    result = response.json()
    assert (result["created"], result["adopted"]) == (8, 0)
    assert {n["state"] for n in result["nodes"]} == {"enrolled"}
    assert "change-me" not in response.text
    listed = client.get(
        "/api/v1/nodes", params={"rack": "a01", "role": "storage"}, headers=operator
    )
    assert [n["name"] for n in listed.json()["items"]] == ["a01-stor01", "a01-stor02"]
    events = client.get("/api/v1/nodes/a01-stor01/events", headers=operator).json()
    assert events[0]["message"] == "imported from a rack manifest"


CSV_HEADER = "name,rack,u,role,bmc_address,bmc_username,bmc_password,macs\n"


def test_bad_rows_are_all_reported_and_nothing_is_created(
    client: TestClient, app: FastAPI, operator: dict[str, str], roles: None
) -> None:
    before = snapshot(app)
    body = (
        CSV_HEADER
        + "ok-1,r9,1,compute,10.0.0.1,admin,pw-one,52:54:00:00:10:01\n"
        + "bad-mac,r9,2,compute,10.0.0.2,admin,pw-two,52:54:00:00:10\n"
        + "bad-ip,r9,3,compute,10.0.0.300,admin,pw-three,52:54:00:00:10:03\n"
        + "dup-mac,r9,4,compute,10.0.0.4,admin,pw-four,52:54:00:00:10:01\n"
        + "ok-5,r9,5,nosuchrole,10.0.0.5,admin,pw-five,52:54:00:00:10:05\n"
    ).encode()
    response = client.post(
        "/api/v1/racks/import", content=body, headers={**operator, "Content-Type": "text/csv"}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    where = {(e["row"], e["field"]) for e in response.json()["errors"]}
    assert {(2, "macs"), (3, "bmc_address"), (4, "macs")} <= where
    assert "pw-" not in response.text
    assert snapshot(app) == before


def test_unknown_role_is_reported_by_row(
    client: TestClient, app: FastAPI, operator: dict[str, str], roles: None
) -> None:
    before = snapshot(app)
    body = (CSV_HEADER + "n1,r9,1,nosuchrole,10.0.0.5,admin,pw,52:54:00:00:10:05\n").encode()
    response = client.post(
        "/api/v1/racks/import", content=body, headers={**operator, "Content-Type": "text/csv"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["row"] == 1
    assert response.json()["errors"][0]["field"] == "role"
    assert snapshot(app) == before


def test_conflicts_with_the_database_are_409_by_row(
    client: TestClient, app: FastAPI, operator: dict[str, str], roles: None
) -> None:
    existing = node_body(name="old", mac="52:54:00:00:20:02")
    existing.update(rack="r9", rack_unit=7)
    assert client.post("/api/v1/nodes", json=existing, headers=operator).status_code == 201
    before = snapshot(app)
    body = (
        CSV_HEADER
        + "new-1,r9,1,compute,10.0.0.1,admin,pw,52:54:00:00:20:01\n"
        + "new-2,r9,2,compute,10.0.0.2,admin,pw,52:54:00:00:20:02\n"
        + "old,r9,3,compute,10.0.0.3,admin,pw,52:54:00:00:20:03\n"
        + "new-4,r9,7,compute,10.0.0.4,admin,pw,52:54:00:00:20:04\n"
    ).encode()
    response = client.post(
        "/api/v1/racks/import", content=body, headers={**operator, "Content-Type": "text/csv"}
    )
    assert response.status_code == 409, response.text
    errors = response.json()["errors"]
    assert [(e["row"], e["field"]) for e in errors] == [(2, "macs"), (3, "name"), (4, "u")]
    assert "'old'" in errors[0]["message"]
    assert snapshot(app) == before


def test_rack_position_conflict_on_single_enroll_and_patch(
    client: TestClient, operator: dict[str, str]
) -> None:
    first = node_body(rack_unit=1)
    assert client.post("/api/v1/nodes", json=first, headers=operator).status_code == 201
    taken = client.post(
        "/api/v1/nodes",
        json=node_body(name="b", mac="52:54:00:00:30:01", rack_unit=1),
        headers=operator,
    )
    assert taken.status_code == 409
    assert taken.json()["errors"] == [
        {"field": "rack_unit", "message": "rack r01 U1 holds node 'r01-u01'"}
    ]
    second = node_body(name="b", mac="52:54:00:00:30:01", rack_unit=2)
    assert client.post("/api/v1/nodes", json=second, headers=operator).status_code == 201
    moved = client.patch("/api/v1/nodes/b", json={"rack_unit": 1}, headers=operator)
    assert moved.status_code == 409
    # Changing other fields of a node keeps its own position.
    assert client.patch("/api/v1/nodes/b", json={"role": None}, headers=operator).status_code == 200


def test_wrong_content_type_is_415(client: TestClient, operator: dict[str, str]) -> None:
    response = client.post("/api/v1/racks/import", json={"nodes": []}, headers=operator)
    assert response.status_code == 415
    assert "text/csv" in response.json()["detail"]


def test_empty_and_broken_manifests_are_422(client: TestClient, operator: dict[str, str]) -> None:
    for body, media_type in ((b"", "text/csv"), (b"nodes: [\n", "application/yaml")):
        response = client.post(
            "/api/v1/racks/import", content=body, headers={**operator, "Content-Type": media_type}
        )
        assert response.status_code == 422
        assert response.json()["errors"]
