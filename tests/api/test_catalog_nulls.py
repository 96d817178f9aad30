"""Nulls and unrenderable images through the real API: a PATCH null is refused (422
naming the field) unless the schema says it clears the field, nothing stored can break a
read, the database's NOT NULL is never reported as a conflict, and an image that no node
could be installed from is refused when it is created or changed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlmodel import Session
from typer.testing import CliRunner

from provisioner.cli import app as cli
from provisioner.models import Nic, OsImage, Role, utcnow
from provisioner.tokens import create_token
from tests.api.test_catalog import IMAGE
from tests.conftest import node_body, snapshot
from tests.serving import InThread

KICKSTART = {
    "name": "rocky-local",
    "os_family": "rhel",
    "version": "9",
    "kernel_url": "rocky/vmlinuz",
    "initrd_url": "rocky/initrd.img",
    "repo_url": "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/",
    "answer_template": "kickstart",
}

REQUIRED_ROLE_FIELDS = [
    "parameters",
    "packages",
    "puppet_classes",
    "description",
    "auto_provision",
    "puppet_environment",
    "handoff",
    "webhook_secret",
]


def _refused(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert [e["field"] for e in body["errors"]] == [field]
    assert field in body["detail"]


@pytest.mark.parametrize("field", REQUIRED_ROLE_FIELDS)
def test_role_patch_null_is_refused_and_reads_keep_working(
    client: TestClient, app: FastAPI, admin: dict[str, str], field: str
) -> None:
    assert client.post("/api/v1/roles", json={"name": "brk"}, headers=admin).status_code == 201
    before = snapshot(app)
    _refused(client.patch("/api/v1/roles/brk", json={field: None}, headers=admin), field)
    assert snapshot(app) == before
    # The same connection goes on serving: nothing was reset by a server error.
    assert client.get("/api/v1/roles", headers=admin).status_code == 200
    shown = client.get("/api/v1/roles/brk", headers=admin)
    assert shown.status_code == 200
    assert shown.json()["parameters"] == {}


def test_null_clears_what_the_schema_says_it_clears(
    client: TestClient, admin: dict[str, str]
) -> None:
    assert client.post("/api/v1/images", json=IMAGE, headers=admin).status_code == 201
    role = {
        "name": "web",
        "default_image": IMAGE["name"],
        "webhook_url": "https://cmdb.example.com/hook",
    }
    assert client.post("/api/v1/roles", json=role, headers=admin).status_code == 201
    cleared = client.patch(
        "/api/v1/roles/web", json={"default_image": None, "webhook_url": None}, headers=admin
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["default_image"] is None
    assert cleared.json()["webhook_url"] is None

    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    patch = schemas["RolePatch"]["properties"]
    assert {"type": "null"} in patch["default_image"]["anyOf"]
    assert patch["parameters"]["type"] == "object"
    assert "anyOf" not in patch["parameters"]
    assert "anyOf" not in schemas["ImagePatch"]["properties"]["kernel_url"]


def test_a_null_stored_before_nulls_were_refused_reads_as_empty(
    app: FastAPI, tmp_path: Path
) -> None:
    """Roles a PATCH with null broke in an older version: the API and `provisioner role
    list` read them."""
    served = InThread(app)
    try:
        with Session(app.state.services.engine) as session:
            _, token = create_token(session, name="reader", scope="viewer")
            # What the old PATCH handler did with {"parameters": null} and the like.
            role = Role(name="brk")
            for field in ("parameters", "packages", "puppet_classes"):
                setattr(role, field, None)
            session.add(role)
            session.commit()
        env = {
            "PROVISIONER_URL": served.url,
            "PROVISIONER_TOKEN": token,
            "XDG_CONFIG_HOME": str(tmp_path),
        }
        listed = CliRunner().invoke(cli, ["role", "list", "--json"], env=env)
        assert listed.exit_code == 0, listed.output
        assert '"brk"' in listed.stdout
        shown = CliRunner().invoke(cli, ["role", "show", "brk", "--json"], env=env)
        assert shown.exit_code == 0, shown.output
        assert '"parameters": {}' in shown.stdout
    finally:
        served.stop()


@pytest.mark.parametrize(
    "field",
    ["kernel_url", "initrd_url", "version", "os_family", "answer_template", "repo_url"],
)
def test_image_patch_null_is_422_naming_the_field(
    client: TestClient, app: FastAPI, admin: dict[str, str], field: str
) -> None:
    assert client.post("/api/v1/images", json=IMAGE, headers=admin).status_code == 201
    before = snapshot(app)
    url = f"/api/v1/images/{IMAGE['name']}"
    _refused(client.patch(url, json={field: None}, headers=admin), field)
    assert snapshot(app) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": None}, "name"),
        ({"bmc": None}, "bmc"),
        ({"nics": None}, "nics"),
        ({"bmc": {"address": None}}, "bmc.address"),
        ({"bmc": {"password": None}}, "bmc.password"),
    ],
)
def test_node_patch_null_is_refused_where_it_cannot_clear(
    client: TestClient, app: FastAPI, operator: dict[str, str], body: dict[str, Any], field: str
) -> None:
    assert client.post("/api/v1/nodes", json=node_body(), headers=operator).status_code == 201
    before = snapshot(app)
    _refused(client.patch("/api/v1/nodes/r01-u01", json=body, headers=operator), field)
    assert snapshot(app) == before


def test_bmc_overrides_cleared_by_null_fall_back_to_the_service_default(
    client: TestClient, operator: dict[str, str]
) -> None:
    assert client.post("/api/v1/nodes", json=node_body(), headers=operator).status_code == 201
    overrides = {"timeout": 3.0, "retries": 1, "cipher_suite": 17}
    set_ = client.patch("/api/v1/nodes/r01-u01", json={"bmc": overrides}, headers=operator)
    assert set_.status_code == 200, set_.text
    assert {k: set_.json()["bmc"][k] for k in overrides} == overrides
    cleared = dict.fromkeys(overrides)
    reset = client.patch("/api/v1/nodes/r01-u01", json={"bmc": cleared}, headers=operator)
    assert reset.status_code == 200, reset.text
    assert {k: reset.json()["bmc"][k] for k in overrides} == cleared


def test_integrity_errors_are_conflicts_only_when_they_are(
    client: TestClient, app: FastAPI
) -> None:
    """What reaches the database unchecked: a taken name or a missing row is a 409, a
    missing value a 422 naming the column."""
    now = utcnow()
    image = {**IMAGE, "kernel_args": "", "created_at": now, "updated_at": now}
    statements = {
        "image": insert(OsImage).values(image),
        "image-without-kernel": insert(OsImage).values({**image, "name": "b", "kernel_url": None}),
        "nic-of-no-node": insert(Nic).values(
            node_id=uuid.uuid4(), mac="52:54:00:00:0f:0f", pxe=False
        ),
    }

    def store(which: str) -> None:
        with Session(app.state.services.engine) as session:
            session.execute(statements[which])
            session.commit()

    app.add_api_route("/test/store/{which}", store, methods=["POST"])
    assert client.post("/test/store/image").status_code == 200
    taken = client.post("/test/store/image")
    assert taken.status_code == 409
    assert "already in use" in taken.json()["detail"]
    assert client.post("/test/store/nic-of-no-node").status_code == 409
    _refused(client.post("/test/store/image-without-kernel"), "kernel_url")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"repo_url": ""}, "repo_url"),
        ({"repo_url": "file:///srv/rocky"}, "repo_url"),
        ({"os_family": "debian"}, "answer_template"),
        ({"kernel_args": "inst.text ${net0/mac}"}, "kernel_args"),
        ({"version": "9 beta"}, "version"),
    ],
)
def test_an_image_that_cannot_render_is_not_created(
    client: TestClient, app: FastAPI, admin: dict[str, str], changes: dict[str, str], field: str
) -> None:
    before = snapshot(app)
    response = client.post("/api/v1/images", json=KICKSTART | changes, headers=admin)
    _refused(response, field)
    assert snapshot(app) == before


@pytest.mark.parametrize(
    ("image", "changes", "field"),
    [
        (KICKSTART, {"repo_url": ""}, "repo_url"),
        (IMAGE, {"answer_template": "kickstart"}, "answer_template"),
        (
            IMAGE | {"repo_url": ""},
            {"answer_template": "kickstart", "os_family": "rhel"},
            "repo_url",
        ),
    ],
)
def test_a_change_that_would_make_an_image_unrenderable_is_refused(
    client: TestClient,
    app: FastAPI,
    admin: dict[str, str],
    image: dict[str, str],
    changes: dict[str, str],
    field: str,
) -> None:
    assert client.post("/api/v1/images", json=image, headers=admin).status_code == 201
    before = snapshot(app)
    url = f"/api/v1/images/{image['name']}"
    _refused(client.patch(url, json=changes, headers=admin), field)
    assert snapshot(app) == before
    # The same change together with what it needs is accepted.
    fixed = {**changes, "repo_url": KICKSTART["repo_url"], "os_family": "rhel"}
    assert client.patch(url, json=fixed, headers=admin).status_code == 200


def test_an_image_stored_under_older_rules_reads_and_says_what_to_fix(
    client: TestClient, app: FastAPI, admin: dict[str, str]
) -> None:
    assert client.post("/api/v1/images", json=KICKSTART, headers=admin).status_code == 201
    with Session(app.state.services.engine) as session:
        # file:// repositories were accepted once; no installer could use one.
        image = session.get(OsImage, KICKSTART["name"])
        assert image is not None
        image.repo_url = "file:///srv/rocky"
        session.add(image)
        session.commit()
    url = f"/api/v1/images/{KICKSTART['name']}"
    assert client.get("/api/v1/images", headers=admin).status_code == 200
    assert client.get(url, headers=admin).json()["repo_url"] == "file:///srv/rocky"
    _refused(client.patch(url, json={"version": "9.4"}, headers=admin), "repo_url")
    fixed = {"version": "9.4", "repo_url": KICKSTART["repo_url"]}
    assert client.patch(url, json=fixed, headers=admin).status_code == 200
