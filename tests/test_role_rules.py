"""Role rules: the first matching rule gives an inspected node without a role its role,
and the racking flow then provisions it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provisioner.app import create_app
from provisioner.bmc.fake import FakeFleet
from provisioner.role_rules import Position, RoleRules, RoleRulesError
from provisioner.settings import Settings
from tests.test_deploying import admin_headers
from tests.test_reconciler import PASSWORD, node, tick

RULES = """
rules:
  - role: storage
    when: {product: "fs-1*", rack: "r0[12]", units: "20-42"}
  - role: compute
    when: {manufacturer: "fake *"}
"""


def at(rack: str | None, unit: int | None, product: str = "FS-1000") -> Position:
    return Position(rack, unit, "generic", {"manufacturer": "Fake Systems", "product": product})


def test_first_matching_rule_wins(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    rules = RoleRules.load(path)
    assert rules.role_for(at("r01", 30)).role == "storage"  # type: ignore[union-attr]
    assert rules.role_for(at("r01", 10)).role == "compute"  # type: ignore[union-attr]
    assert rules.role_for(at("r03", 30)).role == "compute"  # type: ignore[union-attr]
    assert rules.role_for(at(None, None)).role == "compute"  # type: ignore[union-attr]
    other = Position("r01", 30, None, {"manufacturer": "Dell Inc.", "product": "R640"})
    assert rules.role_for(other) is None
    assert RoleRules.load(None).role_for(at("r01", 30)) is None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("rules: [{role: storage, when: {units: '42-20'}}]", "rules.0.when.units"),
        ("rules: [{role: storage, when: {colour: red}}]", "rules.0.when.colour"),
        ("rules: [{when: {rack: r01}}]", "rules.0.role"),
        ("rules: [{role: 'Not A Slug!'}]", "rules.0.role"),
        ("rules: {role: x}", "rules"),
        ("rules: [unclosed", "cannot read"),
    ],
)
def test_a_broken_rules_file_says_where(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RoleRulesError) as failure:
        RoleRules.load(path)
    assert str(path) in str(failure.value)
    assert where in str(failure.value)


def test_inspected_nodes_get_their_role_and_are_provisioned(
    tmp_path: Path, database_url: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    fleet = FakeFleet()
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, reconciler=False, role_rules=rules
    )
    app = create_app(settings, driver_factory=fleet.driver)
    with TestClient(app) as client:
        headers = admin_headers(app)
        for role in ("storage", "compute"):
            body = {"name": role, "default_image": "rocky-9"}
            assert client.post("/api/v1/roles", json=body, headers=headers).status_code == 201
        rows = "\n".join(
            f"n{u},r01,{u},192.0.2.{u},623,admin,{PASSWORD},52:54:00:00:97:{u:02x},"
            for u in (10, 30)
        )
        for u in (10, 30):
            fleet.add(f"192.0.2.{u}", users={"admin": PASSWORD})
        manifest = "name,rack,u,bmc_address,bmc_port,bmc_username,bmc_password,macs,role\n" + rows
        imported = client.post(
            "/api/v1/racks/import",
            content=manifest,
            headers={**headers, "Content-Type": "text/csv"},
        )
        assert imported.status_code == 201, imported.text
        tick(client)  # inspection, and the rules
        assert node(client, headers, "n30")["role"] == "storage"
        assert node(client, headers, "n10")["role"] == "compute"
        tick(client)  # the racking flow takes them on
        assert node(client, headers, "n30")["state"] == "provisioning"
        assert node(client, headers, "n10")["state"] == "provisioning"
