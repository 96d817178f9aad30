"""The OpenAPI document says what the service does: every error as problem+json, the
constraints the validators enforce, the node-facing routes, the methods a 405 allows;
/docs works with no route to a CDN; an unexpected error leaves the connection usable."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.app import create_app
from provisioner.settings import Settings
from tests.conftest import node_body
from tests.serving import InThread

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("spec") / "data"
    return create_app(Settings(data_dir=data, reconciler=False)).openapi()


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_error_is_documented_as_a_problem(spec: dict[str, Any]) -> None:
    for path, method, operation in _operations(spec):
        errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
        for status, response in errors.items():
            assert response.get("content") == PROBLEM, (method, path, status)
        if path.startswith("/api/v1/"):
            assert {"401", "503"} <= set(errors), (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "Problem" in spec["components"]["schemas"]


def test_node_facing_routes_are_in_the_schema(spec: dict[str, Any]) -> None:
    node_facing = {
        (path, method): operation
        for path, method, operation in _operations(spec)
        if operation.get("tags") == ["boot (node-facing)"]
    }
    assert {
        ("/boot/ipxe", "get"),
        ("/boot/ipxe", "head"),
        ("/boot/files/{path}", "get"),
        ("/boot/files/{path}", "head"),
        ("/boot/answers/{token}", "get"),
        ("/callback/{token}/{kind}", "post"),
    } <= set(node_facing)
    assert "400" in node_facing["/boot/ipxe", "get"]["responses"]
    assert "410" in node_facing["/boot/answers/{token}", "get"]["responses"]
    assert "410" in node_facing["/callback/{token}/{kind}", "post"]["responses"]


def _request_schema(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    body = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return {**body, "components": spec["components"]}


def _validator(schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True)


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/api/v1/roles", "post", {"name": ""}),
        ("/api/v1/roles", "post", {"name": "web", "handoff": "webhook"}),
        ("/api/v1/images", "post", {"name": "", "os_family": "debian"}),
        ("/api/v1/actions", "post", {"action": "inspect", "selection": {"names": []}}),
        ("/api/v1/actions", "post", {"action": "inspect", "selection": {"rack": ""}}),
        ("/api/v1/actions", "post", {"action": "inspect", "selection": {"rack": None}}),
        (
            "/api/v1/nodes",
            "post",
            {"name": "", "bmc": {"address": "", "username": "a", "password": "b"}},
        ),
        (
            "/api/v1/nodes",
            "post",
            {"name": "n1", "bmc": {"address": "1.2.3", "username": "a", "password": "b"}},
        ),
        (
            "/api/v1/nodes",
            "post",
            {"name": "n1", "bmc": {"address": "b1", "username": "a", "password": "é"}},
        ),
        ("/api/v1/tokens", "post", {"name": "t", "scope": "viewer", "expires_in_days": "5"}),
        # urlsplit refuses this one: the webhook would fail only when sent.
        ("/api/v1/roles", "post", {"name": "web", "webhook_url": "http://[0"}),
        # Twelve hex digits, but not in any of a MAC's forms.
        (
            "/api/v1/nodes",
            "post",
            {
                "name": "n1",
                "bmc": {"address": "b1", "username": "a", "password": "b"},
                "nics": [{"mac": "0a:b:bcc:dd:ee:ff"}],
            },
        ),
    ],
)
def test_what_the_code_refuses_the_schema_refuses(
    spec: dict[str, Any],
    client: TestClient,
    admin: dict[str, str],
    path: str,
    method: str,
    body: dict[str, Any],
) -> None:
    schema = _request_schema(spec, path, method)
    assert not _validator(schema).is_valid(body), body
    assert client.request(method, path, json=body, headers=admin).status_code == 422


@pytest.mark.parametrize(
    "good",
    [
        {"name": " Web.01 "},
        {
            "name": "web",
            "handoff": "webhook",
            "webhook_url": "http://h/x",
            "webhook_secret": "s" * 16,
        },
    ],
)
def test_what_the_schema_allows_the_code_takes(
    spec: dict[str, Any], client: TestClient, admin: dict[str, str], good: dict[str, Any]
) -> None:
    schema = _request_schema(spec, "/api/v1/roles", "post")
    _validator(schema).validate(good)
    assert client.post("/api/v1/roles", json=good, headers=admin).status_code == 201


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/boot/files/x", "GET, HEAD"),
        ("PUT", "/api/v1/nodes/x", "DELETE, GET, PATCH"),
        ("DELETE", "/api/v1/nodes", "GET, POST"),
        ("POST", "/boot/ipxe", "GET, HEAD"),
    ],
)
def test_a_405_allows_every_method_the_path_serves(
    client: TestClient, method: str, path: str, allowed: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_need_no_cdn(client: TestClient, page: str) -> None:
    html = client.get(page).text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ['"]([^'"]+)['"]""", html)
    urls = [a or b for a, b in urls]
    assert urls
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url}"
        assert "//" not in url, f"{page} loads {url}"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url


def test_an_unexpected_error_leaves_the_keep_alive_connection_usable(
    tmp_path: Path,
) -> None:
    # A real uvicorn: the reset happened in the server, after the 500 had been sent.
    app: FastAPI = create_app(Settings(data_dir=tmp_path / "data", reconciler=False))

    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    server = InThread(app)
    try:
        with httpx.Client(base_url=server.url) as http:
            for _ in range(3):
                failed = http.get("/broken")
                assert failed.status_code == 500
                assert failed.headers["content-type"] == "application/problem+json"
                assert "a bug" not in failed.text
                first = failed.extensions["network_stream"].get_extra_info("client_addr")
                after = http.get("/healthz")
                assert after.status_code == 200
                # The same connection, not a fresh one after a reset.
                assert after.extensions["network_stream"].get_extra_info("client_addr") == first
    finally:
        server.stop()


def test_an_uninspected_nodes_inventory_is_a_state_not_a_missing_node(
    client: TestClient, operator: dict[str, str]
) -> None:
    # The fuzzer read a 404 right after the node's creation as the node being lost.
    assert client.post("/api/v1/nodes", json=node_body(), headers=operator).status_code == 201
    early = client.get("/api/v1/nodes/r01-u01/inventory", headers=operator)
    assert early.status_code == 409
    assert "inspect" in early.json()["detail"]
    assert client.get("/api/v1/nodes/nope/inventory", headers=operator).status_code == 404
