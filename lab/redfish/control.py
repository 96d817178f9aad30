"""The control channel of a process that serves Redfish BMCs (`lab.control`): a node is
described from its IPMI BMC where it has one, else from its Redfish BMC (both front the
same machine), plus what its Redfish BMC holds. Its fault is the node's: both BMCs of a
node share one `lab.faults.FaultGate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.control import ControlServer
from lab.redfish.service import RedfishBmc

if TYPE_CHECKING:
    from lab.bmc import LabBmc


class RedfishControl(ControlServer):
    def __init__(self, directory: Path, ipmi: dict[str, LabBmc], redfish: list[RedfishBmc]):
        self._redfish = {bmc.machine.name: bmc for bmc in redfish}
        super().__init__(directory, {**self._redfish, **ipmi})

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = super().answer(request)
        if request.get("op") == "status":
            for name, bmc in self._redfish.items():
                answer["nodes"][name]["redfish"] = {
                    "port": bmc.port,
                    "dialect": bmc.dialect.value,
                    "sessions": len(bmc.sessions),
                    "tasks": len(bmc.tasks.ids()),
                }
        return answer
