"""A lab rack whose nodes have both BMCs (`lab.rack` with protocol ``both``): what one
protocol does to a machine, the other sees; faults are the node's; the manifest and the
control channel tell of the Redfish side."""

from __future__ import annotations

import csv
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lab import control, faults, rack
from lab.redfish.serving import CERTIFICATE_FILE
from tests.lab.conftest import Lab, Node, ipmitool

PASSWORD = "lab-secret"


@dataclass
class RunningLab:
    plans: list[rack.NodePlan]
    control_dir: Path
    client: httpx.Client

    def node(self, index: int) -> Node:
        plan = self.plans[index]
        return Node(plan.name, plan.port, plan.username, plan.password)

    def url(self, index: int, path: str = "") -> str:
        return f"https://127.0.0.1:{self.plans[index].port}{path}"

    def system(self, index: int) -> dict[str, Any]:
        plan = self.plans[index]
        system_id = "System.Embedded.1" if plan.dialect == "dell" else "system"
        answer = self.client.get(self.url(index, f"/redfish/v1/Systems/{system_id}"))
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    # In a process of its own, as `provisioner-lab up` always runs: its IPMI BMCs share
    # pyghmi's I/O thread with any pyghmi client in the process, and one in this
    # process once left the next module's first login waiting 300 s.
    dell = {"lab-r01-u02": "dell"}
    running = Lab(
        tmp_path_factory.mktemp("redfish-lab"),
        4,
        *("--password", PASSWORD, "--protocol", "both", "--redfish-dialect", "lab-r01-u02=dell"),
    )
    # The lab's plans, made again from what it was given (planning is deterministic).
    plans = rack.plan_rack(4, seed=7, base_port=running.base_port, password=PASSWORD, dialects=dell)
    assert [(p.name, p.port) for p in plans] == [(n.name, n.port) for n in running.nodes]
    trusted = ssl.create_default_context(cafile=str(running.control_dir / CERTIFICATE_FILE))
    client = httpx.Client(verify=trusted, auth=("admin", PASSWORD), timeout=10)
    yield RunningLab(plans, running.control_dir, client)
    client.close()
    assert running.stop() == 0, "\n".join(running.output)


def test_power_through_redfish_is_seen_over_ipmi(both: RunningLab) -> None:
    reset = "/redfish/v1/Systems/system/Actions/ComputerSystem.Reset"
    answer = both.client.post(both.url(0, reset), json={"ResetType": "On"})
    assert answer.status_code == 204
    assert "Chassis Power is on" in ipmitool(both.node(0), "power", "status").stdout
    ipmitool(both.node(0), "power", "off")
    assert both.system(0)["PowerState"] == "Off"


def test_boot_device_over_ipmi_is_the_redfish_boot_override(both: RunningLab) -> None:
    ipmitool(both.node(1), "chassis", "bootdev", "pxe", "options=efiboot")
    boot = both.system(1)["Boot"]
    assert boot["BootSourceOverrideTarget"] == "Pxe"
    assert boot["BootSourceOverrideEnabled"] == "Once"
    assert boot["BootSourceOverrideMode"] == "UEFI"
    # The Dell-like node wants the ETag; then IPMI reads what Redfish set.
    path = "/redfish/v1/Systems/System.Embedded.1"
    etag = both.client.get(both.url(1, path)).headers["ETag"]
    patch = {"Boot": {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Continuous"}}
    answer = both.client.patch(both.url(1, path), json=patch, headers={"If-Match": etag})
    assert answer.status_code == 200, answer.text
    flags = ipmitool(both.node(1), "chassis", "bootparam", "get", "5").stdout
    assert "Force Boot from default Hard-Drive" in flags
    assert "Options apply to all future boots" in flags


def test_a_nodes_fault_is_its_redfish_bmcs_too(both: RunningLab) -> None:
    node = both.node(2)
    control.set_fault(both.control_dir, node.name, faults.parse_fault("busy"))
    busy = both.client.get(both.url(2, "/redfish/v1/Systems/system"))
    assert busy.status_code == 503
    # IPMI has no such answer; that BMC keeps answering.
    assert ipmitool(node, "power", "status").returncode == 0
    control.set_fault(both.control_dir, node.name, faults.parse_fault("wrong-password"))
    assert both.client.get(both.url(2, "/redfish/v1/Systems/system")).status_code == 401
    control.set_fault(both.control_dir, node.name, faults.NO_FAULT)
    assert both.system(2)["PowerState"] == "Off"


def test_status_tells_of_the_redfish_bmc(both: RunningLab) -> None:
    status = control.status(both.control_dir)
    assert status["lab-r01-u02"]["redfish"]["dialect"] == "dell"
    assert status["lab-r01-u01"]["redfish"]["port"] == both.plans[0].port
    assert status["lab-r01-u01"]["port"] == both.plans[0].port  # the IPMI BMC's UDP port


def test_manifest_names_the_redfish_driver(both: RunningLab, tmp_path: Path) -> None:
    manifest = tmp_path / "rack.csv"
    rack.write_manifest(manifest, both.plans, driver="redfish")
    rows = list(csv.DictReader(manifest.open()))
    assert [row["bmc_driver"] for row in rows] == ["redfish"] * 4
    assert [int(row["bmc_port"]) for row in rows] == [p.port for p in both.plans]
    plain = tmp_path / "ipmi.csv"
    rack.write_manifest(plain, both.plans)
    assert "bmc_driver" not in plain.read_text().splitlines()[0]


# --- provisioner-lab up --protocol redfish ------------------------------------------


@pytest.fixture(scope="module")
def redfish_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    running = Lab(
        tmp_path_factory.mktemp("redfish-cli"),
        3,
        "--password",
        PASSWORD,
        "--protocol",
        "redfish",
        "--redfish-dialect",
        "hpe",
        "--redfish-dialect",
        "lab-r01-u02=supermicro",
    )
    yield running
    code = running.stop()
    assert code == 0, f"the lab exited with {code}:\n" + "\n".join(running.output)
    assert running.output[-1] == "lab stopped", "\n".join(running.output)


def test_up_serves_redfish_bmcs_only(redfish_lab: Lab) -> None:
    assert "lab up: 3/3 BMCs answering" in redfish_lab.summary
    rows = list(csv.DictReader(redfish_lab.manifest.open()))
    assert [row["bmc_driver"] for row in rows] == ["redfish"] * 3
    trusted = ssl.create_default_context(cafile=str(redfish_lab.control_dir / CERTIFICATE_FILE))
    first, second, third = redfish_lab.nodes
    with httpx.Client(verify=trusted, auth=("admin", PASSWORD), timeout=10) as client:
        reset = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        url = f"https://127.0.0.1:{first.port}{reset}"
        assert client.post(url, json={"ResetType": "On"}).status_code == 202  # HPE-like
        system = f"https://127.0.0.1:{second.port}/redfish/v1/Systems/1"
        assert client.get(system).status_code == 401  # Supermicro-like: sessions only
        redfish_lab.fault(third, "busy")
        busy = client.get(f"https://127.0.0.1:{third.port}/redfish/v1/Systems/1")
        assert busy.status_code == 503
    status = redfish_lab.status(second)
    assert status["redfish"] == {
        "port": second.port,
        "dialect": "supermicro",
        "sessions": 0,
        "tasks": 0,
    }
    # No IPMI BMC listens on the UDP ports.
    assert rack.probe("127.0.0.1", [n.port for n in redfish_lab.nodes], timeout=1.0) == set()
