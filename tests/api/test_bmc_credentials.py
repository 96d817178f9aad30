"""BMC credentials within what IPMI 2.0 keeps: 16 bytes of user name, 20 of password."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import node_body

ACCENTED = "é" * 11  # 11 characters, 22 bytes


def test_a_password_is_measured_in_bytes_and_never_quoted(
    client: TestClient, operator: dict[str, str]
) -> None:
    body = node_body(bmc={"address": "10.0.0.1", "username": "admin", "password": ACCENTED})
    refused = client.post("/api/v1/nodes", json=body, headers=operator)
    assert refused.status_code == 422, refused.text
    (error,) = refused.json()["errors"]
    assert error["field"] == "bmc.password"
    assert "22 bytes" in error["message"]
    assert ACCENTED not in refused.text

    body["bmc"]["password"] = "p" * 20  # type: ignore[index]
    assert client.post("/api/v1/nodes", json=body, headers=operator).status_code == 201
    patch = {"bmc": {"password": ACCENTED}}
    changed = client.patch("/api/v1/nodes/r01-u01", json=patch, headers=operator)
    assert changed.status_code == 422
    assert ACCENTED not in changed.text


def test_a_user_name_is_measured_in_bytes(client: TestClient, operator: dict[str, str]) -> None:
    body = node_body(bmc={"address": "10.0.0.1", "username": "ü" * 9, "password": "secret"})
    refused = client.post("/api/v1/nodes", json=body, headers=operator)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "bmc.username"
