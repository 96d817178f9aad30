"""What `lab.rack` needs to serve a node's Redfish BMC: the lab's certificate, made
once per lab and left where clients find it, and the BMC of a planned node."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from lab import faults
from lab.machine import Machine
from lab.redfish.service import RedfishBmc
from lab.redfish.tls import make_certificate, write_certificate

if TYPE_CHECKING:
    from lab.rack import LabSettings, NodePlan

# In the control directory: the certificate for clients to trust (curl --cacert) or pin.
CERTIFICATE_FILE = "redfish-cert.pem"


def with_certificate(settings: LabSettings, address: str) -> LabSettings:
    """``settings`` with the lab's certificate, made now if its BMCs serve HTTPS and it
    has none yet."""
    if settings.protocol == "ipmi" or settings.redfish_http or settings.certificate is not None:
        return settings
    certificate = make_certificate(address)
    write_certificate(certificate, settings.control_dir / CERTIFICATE_FILE)
    return dataclasses.replace(settings, certificate=certificate)


def redfish_bmc(
    machine: Machine, plan: NodePlan, gate: faults.FaultGate, settings: LabSettings
) -> RedfishBmc:
    """The Redfish BMC of ``plan``'s machine, on TCP port ``plan.port`` (the same number
    as its IPMI BMC's UDP port)."""
    return RedfishBmc(
        machine,
        plan.username,
        plan.password,
        gate,
        address=plan.address,
        port=plan.port,
        dialect=plan.dialect,
        session_timeout=settings.session_timeout,
    )
