"""The rack: its manifest (which the service must accept), its reproducibility, the FRU
image, and serving a whole rack from one process or many."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
from pyghmi.ipmi.fru import FRU

from lab import control
from lab.faults import Kind, parse_fault
from lab.machine import build_machine
from lab.rack import plan_rack, write_manifest
from provisioner.manifest import parse_manifest
from tests.lab.conftest import Lab, ipmitool


@pytest.mark.parametrize("suffix", [".csv", ".yaml"])
def test_manifest_is_accepted_by_the_service(tmp_path: Path, suffix: str) -> None:
    plans = plan_rack(50, seed=3, base_port=7000)
    path = tmp_path / f"rack{suffix}"
    write_manifest(path, plans)
    media_type = "text/csv" if suffix == ".csv" else "application/yaml"
    nodes = parse_manifest(path.read_bytes(), media_type)
    assert [n.name for n in nodes[:2]] == ["lab-r01-u01", "lab-r01-u02"]
    assert (nodes[42].name, nodes[42].rack, nodes[42].rack_unit) == ("lab-r02-u01", "lab-r02", 1)
    assert nodes[49].bmc.port == 7049
    assert nodes[0].bmc.address == "127.0.0.1"
    assert nodes[0].nics[0].pxe
    assert all(nic.mac.startswith("52:54:00:") for node in nodes for nic in node.nics)


def test_seed_makes_the_rack_reproducible() -> None:
    first, again, other = (plan_rack(5, seed=s, base_port=7000) for s in (1, 1, 2))
    assert first == again
    assert [p.macs for p in first] != [p.macs for p in other]
    assert [p.password for p in first] != [p.password for p in other]
    assert len({p.password for p in first}) == 5  # one password per node by default
    assert {p.password for p in plan_rack(5, seed=1, base_port=7000, password="pw")} == {"pw"}
    assert build_machine("a", 0, 1, []).inventory == build_machine("a", 0, 1, []).inventory
    assert build_machine("a", 0, 1, []).uuid != build_machine("a", 0, 2, []).uuid


def test_faults_must_name_nodes_of_the_lab() -> None:
    with pytest.raises(ValueError, match="lab-r09-u01"):
        plan_rack(3, seed=1, base_port=7000, node_faults={"lab-r09-u01": parse_fault("slow:1")})
    plans = plan_rack(
        3, seed=1, base_port=7000, node_faults={"lab-r01-u02": parse_fault("drop:.2")}
    )
    assert plans[1].fault.kind is Kind.DROP


def test_fru_image_is_valid() -> None:
    image = build_machine("lab-r01-u01", 0, 1, []).fru_image()
    header = image[:8]
    assert sum(header) % 256 == 0
    for offset in header[2:5]:  # chassis, board and product areas
        start = offset * 8
        length = image[start + 1] * 8
        assert sum(image[start : start + length]) % 256 == 0
    info = FRU(rawdata=image).info
    assert info["Manufacturer"] == "Provisioner Lab"
    assert info["Asset Number"] == "LAB-00001"


def test_a_rack_of_48_in_one_process_answers_ipmitool(tmp_path: Path) -> None:
    lab = Lab(tmp_path, 48, "--password", "pw")
    try:
        assert lab.summary.startswith("lab up: 48/48 BMCs answering")
        assert "1 process(es)" in lab.summary
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outputs = list(pool.map(lambda n: ipmitool(n, "power", "status").stdout, lab.nodes))
        assert outputs == ["Chassis Power is off\n"] * 48
    finally:
        assert lab.stop() == 0


def test_many_processes_share_one_control_channel(tmp_path: Path) -> None:
    lab = Lab(tmp_path, 6, "--per-process", "3", "--power", "on")
    try:
        assert lab.summary.startswith("lab up: 6/6 BMCs answering")
        assert "2 process(es)" in lab.summary
        assert len(list(lab.control_dir.glob("lab-*.sock"))) == 2
        last = lab.nodes[-1]
        lab.fault(last, "wrong-password")
        status = control.status(lab.control_dir)
        assert len(status) == 6
        assert status[last.name]["fault"] == "wrong-password"
        assert status[last.name]["power"] == "on"
        assert ipmitool(last, "power", "status", check=False).returncode != 0
        assert ipmitool(lab.nodes[0], "power", "status").stdout == "Chassis Power is on\n"
    finally:
        assert lab.stop() == 0
    assert list(lab.control_dir.glob("lab-*.sock")) == []
