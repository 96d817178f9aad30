"""The Ansible dynamic inventory, read by the real `ansible-inventory`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from fastapi.testclient import TestClient

from provisioner.bmc.fake import FakeFleet
from tests.handoff.conftest import BIN, DOMAIN, Live, cli, install


def _rack(client: TestClient, fleet: FakeFleet, admin: dict[str, str]) -> None:
    for name in ("compute", "db-server"):
        client.post("/api/v1/roles", json={"name": name}, headers=admin)
    client.patch("/api/v1/roles/compute", json={"parameters": {"tier": "gold"}}, headers=admin)
    install(client, fleet, "r01-u02", "compute", unit=2, state="active")
    install(client, fleet, "r02.b-u01", "db-server", rack="r02.b", unit=1)
    install(client, fleet, "r01-u03", "compute", unit=3, state="ready")  # not installed: not listed
    install(client, fleet, "loose", None, rack=None)
    # Last: a node of an immediate role is provisioned only until the reconciler's next
    # tick. Its machine boots from 10.0.0.11.
    install(client, fleet, "r01-u01", "compute", unit=1, boot_ip="10.0.0.11")


def _check(inventory: dict[str, object]) -> None:
    assert inventory["role_compute"] == {"hosts": ["r01-u01", "r01-u02"], "vars": {"tier": "gold"}}
    assert inventory["role_db_server"] == {"hosts": ["r02.b-u01"]}
    assert inventory["rack_r01"] == {"hosts": ["r01-u01", "r01-u02"]}
    assert inventory["rack_r02_b"] == {"hosts": ["r02.b-u01"]}
    assert inventory["ungrouped"] == {"hosts": ["loose"]}
    hostvars = inventory["_meta"]["hostvars"]  # type: ignore[index]
    assert set(hostvars) == {"r01-u01", "r01-u02", "r02.b-u01", "loose"}
    assert hostvars["r01-u01"] == {
        "ansible_host": f"r01-u01.{DOMAIN}",
        "role": "compute",
        "rack": "r01",
        "rack_unit": 1,
        "state": "provisioned",
        "image": "rocky-9",
        "hardware_profile": "lab-small",
        "provisioner_boot_ip": "10.0.0.11",
    }
    assert hostvars["r01-u02"]["state"] == "active"


def test_inventory_api(
    client: TestClient, fleet: FakeFleet, admin: dict[str, str], viewer: dict[str, str]
) -> None:
    _rack(client, fleet, admin)
    inventory = client.get("/api/v1/handoff/ansible", headers=viewer).json()
    _check(inventory)
    assert set(inventory["all"]["children"]) == {
        "role_compute",
        "role_db_server",
        "rack_r01",
        "rack_r02_b",
        "ungrouped",
    }
    assert client.get("/api/v1/handoff/ansible").status_code == 401


def test_command_and_the_real_ansible_inventory(
    live: Live, client: TestClient, fleet: FakeFleet, admin: dict[str, str], tmp_path: Path
) -> None:
    _rack(client, fleet, admin)
    _check(json.loads(cli(live, "ansible-inventory", "--list", token=live.viewer).stdout))
    host = cli(live, "ansible-inventory", "--host", "r02.b-u01", token=live.viewer)
    assert json.loads(host.stdout)["role"] == "db-server"
    unknown = cli(live, "ansible-inventory", "--host", "nosuch", token=live.viewer)
    assert unknown.returncode == 0
    assert json.loads(unknown.stdout) == {}
    assert cli(live, "ansible-inventory", token=live.viewer).returncode != 0

    script = tmp_path / "provisioner-inventory"
    script.write_text(f'#!/bin/sh\nexec "{BIN / "provisioner"}" ansible-inventory "$@"\n')
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "ANSIBLE_"))}
    env |= {
        "PROVISIONER_URL": live.url,
        "PROVISIONER_TOKEN": live.viewer,
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
    }
    result = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(script), "--list"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    seen = json.loads(result.stdout)
    assert sorted(seen["role_compute"]["hosts"]) == ["r01-u01", "r01-u02"]
    assert seen["rack_r02_b"]["hosts"] == ["r02.b-u01"]
    assert set(seen["all"]["children"]) >= {"role_compute", "rack_r01", "ungrouped"}
    assert seen["_meta"]["hostvars"]["r01-u01"]["ansible_host"] == f"r01-u01.{DOMAIN}"
    assert seen["_meta"]["hostvars"]["r01-u01"]["tier"] == "gold"  # the role group's vars
