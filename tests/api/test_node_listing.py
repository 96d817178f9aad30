"""Node listing and enrollment on their fast paths: every filter combination gives what a
plain scan would, the filtered pages use their (column, name) index, and a POST naming
an unknown role or image is still refused without creating anything."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete
from sqlmodel import Session, col, select

from provisioner.models import Bmc, Node
from provisioner.nodes import queries
from tests.conftest import node_body, snapshot

ROLES = ("compute", "storage")


@pytest.fixture
def fleet(client: TestClient, admin: dict[str, str], operator: dict[str, str]) -> list[str]:
    """Twelve nodes over two racks and two roles (and none), one in maintenance, one
    inspecting, one without a BMC; their names."""
    for role in ROLES:
        assert client.post("/api/v1/roles", json={"name": role}, headers=admin).status_code == 201
    names = []
    for i in range(12):
        body = node_body(
            name=f"n{i:02d}",
            mac=f"52:54:00:00:10:{i:02x}",
            rack=f"r{i % 2}",
            role=ROLES[i % 3] if i % 3 < 2 else None,
        )
        body["nics"] = [
            {"mac": f"52:54:00:00:10:{i:02x}", "pxe": True},
            {"mac": f"52:54:00:00:20:{i:02x}"},
        ]
        response = client.post("/api/v1/nodes", json=body, headers=operator)
        assert response.status_code == 201, response.text
        names.append(f"n{i:02d}")
    client.post("/api/v1/nodes/n03/actions/maintenance-on", headers=operator, json={"reason": "x"})
    client.post("/api/v1/nodes/n04/actions/inspect", headers=operator)
    return names


def _walk(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/v1/nodes", params=query, headers=headers)
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return items


def test_every_filter_combination_matches_a_plain_scan(
    client: TestClient, app: FastAPI, viewer: dict[str, str], fleet: list[str]
) -> None:
    with Session(app.state.services.engine) as session:
        node_id = session.exec(select(Node.id).where(Node.name == "n05")).one()
        session.execute(delete(Bmc).where(col(Bmc.node_id) == node_id))
        session.commit()
    # Each node shown alone, as GET /nodes/{name} shows it, is the reference.
    every = {n: client.get(f"/api/v1/nodes/{n}", headers=viewer).json() for n in fleet}
    assert every["n05"]["bmc"] is None
    assert [nic["mac"] for nic in every["n07"]["nics"]] == [
        "52:54:00:00:10:07",
        "52:54:00:00:20:07",
    ]
    choices: dict[str, list[Any]] = {
        "state": [None, "enrolled", "inspecting"],
        "role": [None, *ROLES],
        "rack": [None, "r1"],
        "maintenance": [None, True, False],
        "mac": [None, "52:54:00:00:20:07", "52:54:00:00:10:03"],
    }
    for values in itertools.product(*choices.values()):
        given = {k: v for k, v in zip(choices, values, strict=True) if v is not None}
        expected = [
            node
            for node in every.values()
            if all(
                any(nic["mac"] == v for nic in node["nics"]) if k == "mac" else node[k] == v
                for k, v in given.items()
            )
        ]
        params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in given.items()}
        for limit in (1, 4, 100):
            assert _walk(client, viewer, limit=limit, **params) == expected, (given, limit)


@pytest.mark.parametrize(
    ("given", "index"),
    [
        ({}, "ix_node_name"),
        ({"rack": "r1"}, "ix_node_rack_name"),
        ({"state": "enrolled", "rack": "r1"}, "ix_node_rack_name"),
        ({"state": "enrolled", "role": "compute"}, "ix_node_role_name"),
        ({"state": "enrolled", "role": "compute", "rack": "r1"}, "ix_node_rack_name"),
        ({"role": "compute", "cursor": "n03"}, "ix_node_role_name"),
        ({"state": "enrolled"}, "ix_node_state_name"),
        ({"state": "enrolled", "mac": "52:54:00:00:10:01"}, "ix_nic_mac"),
    ],
)
def test_a_filtered_page_is_a_range_of_its_index(
    client: TestClient, app: FastAPI, given: dict[str, str], index: str
) -> None:
    """Without table statistics SQLite would as soon walk every enrolled node in name
    order as the few of one rack: the page query leaves it one index to choose."""
    if app.state.services.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL plans from its own statistics")
    nodes_statement, _ = queries._page_statements(frozenset(given))
    compiled = nodes_statement.compile(app.state.services.engine)
    values = compiled.construct_params({**given, "limit": 101})
    assert compiled.positiontup is not None
    with app.state.services.engine.connect() as connection:
        raw = connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + compiled.string,
            tuple(values[name] for name in compiled.positiontup),
        )
        plan = " / ".join(row[-1] for row in raw)
    assert index in plan, plan
    if "mac" not in given:  # a MAC's one node needs no index to be in order
        assert "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize("field", ["role", "image"])
def test_enrolling_with_an_unknown_role_or_image_creates_nothing(
    client: TestClient, app: FastAPI, admin: dict[str, str], operator: dict[str, str], field: str
) -> None:
    assert client.post("/api/v1/roles", json={"name": "compute"}, headers=admin).status_code == 201
    assert client.post("/api/v1/nodes", json=node_body(), headers=operator).status_code == 201
    before = snapshot(app)
    # Unknown beats taken: the same name and MAC again still get the 422.
    for body in (node_body(name="other", mac="52:54:00:00:09:09"), node_body()):
        body[field] = "nope"
        response = client.post("/api/v1/nodes", json=body, headers=operator)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in response.json()["errors"]] == [field]
        assert "nope" in response.json()["errors"][0]["message"]
        assert snapshot(app) == before
    body = node_body(name="other", mac="52:54:00:00:09:09", role="compute")
    assert client.post("/api/v1/nodes", json=body, headers=operator).status_code == 201
