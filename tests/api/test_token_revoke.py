"""Revoking API tokens: the service never locks its operators out of token management."""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner.models import ApiToken, utcnow
from tests.conftest import auth


def _admin_ids(client: TestClient, admin: dict[str, str]) -> list[str]:
    listed = client.get("/api/v1/tokens", headers=admin).json()
    return [t["id"] for t in listed if t["scope"] == "admin"]


def test_the_last_admin_token_cannot_be_revoked(client: TestClient, admin: dict[str, str]) -> None:
    (only,) = _admin_ids(client, admin)
    refused = client.delete(f"/api/v1/tokens/{only}", headers=admin)
    assert refused.status_code == 409, refused.text
    assert "last admin token" in refused.json()["detail"]
    assert "provisioner token create --scope admin" in refused.json()["detail"]
    assert client.get("/api/v1/tokens", headers=admin).status_code == 200


def test_an_admin_token_may_go_once_another_exists(
    client: TestClient, admin: dict[str, str]
) -> None:
    created = client.post(
        "/api/v1/tokens", json={"name": "second", "scope": "admin"}, headers=admin
    )
    assert created.status_code == 201, created.text
    (first,) = [i for i in _admin_ids(client, admin) if i != created.json()["id"]]
    assert client.delete(f"/api/v1/tokens/{first}", headers=admin).status_code == 204
    # The revoked token stops working at once; the new one carries on.
    assert client.get("/api/v1/tokens", headers=admin).status_code == 401
    second = auth(created.json()["token"])
    assert client.get("/api/v1/tokens", headers=second).status_code == 200
    refused = client.delete(f"/api/v1/tokens/{created.json()['id']}", headers=second)
    assert refused.status_code == 409


def test_an_expired_admin_token_does_not_count(
    client: TestClient, app: FastAPI, admin: dict[str, str]
) -> None:
    """Only a live admin token keeps access: an expired one cannot be the spare."""
    body = {"name": "old", "scope": "admin", "expires_in_days": 1}
    expired = client.post("/api/v1/tokens", json=body, headers=admin).json()
    # A day passes: the row's expiry is moved rather than the clock.
    with Session(app.state.services.engine) as session:
        row = session.get(ApiToken, uuid.UUID(expired["id"]))
        assert row is not None
        row.expires_at = utcnow()
        session.add(row)
        session.commit()
    (live,) = [i for i in _admin_ids(client, admin) if i != expired["id"]]
    assert client.delete(f"/api/v1/tokens/{live}", headers=admin).status_code == 409
