"""/api/v1/nodes: enrollment, listing, lookup, changes, actions and the timeline."""

from __future__ import annotations

import base64
import uuid

from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner.models import Bmc, Node
from provisioner.secrets import Vault
from tests.conftest import node_body


def enroll(client: TestClient, headers: dict[str, str], **kw: object) -> dict[str, object]:
    response = client.post("/api/v1/nodes", json=node_body(**kw), headers=headers)  # type: ignore[arg-type]
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_enroll_returns_the_node_without_its_password(
    client: TestClient, operator: dict[str, str]
) -> None:
    body = node_body(name="R01-U01", mac="52-54-00-AA-BB-01")
    response = client.post("/api/v1/nodes", json=body, headers=operator)
    assert response.status_code == 201
    node = response.json()
    assert node["name"] == "r01-u01"
    assert node["state"] == "enrolled"
    assert node["power_state"] == "unknown"
    assert node["version"] == 1
    assert node["nics"] == [{"mac": "52:54:00:aa:bb:01", "pxe": True}]
    assert node["bmc"] == {
        "driver": "ipmi",
        "address": "127.0.0.1",
        "port": body["bmc"]["port"],  # type: ignore[index]
        "username": "admin",
        "timeout": None,
        "retries": None,
        "cipher_suite": None,
        "tls_verify": None,
        "tls_fingerprint": None,
    }
    assert "inspect" in node["allowed_actions"]
    assert "s3cret-bmc-pw" not in response.text
    assert response.headers["etag"] == '"1"'
    assert response.headers["location"] == f"/api/v1/nodes/{node['id']}"


def test_get_by_id_and_by_name(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str]
) -> None:
    node = enroll(client, operator)
    by_id = client.get(f"/api/v1/nodes/{node['id']}", headers=viewer)
    by_name = client.get("/api/v1/nodes/R01-U01", headers=viewer)
    assert by_id.json() == by_name.json() == node
    assert by_id.headers["etag"] == '"1"'
    missing = client.get("/api/v1/nodes/nope", headers=viewer)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert "nope" in missing.json()["detail"]


def test_list_filters_and_cursor_pagination(
    client: TestClient, operator: dict[str, str], viewer: dict[str, str]
) -> None:
    for i in range(7):
        enroll(
            client,
            operator,
            name=f"n{i:02d}",
            mac=f"52:54:00:00:00:{i:02x}",
            rack="a" if i % 2 else "b",
            rack_unit=i + 1,
        )
    client.post(
        "/api/v1/nodes/n03/actions/maintenance-on", headers=operator, json={"reason": "fan"}
    )
    client.post("/api/v1/nodes/n04/actions/inspect", headers=operator)

    names: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/nodes", params=params, headers=viewer).json()
        names += [n["name"] for n in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == [f"n{i:02d}" for i in range(7)]
    assert pages == 3

    def names_for(**params: str) -> list[str]:
        response = client.get("/api/v1/nodes", params=params, headers=viewer)
        assert response.status_code == 200, response.text
        return [n["name"] for n in response.json()["items"]]

    assert names_for(rack="a") == ["n01", "n03", "n05"]
    assert names_for(state="inspecting") == ["n04"]
    assert names_for(maintenance="true") == ["n03"]
    assert names_for(mac="52-54-00-00-00-06") == ["n06"]
    assert names_for(rack="b", state="enrolled") == ["n00", "n02", "n06"]
    assert names_for(role="compute") == []


def test_list_refuses_bad_filters(client: TestClient, viewer: dict[str, str]) -> None:
    for params in ({"state": "sleeping"}, {"mac": "xyz"}, {"limit": "0"}, {"limit": "5000"}):
        response = client.get("/api/v1/nodes", params=params, headers=viewer)
        assert response.status_code == 422, params
        assert response.json()["errors"]
    assert client.get("/api/v1/nodes", params={"cursor": "%%%"}, headers=viewer).status_code == 400


def test_cursors_are_opaque_and_tamper_evident(
    client: TestClient, app: FastAPI, operator: dict[str, str], viewer: dict[str, str]
) -> None:
    for i in range(3):
        body = node_body(name=f"c{i}", mac=f"52:54:00:00:0c:0{i}")
        assert client.post("/api/v1/nodes", json=body, headers=operator).status_code == 201
    cursor = client.get("/api/v1/nodes", params={"limit": 1}, headers=viewer).json()["next_cursor"]
    # Readable only with the service's key.
    assert app.state.services.vault.decrypt(cursor) == "page after c0"
    following = client.get("/api/v1/nodes", params={"limit": 1, "cursor": cursor}, headers=viewer)
    assert [n["name"] for n in following.json()["items"]] == ["c1"]
    forged = [
        cursor[:-6] + ("A" if cursor[-6] != "A" else "B") + cursor[-5:],  # one character
        base64.urlsafe_b64encode(b"c0").decode(),  # a readable position, as cursors once were
        Vault(Fernet.generate_key()).encrypt("page after c0"),  # another service's key
    ]
    for bad in forged:
        refused = client.get("/api/v1/nodes", params={"cursor": bad}, headers=viewer)
        assert refused.status_code == 400, bad
        assert "not one this service handed out" in refused.json()["detail"]


def test_patch_with_etag_and_stale_etag(client: TestClient, operator: dict[str, str]) -> None:
    node = enroll(client, operator)
    ok = client.patch(
        f"/api/v1/nodes/{node['id']}",
        json={"rack_unit": 7, "nics": [{"mac": "52:54:00:00:09:09"}, {"mac": "52:54:00:00:09:0a"}]},
        headers={**operator, "If-Match": '"1"'},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["rack_unit"] == 7
    assert ok.json()["version"] == 2
    assert [n["mac"] for n in ok.json()["nics"]] == ["52:54:00:00:09:09", "52:54:00:00:09:0a"]
    assert ok.headers["etag"] == '"2"'

    stale = client.patch(
        f"/api/v1/nodes/{node['id']}",
        json={"rack_unit": 9},
        headers={**operator, "If-Match": '"1"'},
    )
    assert stale.status_code == 412
    assert '"2"' in stale.json()["detail"]
    assert client.get(f"/api/v1/nodes/{node['id']}", headers=operator).json()["rack_unit"] == 7


def test_patch_bmc_keeps_the_password_unless_given(
    client: TestClient, operator: dict[str, str], app: FastAPI
) -> None:
    body = node_body()
    body["bmc"]["password"] = " pass with spaces "  # type: ignore[index]
    node = client.post("/api/v1/nodes", json=body, headers=operator).json()
    response = client.patch(
        f"/api/v1/nodes/{node['id']}", json={"bmc": {"port": 6231}}, headers=operator
    )
    assert response.status_code == 200, response.text
    assert response.json()["bmc"]["port"] == 6231
    with Session(app.state.services.engine) as session:
        bmc = session.get(Bmc, uuid.UUID(node["id"]))
        assert bmc is not None
        assert app.state.services.vault.decrypt(bmc.password_encrypted) == " pass with spaces "


def test_delete(client: TestClient, operator: dict[str, str]) -> None:
    node = enroll(client, operator)
    assert client.delete("/api/v1/nodes/r01-u01", headers=operator).status_code == 204
    assert client.get(f"/api/v1/nodes/{node['id']}", headers=operator).status_code == 404
    # The MAC is free again.
    enroll(client, operator, name="again")


def test_delete_refused_while_working(client: TestClient, operator: dict[str, str]) -> None:
    enroll(client, operator)
    client.post("/api/v1/nodes/r01-u01/actions/inspect", headers=operator)
    refused = client.delete("/api/v1/nodes/r01-u01", headers=operator)
    assert refused.status_code == 409
    assert "abort" in refused.json()["detail"]


def test_actions_follow_the_lifecycle_and_are_recorded(
    client: TestClient, operator: dict[str, str], admin: dict[str, str]
) -> None:
    enroll(client, operator)
    accepted = client.post("/api/v1/nodes/r01-u01/actions/inspect", headers=operator)
    assert accepted.status_code == 202
    assert accepted.json()["state"] == "inspecting"

    illegal = client.post("/api/v1/nodes/r01-u01/actions/provision", headers=operator)
    assert illegal.status_code == 409
    problem = illegal.json()
    assert problem["allowed_actions"] == ["abort", "maintenance-on"]
    assert "cannot provision a node that is inspecting" in problem["detail"].lower()
    assert "abort" in problem["detail"]

    aborted = client.post(
        "/api/v1/nodes/r01-u01/actions/abort", json={"reason": "wrong rack"}, headers=operator
    )
    assert aborted.json()["state"] == "failed"
    assert aborted.json()["failed_from"] == "inspecting"
    assert "aborted by test-operator" in aborted.json()["last_error"]
    retried = client.post("/api/v1/nodes/r01-u01/actions/retry", headers=operator)
    assert retried.json()["state"] == "inspecting"
    assert retried.json()["last_error"] is None

    power = client.post("/api/v1/nodes/r01-u01/actions/power-on", headers=operator)
    assert power.status_code == 409

    events = client.get("/api/v1/nodes/r01-u01/events", headers=operator).json()
    assert [(e["kind"], e["from_state"], e["to_state"]) for e in events] == [
        ("enroll", None, "enrolled"),
        ("inspect", "enrolled", "inspecting"),
        ("abort", "inspecting", "failed"),
        ("retry", "failed", "inspecting"),
    ]
    assert events[2]["message"] == "wrong rack"
    assert {e["actor"] for e in events} == {"test-operator"}


def test_unknown_action_is_422(client: TestClient, operator: dict[str, str]) -> None:
    enroll(client, operator)
    response = client.post("/api/v1/nodes/r01-u01/actions/explode", headers=operator)
    assert response.status_code == 422


def test_maintenance_and_power_actions(client: TestClient, operator: dict[str, str]) -> None:
    enroll(client, operator)
    on = client.post(
        "/api/v1/nodes/r01-u01/actions/maintenance-on",
        json={"reason": "PSU swap"},
        headers=operator,
    )
    assert on.status_code == 202
    assert on.json()["maintenance"] is True
    assert on.json()["maintenance_reason"] == "PSU swap"
    refused = client.post("/api/v1/nodes/r01-u01/actions/inspect", headers=operator)
    assert refused.status_code == 409
    assert "maintenance" in refused.json()["detail"]
    assert (
        client.post("/api/v1/nodes/r01-u01/actions/power-off", headers=operator).status_code == 202
    )
    off = client.post("/api/v1/nodes/r01-u01/actions/maintenance-off", headers=operator)
    assert off.json()["maintenance"] is False
    assert off.json()["maintenance_reason"] is None
    kinds = [e["kind"] for e in client.get("/api/v1/nodes/r01-u01/events", headers=operator).json()]
    assert kinds == ["enroll", "maintenance-on", "power-off", "maintenance-off"]


def test_provision_needs_a_known_role_and_image(
    client: TestClient, operator: dict[str, str], admin: dict[str, str]
) -> None:
    enroll(client, operator)
    client.post("/api/v1/nodes/r01-u01/actions/inspect", headers=operator)
    # Inspection is the reconciler's job (a later issue); here we only check the API.
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    with engine.begin() as connection:
        connection.execute(Node.__table__.update().values(state="ready"))  # type: ignore[attr-defined]

    no_role = client.post("/api/v1/nodes/r01-u01/actions/provision", headers=operator)
    assert no_role.status_code == 422
    assert no_role.json()["errors"][0]["field"] == "role"

    # rocky-9 is in the built-in catalogue.
    role = {"name": "compute", "default_image": "rocky-9", "puppet_classes": ["role::compute"]}
    assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201

    unknown = client.post(
        "/api/v1/nodes/r01-u01/actions/provision", json={"role": "storage"}, headers=operator
    )
    assert unknown.status_code == 422
    ok = client.post(
        "/api/v1/nodes/r01-u01/actions/provision", json={"role": "compute"}, headers=operator
    )
    assert ok.status_code == 202, ok.text
    assert (ok.json()["state"], ok.json()["role"], ok.json()["image"]) == (
        "provisioning",
        "compute",
        "rocky-9",
    )
