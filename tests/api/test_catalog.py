"""/api/v1/roles, /api/v1/images and /api/v1/tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jsonschema_rs
import pytest
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
SUM = "0123456789abcdef" * 4
# Written to disk by the deploy agent: the lab's kind of image, a kernel and busybox.
DISK_IMAGE = {
    "name": "lab-disk",
    "deploy": "image",
    "os_family": "other",
    "version": "1",
    "image_url": "lab/disk.raw.gz",
    "checksum": SUM.upper(),
    "format": "raw.gz",
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


def test_an_image_deploy_needs_no_installer(client: TestClient, admin: dict[str, str]) -> None:
    created = client.post("/api/v1/images", json=DISK_IMAGE, headers=admin)
    assert created.status_code == 201, created.text
    image = created.json()
    # Plain hex is stored with its algorithm, in lower case.
    assert image["checksum"] == f"sha256:{SUM}"
    assert (image["deploy"], image["image_url"], image["format"]) == (
        "image",
        "lab/disk.raw.gz",
        "raw.gz",
    )
    unused = ("kernel_url", "initrd_url", "answer_template", "repo_url", "kernel_args")
    assert [image[field] for field in unused] == [""] * 5
    assert client.get("/api/v1/images/lab-disk", headers=admin).json() == image

    installer = client.post("/api/v1/images", json=IMAGE, headers=admin).json()
    assert installer["deploy"] == "installer"
    assert [installer[f] for f in ("image_url", "checksum", "format")] == ["", "", ""]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"checksum": None}, "checksum"),
        ({"format": None}, "format"),
        ({"image_url": None}, "image_url"),
        ({"format": "vmdk"}, "format"),
        ({"checksum": "sha256:abc"}, "checksum"),
        ({"checksum": "md5:" + "0" * 32}, "checksum"),
        ({"checksum": "sha256:" + "g" * 64}, "checksum"),
        ({"image_url": "../disk.raw"}, "image_url"),
        ({"image_url": "lab/../../disk.raw"}, "image_url"),
        ({"image_url": "file:///srv/images/../../etc/shadow"}, "image_url"),
        ({"image_url": "file://srv/disk.raw"}, "image_url"),
        ({"image_url": "ftp://mirror.example/disk.raw"}, "image_url"),
        ({"kernel_url": "lab/vmlinuz"}, "kernel_url"),
        ({"answer_template": "preseed"}, "answer_template"),
        ({"repo_url": "https://deb.debian.org/debian"}, "repo_url"),
        ({"kernel_args": "quiet"}, "kernel_args"),
    ],
)
def test_a_bad_image_deploy_is_refused_naming_the_field(
    client: TestClient, admin: dict[str, str], changes: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in (DISK_IMAGE | changes).items() if v is not None}
    response = client.post("/api/v1/images", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}
    assert client.get("/api/v1/images/lab-disk", headers=admin).status_code == 404


@pytest.mark.parametrize(
    "image_url",
    [
        "https://images.example.com/lab/disk.qcow2?sig=1",
        "http://127.0.0.1:8080/disk.raw",
        "file:///srv/images/disk.raw",
        "lab/disk.raw",
    ],
)
def test_every_kind_of_image_location_is_taken(
    client: TestClient, admin: dict[str, str], image_url: str
) -> None:
    body = DISK_IMAGE | {"image_url": image_url, "checksum": f"sha256:{SUM}"}
    response = client.post("/api/v1/images", json=body, headers=admin)
    assert response.status_code == 201, response.text
    assert response.json()["image_url"] == image_url


def test_an_installer_image_has_no_image_fields(client: TestClient, admin: dict[str, str]) -> None:
    for extra in ({"image_url": "lab/disk.raw"}, {"checksum": SUM}, {"format": "raw"}):
        response = client.post("/api/v1/images", json=IMAGE | extra, headers=admin)
        assert response.status_code == 422, response.text
        assert {e["field"] for e in response.json()["errors"]} == set(extra)
    missing = {k: v for k, v in IMAGE.items() if k != "initrd_url"}
    response = client.post("/api/v1/images", json=missing, headers=admin)
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "initrd_url", "message": "required by deploy 'installer'"}
    ]
    other = IMAGE | {"os_family": "other"}
    assert client.post("/api/v1/images", json=other, headers=admin).status_code == 422


def test_a_patch_switches_how_an_image_is_deployed(
    client: TestClient, admin: dict[str, str]
) -> None:
    assert client.post("/api/v1/images", json=IMAGE, headers=admin).status_code == 201
    url = f"/api/v1/images/{IMAGE['name']}"
    # Image fields on an installer image, or a switch without the new way's fields.
    for changes in ({"image_url": "lab/disk.raw"}, {"deploy": "image"}):
        assert client.patch(url, json=changes, headers=admin).status_code == 422
    switched = client.patch(
        url,
        json={"deploy": "image", "image_url": "lab/disk.qcow2", "checksum": SUM, "format": "qcow2"},
        headers=admin,
    )
    assert switched.status_code == 200, switched.text
    image = switched.json()
    assert (image["deploy"], image["checksum"]) == ("image", f"sha256:{SUM}")
    assert (image["kernel_url"], image["answer_template"], image["repo_url"]) == ("", "", "")

    # Changed with the same rules applied to the result.
    assert client.patch(url, json={"kernel_url": "a/linux"}, headers=admin).status_code == 422
    changed = client.patch(url, json={"format": "raw", "checksum": SUM.upper()}, headers=admin)
    assert (changed.json()["format"], changed.json()["checksum"]) == ("raw", f"sha256:{SUM}")
    for null in ("checksum", "format", "image_url", "deploy"):
        assert client.patch(url, json={null: None}, headers=admin).status_code == 422

    back = {k: IMAGE[k] for k in ("kernel_url", "initrd_url", "answer_template", "repo_url")}
    assert client.patch(url, json={"deploy": "installer"}, headers=admin).status_code == 422
    restored = client.patch(url, json={"deploy": "installer", **back}, headers=admin)
    assert restored.status_code == 200, restored.text
    assert [restored.json()[f] for f in ("image_url", "checksum", "format")] == ["", "", ""]
    assert restored.json()["kernel_url"] == IMAGE["kernel_url"]


_IMAGES_SCHEMA_CASES = [
    (DISK_IMAGE, True),
    (DISK_IMAGE | {"os_family": "debian", "image_url": "file:///srv/disk.raw"}, True),
    (DISK_IMAGE | {"repo_url": "", "kernel_args": ""}, True),
    (IMAGE, True),
    (IMAGE | {"deploy": "installer"}, True),
    ({k: v for k, v in DISK_IMAGE.items() if k != "checksum"}, False),
    ({k: v for k, v in DISK_IMAGE.items() if k != "deploy"}, False),
    (DISK_IMAGE | {"kernel_url": "lab/vmlinuz"}, False),
    (DISK_IMAGE | {"answer_template": "preseed"}, False),
    (DISK_IMAGE | {"kernel_args": "quiet"}, False),
    (DISK_IMAGE | {"image_url": "lab/../../etc/shadow"}, False),
    (DISK_IMAGE | {"image_url": "file:///srv/../etc/shadow"}, False),
    (DISK_IMAGE | {"image_url": "file:///srv/a%2e%2e/x"}, False),
    (DISK_IMAGE | {"checksum": "sha1:" + "0" * 40}, False),
    (IMAGE | {"format": "raw"}, False),
    (IMAGE | {"checksum": SUM}, False),
    (IMAGE | {"deploy": "image"}, False),
    ({k: v for k, v in IMAGE.items() if k != "kernel_url"}, False),
    (IMAGE | {"os_family": "other"}, False),
]


@pytest.mark.parametrize(("body", "valid"), _IMAGES_SCHEMA_CASES)
def test_the_image_schema_says_what_the_code_takes(
    client: TestClient, admin: dict[str, str], body: dict[str, Any], valid: bool
) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/api/v1/images"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]})
    assert validator.is_valid(body) is valid
    response = client.post("/api/v1/images", json=body, headers=admin)
    assert response.status_code == (201 if valid else 422), response.text
