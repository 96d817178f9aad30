"""/api/v1/roles, /api/v1/images and /api/v1/tokens."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from provisioner.models import ApiToken
from tests.conftest import auth, node_body

IMAGE = {
    "name": "debian-12-local",
    "os_family": "debian",
    "version": "12",
    "kernel_url": "debian-12/linux",
    "initrd_url": "https://deb.debian.org/debian/dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/initrd.gz",
    "repo_url": "https://deb.debian.org/debian",
    "answer_template": "preseed",
}


def test_image_and_role_crud(
    client: TestClient, admin: dict[str, str], operator: dict[str, str]
) -> None:
    assert client.post("/api/v1/images", json=IMAGE, headers=admin).status_code == 201
    assert client.post("/api/v1/images", json=IMAGE, headers=admin).status_code == 409
    role = {"name": "storage", "default_image": "debian-12-local", "packages": ["ceph-osd"]}
    created = client.post("/api/v1/roles", json=role, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["auto_provision"] is True
    assert created.json()["puppet_environment"] == "production"

    changed = client.patch(
        "/api/v1/roles/storage", json={"description": "Ceph OSD hosts"}, headers=admin
    )
    assert changed.json()["description"] == "Ceph OSD hosts"
    assert changed.json()["packages"] == ["ceph-osd"]
    assert [r["name"] for r in client.get("/api/v1/roles", headers=operator).json()] == ["storage"]

    # In use: refuse to delete what nodes and roles refer to.
    assert (
        client.post("/api/v1/nodes", json=node_body(role="storage"), headers=operator).status_code
        == 201
    )
    assert client.delete("/api/v1/images/debian-12-local", headers=admin).status_code == 409
    assert client.delete("/api/v1/roles/storage", headers=admin).status_code == 409
    assert client.delete("/api/v1/nodes/r01-u01", headers=operator).status_code == 204
    assert client.delete("/api/v1/roles/storage", headers=admin).status_code == 204
    assert client.delete("/api/v1/images/debian-12-local", headers=admin).status_code == 204
    assert client.get("/api/v1/roles/storage", headers=admin).status_code == 404


def test_role_with_unknown_default_image_is_refused(
    client: TestClient, admin: dict[str, str]
) -> None:
    response = client.post(
        "/api/v1/roles", json={"name": "x", "default_image": "nope"}, headers=admin
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "default_image", "message": "unknown image"}]


def test_bad_image_fields(client: TestClient, admin: dict[str, str]) -> None:
    bad = {**IMAGE, "kernel_url": "ftp://x", "answer_template": "cloud-init", "colour": "red"}
    response = client.post("/api/v1/images", json=bad, headers=admin)
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"kernel_url", "answer_template", "colour"}


def test_tokens_are_shown_once_and_can_be_revoked(
    client: TestClient, admin: dict[str, str]
) -> None:
    created = client.post("/api/v1/tokens", json={"name": "ci", "scope": "viewer"}, headers=admin)
    assert created.status_code == 201
    token = created.json()["token"]
    assert token.startswith("prov_")
    assert client.get("/api/v1/nodes", headers=auth(token)).status_code == 200

    listed = client.get("/api/v1/tokens", headers=admin)
    assert token not in listed.text
    assert "ci" in [t["name"] for t in listed.json()]

    assert client.delete(f"/api/v1/tokens/{created.json()['id']}", headers=admin).status_code == 204
    assert client.get("/api/v1/nodes", headers=auth(token)).status_code == 401


def test_expired_token_is_refused(client: TestClient, admin: dict[str, str]) -> None:
    created = client.post(
        "/api/v1/tokens",
        json={"name": "short", "scope": "viewer", "expires_in_days": 1},
        headers=admin,
    ).json()
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        row = session.exec(select(ApiToken).where(ApiToken.name == "short")).one()
        row.expires_at = datetime(2000, 1, 1, tzinfo=UTC)
        session.add(row)
        session.commit()
    assert client.get("/api/v1/nodes", headers=auth(created["token"])).status_code == 401
