"""Bearer tokens and scopes on every API route."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import auth

PUBLIC = {"/healthz", "/readyz", "/metrics"}
# Firmware, installers and the deploy agent cannot hold an API token; a deployment
# token guards these.
NODE_FACING = ("/boot/", "/callback/", "/agent/")
# ...except where the pxe process reports on the nodes' behalf, which writes timelines.
PXE_REPORTS = {"/boot/trace/tftp", "/boot/trace/dhcp"}


def _needs_token(path: str) -> bool:
    if path in PUBLIC:
        return False
    return path in PXE_REPORTS or not path.startswith(NODE_FACING)


def _api_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every documented operation, with path parameters filled in."""
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", path))
        for path, operations in app.openapi()["paths"].items()
        if _needs_token(path)
        for method in operations
    ]


def test_every_api_route_needs_a_token(client: TestClient, app: FastAPI) -> None:
    routes = _api_routes(app)
    assert len(routes) >= 15
    for method, path in routes:
        response = client.request(method, path)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"


def test_wrong_token_is_401(client: TestClient) -> None:
    response = client.get("/api/v1/nodes", headers=auth("prov_not-a-real-token"))
    assert response.status_code == 401
    assert "unknown" in response.json()["detail"]
    basic = client.get("/api/v1/nodes", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert basic.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "scope_needed"),
    [
        ("POST", "/api/v1/nodes", "operator"),
        ("PATCH", "/api/v1/nodes/x", "operator"),
        ("DELETE", "/api/v1/nodes/x", "operator"),
        ("POST", "/api/v1/nodes/x/actions/inspect", "operator"),
        ("POST", "/api/v1/racks/import", "operator"),
        ("POST", "/api/v1/roles", "admin"),
        ("DELETE", "/api/v1/roles/x", "admin"),
        ("POST", "/api/v1/images", "admin"),
        ("GET", "/api/v1/tokens", "admin"),
        ("POST", "/api/v1/tokens", "admin"),
    ],
)
def test_too_small_a_scope_is_403(
    client: TestClient, tokens: dict[str, str], method: str, path: str, scope_needed: str
) -> None:
    smaller = ["viewer"] if scope_needed == "operator" else ["viewer", "operator"]
    for scope in smaller:
        response = client.request(method, path, headers=auth(tokens[scope]))
        assert response.status_code == 403, (scope, response.text)
        assert scope_needed in response.json()["detail"]


def test_viewer_reads(client: TestClient, viewer: dict[str, str]) -> None:
    for path in ("/api/v1/nodes", "/api/v1/roles", "/api/v1/images"):
        assert client.get(path, headers=viewer).status_code == 200


def test_public_endpoints_need_no_token(client: TestClient, app: FastAPI) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {
        "status": "ready",
        "replica": {
            "owner": app.state.services.reconciler.owner,
            "leases_held": 0,
            "claims": 0,
            "takeovers": 0,
            "power_sync_rounds": 0,
        },
        "agent": None,  # no agent build in its agent directory
    }
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 200
