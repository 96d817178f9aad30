"""The control channel of a process that serves Redfish BMCs (`lab.control`): a node
with both BMCs is described as the IPMI side describes it, plus its Redfish BMC; a node
with a Redfish BMC only is described from that BMC. Its fault is the node's: both BMCs
of a node share one `lab.faults.FaultGate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab import faults
from lab.control import ControlServer
from lab.redfish.service import RedfishBmc

if TYPE_CHECKING:
    from lab.bmc import LabBmc


class RedfishControl(ControlServer):
    def __init__(self, directory: Path, ipmi: dict[str, LabBmc], redfish: list[RedfishBmc]):
        super().__init__(directory, ipmi)
        self._ipmi = ipmi
        self._redfish = {bmc.machine.name: bmc for bmc in redfish}

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "fault" and str(request.get("node", "")).lower() not in self._ipmi:
            bmc = self._redfish.get(str(request["node"]).lower())
            if bmc is None:
                return {"unknown": request["node"]}
            bmc.gate.fault = faults.parse_fault(str(request["fault"]))
            return {"node": bmc.machine.name, "fault": str(bmc.gate.fault)}
        answer = super().answer(request)
        if op == "status":
            nodes = answer["nodes"]
            for name, bmc in self._redfish.items():
                nodes.setdefault(name, _machine(bmc))["redfish"] = _redfish(bmc)
        return answer


def _redfish(bmc: RedfishBmc) -> dict[str, Any]:
    return {
        "port": bmc.port,
        "dialect": bmc.dialect.value,
        "sessions": len(bmc.sessions),
        "tasks": len(bmc.tasks.ids()),
    }


def _machine(bmc: RedfishBmc) -> dict[str, Any]:
    """What `lab.control` tells of a node's machine, for a node without an IPMI BMC."""
    machine = bmc.machine
    return {
        "port": bmc.port,
        "power": machine.power_state(),
        "boot": {
            "valid": machine.boot.valid,
            "persistent": machine.boot.persistent,
            "uefi": machine.boot.uefi,
            "device": machine.boot.device,
        },
        "boots": machine.boots[-20:],
        "boot_mode": machine.boot_mode,
        "state": machine.progress.state,
        "last_hop": machine.progress.last_hop,
        "installed": machine.installed.image if machine.installed else None,
        "deployment": machine.installed.deployment if machine.installed else None,
        "fault": str(bmc.gate.fault),
        "sessions": len(bmc.sessions),
    }
