"""/healthz, /readyz, /metrics and the OpenAPI document."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from tests.conftest import node_body


def test_metrics_count_requests_and_nodes_by_state(
    client: TestClient, operator: dict[str, str]
) -> None:
    client.post("/api/v1/nodes", json=node_body(), headers=operator)
    client.post("/api/v1/nodes/r01-u01/actions/inspect", headers=operator)
    client.get("/api/v1/nodes/r01-u01", headers=operator)
    body = client.get("/metrics").text
    assert 'provisioner_nodes{state="inspecting"} 1.0' in body
    assert 'provisioner_nodes{state="active"} 0.0' in body
    assert (
        'provisioner_http_requests_total{method="GET",route="/api/v1/nodes/{ref}",status="200"} 1.0'
        in body
    )
    assert "r01-u01" not in body  # route templates, not raw paths


def test_readyz_fails_when_the_database_is_gone(client: TestClient) -> None:
    app = client.app
    good = app.state.services.engine  # type: ignore[attr-defined]
    app.state.services.engine = create_engine("sqlite:////nonexistent/dir/db.sqlite")  # type: ignore[attr-defined]
    try:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/healthz").status_code == 200
    finally:
        app.state.services.engine = good  # type: ignore[attr-defined]


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/v1/nodes",
        "/api/v1/nodes/{ref}",
        "/api/v1/nodes/{ref}/actions/{action}",
        "/api/v1/nodes/{ref}/events",
        "/api/v1/racks/import",
        "/api/v1/roles",
        "/api/v1/images",
        "/api/v1/tokens",
    ):
        assert path in paths, path
    manifest = paths["/api/v1/racks/import"]["post"]["requestBody"]["content"]
    assert set(manifest) == {"application/yaml", "text/csv"}
    assert "password" not in str(spec["components"]["schemas"]["NodeOut"])


def test_unknown_paths_and_methods_are_problems(client: TestClient) -> None:
    missing = client.get("/api/v2/things")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["detail"] == "There is no /api/v2/things; the API is described at /docs."
    wrong = client.put("/healthz")
    assert wrong.status_code == 405
    assert "PUT" in wrong.json()["detail"]
