"""Role hand-off settings: validation, and a webhook secret that goes in and never out."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner.models import Role
from tests.handoff.conftest import WEBHOOK_SECRET

HOOK = "http://127.0.0.1:9/hook"


def test_defaults_to_immediate(client: TestClient, admin: dict[str, str]) -> None:
    body = client.post("/api/v1/roles", json={"name": "compute"}, headers=admin).json()
    assert body["handoff"] == "immediate"
    assert body["webhook_url"] is None
    assert body["webhook_secret_set"] is False
    assert "webhook_secret" not in body


def test_webhook_role_needs_url_and_secret(client: TestClient, admin: dict[str, str]) -> None:
    for extra in ({}, {"webhook_url": HOOK}, {"webhook_secret": WEBHOOK_SECRET}):
        response = client.post(
            "/api/v1/roles", json={"name": "web", "handoff": "webhook", **extra}, headers=admin
        )
        assert response.status_code == 422, extra
    for url in ("ftp://example.com/x", "example.com", "http://", "http://a b"):
        response = client.post(
            "/api/v1/roles", json={"name": "web", "webhook_url": url}, headers=admin
        )
        assert response.status_code == 422, url
    short = {"name": "web", "handoff": "webhook", "webhook_url": HOOK, "webhook_secret": "short"}
    assert client.post("/api/v1/roles", json=short, headers=admin).status_code == 422
    bad = {"name": "web", "handoff": "puppet"}
    assert client.post("/api/v1/roles", json=bad, headers=admin).status_code == 422


def test_secret_is_stored_encrypted_and_never_returned(
    client: TestClient, app: FastAPI, admin: dict[str, str], viewer: dict[str, str]
) -> None:
    body = {"name": "web", "handoff": "webhook", "webhook_url": HOOK}
    created = client.post(
        "/api/v1/roles", json={**body, "webhook_secret": WEBHOOK_SECRET}, headers=admin
    )
    assert created.status_code == 201, created.text
    assert created.json()["webhook_secret_set"] is True
    outputs = [
        created.text,
        client.get("/api/v1/roles", headers=viewer).text,
        client.get("/api/v1/roles/web", headers=viewer).text,
        client.patch("/api/v1/roles/web", json={"description": "x"}, headers=admin).text,
        client.get("/openapi.json").text,
    ]
    assert all(WEBHOOK_SECRET not in text for text in outputs)
    with Session(app.state.services.engine) as session:
        role = session.get(Role, "web")
        assert role is not None
        assert role.webhook_secret_encrypted is not None
        assert WEBHOOK_SECRET not in role.webhook_secret_encrypted
        assert app.state.services.vault.decrypt(role.webhook_secret_encrypted) == WEBHOOK_SECRET


def test_patch_keeps_the_configuration_complete(
    client: TestClient, app: FastAPI, admin: dict[str, str]
) -> None:
    client.post("/api/v1/roles", json={"name": "web"}, headers=admin)
    url = "/api/v1/roles/web"
    assert client.patch(url, json={"handoff": "webhook"}, headers=admin).status_code == 422
    only_url = {"handoff": "webhook", "webhook_url": HOOK}
    assert client.patch(url, json=only_url, headers=admin).status_code == 422
    complete = {**only_url, "webhook_secret": WEBHOOK_SECRET}
    changed = client.patch(url, json=complete, headers=admin)
    assert changed.status_code == 200, changed.text
    assert changed.json()["webhook_secret_set"] is True
    # The stored secret counts: changing the URL alone is fine, removing it is not.
    other = {"webhook_url": "https://hooks.example.com/p"}
    assert client.patch(url, json=other, headers=admin).status_code == 200
    assert client.patch(url, json={"webhook_url": None}, headers=admin).status_code == 422
    rotated = {"webhook_secret": "another-secret-0123456789"}
    assert client.patch(url, json=rotated, headers=admin).status_code == 200
    with Session(app.state.services.engine) as session:
        role = session.get(Role, "web")
        assert role is not None
        assert role.webhook_secret_encrypted is not None
        secret = app.state.services.vault.decrypt(role.webhook_secret_encrypted)
        assert secret == rotated["webhook_secret"]
