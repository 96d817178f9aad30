"""The lab's Redfish BMCs (`lab.redfish`) over real HTTPS on 127.0.0.1, through httpx:
every resource reachable from the service root and schema-shaped, inventory matching
the machine's FRU, power, the boot override seen on the machine's IPMI boot flags,
sessions, ETags, each dialect's peculiarity and each fault, ending within a bound."""

from __future__ import annotations

import re
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from lab import faults
from lab.machine import BootDevice, BootFlags, Machine, SensorSpec
from lab.redfish.dialects import TASK_SECONDS, Dialect
from lab.redfish.service import RedfishBmc
from lab.redfish.tls import write_certificate
from tests.lab_bmcs import PASSWORD, USER, LabBmcs, lab_bmcs

_TYPE = re.compile(r"^#(\w+)\.(v\d+_\d+_\d+\.)?\w+$")


@dataclass
class Bmc:
    bmc: RedfishBmc
    url: str
    client: httpx.Client
    context: ssl.SSLContext  # trusts the lab's certificate

    @property
    def machine(self) -> Machine:
        return self.bmc.machine

    @property
    def system(self) -> str:
        return f"/redfish/v1/Systems/{self.bmc.traits.system_id}"

    def reset(self, reset_type: str) -> httpx.Response:
        return self.client.post(
            f"{self.system}/Actions/ComputerSystem.Reset", json={"ResetType": reset_type}
        )


@dataclass
class Served:
    bmcs: LabBmcs
    ca_file: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def add(
        self, dialect: Dialect = Dialect.GENERIC, session_timeout: float = 60.0, auth: bool = True
    ) -> Bmc:
        # Two NICs: every one of them is listed.
        bmc = self.bmcs.add_redfish(dialect, session_timeout=session_timeout, nics=2)
        url = f"https://127.0.0.1:{bmc.port}"
        context = self.context()
        client = httpx.Client(
            base_url=url, verify=context, auth=(USER, PASSWORD) if auth else None, timeout=10
        )
        return Bmc(bmc, url, client, context)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ca_file = tmp_path_factory.mktemp("redfish") / "cert.pem"
    with lab_bmcs(ipmi=False) as bmcs:
        write_certificate(bmcs.certificate, ca_file)
        yield Served(bmcs, ca_file)


@pytest.fixture
def new(served: Served) -> Callable[..., Bmc]:
    return served.add


# --- resources --------------------------------------------------------------------


@pytest.mark.parametrize("dialect", list(Dialect))
def test_every_resource_is_reachable_and_schema_shaped(
    new: Callable[..., Bmc], dialect: Dialect
) -> None:
    node = new(dialect, auth=dialect is not Dialect.SUPERMICRO)
    if dialect is Dialect.SUPERMICRO:
        node.client.headers["X-Auth-Token"] = _login(node).headers["X-Auth-Token"]
    seen: dict[str, dict[str, object]] = {}
    todo = ["/redfish/v1/"]
    while todo:
        path = todo.pop()
        answer = node.client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["OData-Version"] == "4.0"
        assert answer.headers["ETag"].startswith('"')
        payload = answer.json()
        assert payload["@odata.id"] == path, path
        assert _TYPE.match(payload["@odata.type"]), payload["@odata.type"]
        assert payload["@odata.context"].startswith("/redfish/v1/$metadata#")
        assert "Name" in payload
        if "Collection" not in payload["@odata.type"]:
            assert "Id" in payload
            assert re.search(r"\.v\d+_\d+_\d+\.", payload["@odata.type"])
        else:
            assert payload["Members@odata.count"] == len(payload["Members"])
        seen[path] = payload
        todo += [link for link in _links(payload) if link not in seen and link not in todo]
    system = seen[node.system]
    inventory = node.machine.inventory
    assert system["Manufacturer"] == inventory.vendor == "Provisioner Lab"
    assert system["Model"] == inventory.product
    assert system["SerialNumber"] == inventory.serial
    assert system["SKU"] == inventory.part_number
    assert system["UUID"] == str(node.machine.uuid)
    assert system["BiosVersion"]
    macs = [p["MACAddress"] for p in seen.values() if p.get("PermanentMACAddress")]
    assert set(node.machine.macs) <= set(macs)
    drives = [p for p in seen.values() if str(p["@odata.type"]).startswith("#Drive.")]
    assert {d["MediaType"] for d in drives} == {"SSD", "HDD"}
    assert all(int(d["CapacityBytes"]) > 4 * 10**9 and d["SerialNumber"] for d in drives)  # type: ignore[call-overload]
    firmware = [p for p in seen.values() if str(p["@odata.type"]).startswith("#SoftwareInventory.")]
    assert {f["Id"] for f in firmware} == {"BIOS", "BMC"}
    media = [p for p in seen if "/VirtualMedia/" in p]
    assert bool(media) == (dialect is Dialect.DELL)


def _links(value: object) -> list[str]:
    if isinstance(value, dict):
        found = [] if "@odata.id" not in value or len(value) != 1 else [value["@odata.id"]]
        for key, item in value.items():
            if key != "@odata.id":
                found += _links(item)
        return found
    if isinstance(value, list):
        return [link for item in value for link in _links(item)]
    return []


def test_metadata_and_service_document_need_no_login(new: Callable[..., Bmc]) -> None:
    node = new(Dialect.SUPERMICRO, auth=False)
    metadata = node.client.get("/redfish/v1/$metadata")
    assert metadata.status_code == 200
    assert metadata.headers["Content-Type"].startswith("application/xml")
    edmx = "{http://docs.oasis-open.org/odata/ns/edmx}"
    root = ET.fromstring(metadata.text)  # noqa: S314 - the lab's own document
    included = {i.get("Namespace") for i in root.iter(f"{edmx}Include")}
    assert {"ComputerSystem.v1_13_0", "ServiceRoot.v1_5_0", "Task.v1_5_0"} <= included
    document = node.client.get("/redfish/v1/odata").json()
    assert {"name": "Systems", "kind": "Singleton", "url": "/redfish/v1/Systems"} in document[
        "value"
    ]
    assert node.client.get("/redfish/v1").json()["Links"]["Sessions"]["@odata.id"]
    assert node.client.get("/redfish").json() == {"v1": "/redfish/v1/"}


# --- sensors ----------------------------------------------------------------------

_LEGACY = (Dialect.GENERIC, Dialect.DELL, Dialect.SUPERMICRO)


def _chassis(node: Bmc) -> dict[str, Any]:
    answer: dict[str, Any] = node.client.get(
        f"/redfish/v1/Chassis/{node.bmc.traits.chassis_id}"
    ).json()
    return answer


def _by_name(node: Bmc) -> dict[str, SensorSpec]:
    return {s.name: s for s in node.machine.sensors}


@pytest.mark.parametrize("dialect", _LEGACY)
def test_legacy_thermal_and_power_are_the_machines_sensors(
    new: Callable[..., Bmc], dialect: Dialect
) -> None:
    node = new(dialect, auth=dialect is not Dialect.SUPERMICRO)
    if dialect is Dialect.SUPERMICRO:
        node.client.headers["X-Auth-Token"] = _login(node).headers["X-Auth-Token"]
    chassis = _chassis(node)
    assert not {"Sensors", "ThermalSubsystem", "PowerSubsystem"} & set(chassis)
    thermal_path = chassis["Thermal"]["@odata.id"]
    power_path = chassis["Power"]["@odata.id"]
    assert thermal_path == f"{chassis['@odata.id']}/Thermal"
    specs = _by_name(node)
    for powered in (False, True):
        node.machine.power_on = powered
        thermal = node.client.get(thermal_path).json()
        power = node.client.get(power_path).json()
        assert thermal["@odata.type"] == "#Thermal.v1_7_0.Thermal"
        assert power["@odata.type"] == "#Power.v1_7_0.Power"
        assert (thermal["@odata.id"], power["@odata.id"]) == (thermal_path, power_path)
        arrays = [
            ("Temperatures", thermal, "ReadingCelsius", 0x01),
            ("Fans", thermal, "Reading", 0x04),
            ("Voltages", power, "ReadingVolts", 0x02),
        ]
        for name, payload, key, sensor_type in arrays:
            items = payload[name]
            wanted = [s.name for s in node.machine.sensors if s.sensor_type == sensor_type]
            assert [i["Name"] for i in items] == wanted
            for index, item in enumerate(items):
                spec = specs[item["Name"]]
                assert item["@odata.id"] == f"{payload['@odata.id']}#/{name}/{index}"
                assert item["MemberId"] == str(index)
                value = node.machine.reading(spec)
                if value is None:
                    assert item[key] is None
                    assert item["Status"] == {"State": "StandbyOffline", "Health": "OK"}
                else:
                    assert item[key] == pytest.approx(value)
                    assert item["Status"] == {"State": "Enabled", "Health": "OK"}
                assert item["UpperThresholdCritical"] == spec.upper_critical
        assert thermal["Fans"][0]["ReadingUnits"] == "RPM"
        unavailable = [i for i in thermal["Temperatures"] if i["ReadingCelsius"] is None]
        assert bool(unavailable) is not powered  # the CPU has no standby power


def test_hpe_serves_a_sensors_collection_and_subsystems(new: Callable[..., Bmc]) -> None:
    node = new(Dialect.HPE)
    node.machine.power_on = True
    chassis = _chassis(node)
    assert not {"Thermal", "Power"} & set(chassis)
    base = chassis["@odata.id"]
    assert node.client.get(f"{base}/Thermal").status_code == 404
    collection = node.client.get(chassis["Sensors"]["@odata.id"]).json()
    assert collection["@odata.id"] == f"{base}/Sensors"
    assert collection["@odata.type"] == "#SensorCollection.SensorCollection"
    assert collection["Members@odata.count"] == len(node.machine.sensors)
    units = {0x01: ("Temperature", "Cel"), 0x02: ("Voltage", "V"), 0x04: ("Rotational", "RPM")}
    specs = _by_name(node)
    for member in collection["Members"]:
        sensor = node.client.get(member["@odata.id"]).json()
        assert sensor["@odata.id"] == member["@odata.id"]
        assert sensor["@odata.type"] == "#Sensor.v1_2_0.Sensor"
        spec = specs[sensor["Name"]]
        assert (sensor["ReadingType"], sensor["ReadingUnits"]) == units[spec.sensor_type]
        assert sensor["Reading"] == pytest.approx(node.machine.reading(spec))
        assert sensor["Thresholds"]["UpperCritical"]["Reading"] == spec.upper_critical
        assert sensor["Status"] == {"State": "Enabled", "Health": "OK"}
    subsystem = node.client.get(chassis["ThermalSubsystem"]["@odata.id"]).json()
    assert subsystem["@odata.type"] == "#ThermalSubsystem.v1_0_0.ThermalSubsystem"
    fans = node.client.get(subsystem["Fans"]["@odata.id"]).json()
    fan = node.client.get(fans["Members"][0]["@odata.id"]).json()
    assert fan["@odata.type"] == "#Fan.v1_0_0.Fan"
    source = node.client.get(fan["SpeedPercent"]["DataSourceUri"]).json()
    assert source["ReadingType"] == "Rotational"
    assert source["Reading"] == fan["SpeedPercent"]["SpeedRPM"]
    power = node.client.get(chassis["PowerSubsystem"]["@odata.id"]).json()
    assert power["@odata.type"] == "#PowerSubsystem.v1_0_0.PowerSubsystem"
    metadata = node.client.get("/redfish/v1/$metadata").text
    for namespace in ("Sensor.v1_2_0", "SensorCollection", "ThermalSubsystem.v1_0_0"):
        assert f'Namespace="{namespace}"' in metadata


def test_expand_where_advertised_and_501_elsewhere(new: Callable[..., Bmc]) -> None:
    hpe = new(Dialect.HPE)
    features = hpe.client.get("/redfish/v1/").json()["ProtocolFeaturesSupported"]
    assert features["ExpandQuery"]["NoLinks"] is True
    assert features["ExpandQuery"]["MaxLevels"] == 1
    sensors = _chassis(hpe)["Sensors"]["@odata.id"]
    plain = hpe.client.get(sensors).json()
    expanded = hpe.client.get(sensors, params={"$expand": ".($levels=1)"}).json()
    assert [m["@odata.id"] for m in expanded["Members"]] == [
        m["@odata.id"] for m in plain["Members"]
    ]
    assert expanded["Members"] == [hpe.client.get(m["@odata.id"]).json() for m in plain["Members"]]
    chassis = hpe.client.get(_chassis(hpe)["@odata.id"], params={"$expand": "."}).json()
    assert chassis["Sensors"]["Members@odata.count"] == len(hpe.machine.sensors)
    assert list(chassis["Links"]["ManagedBy"][0]) == ["@odata.id"]  # "." leaves Links
    wrong = hpe.client.get(sensors, params={"$expand": ".($levels=3)"})
    assert wrong.status_code == 400
    generic = new()
    assert "ProtocolFeaturesSupported" not in generic.client.get("/redfish/v1/").json()
    refused = generic.client.get(_chassis(generic)["@odata.id"], params={"$expand": "."})
    assert refused.status_code == 501
    assert refused.json()["error"]["code"].endswith("QueryNotSupported")


@pytest.mark.parametrize(
    ("inlet", "health"), [(37, "OK"), (38, "Warning"), (42, "Critical"), (8, "Warning")]
)
@pytest.mark.parametrize("dialect", [Dialect.GENERIC, Dialect.HPE])
def test_sensor_health_follows_the_ipmi_thresholds(
    new: Callable[..., Bmc], dialect: Dialect, inlet: float, health: str
) -> None:
    node = new(dialect)
    sensors = node.machine.sensors
    sensors[0] = replace(sensors[0], reading_on=inlet, reading_off=inlet)
    chassis = _chassis(node)
    if dialect is Dialect.HPE:
        path = f"{chassis['Sensors']['@odata.id']}/{sensors[0].name.replace(' ', '_')}"
        item = node.client.get(path).json()
    else:
        item = node.client.get(chassis["Thermal"]["@odata.id"]).json()["Temperatures"][0]
    assert item["Name"] == "Inlet Temp"
    assert item["Status"]["Health"] == health


# --- power and boot ---------------------------------------------------------------


def test_power_actions_drive_the_machine(new: Callable[..., Bmc]) -> None:
    node = new()
    assert node.reset("ForceRestart").status_code == 409  # off: nothing to restart
    assert node.reset("On").status_code == 204
    assert node.machine.power_on
    assert node.client.get(node.system).json()["PowerState"] == "On"
    assert node.reset("On").status_code == 204  # already on: nothing to do
    for reset_type in ("ForceRestart", "PowerCycle"):
        assert node.reset(reset_type).status_code == 204
        assert node.machine.power_on
    assert node.machine.boots == ["disk", "disk", "disk"]
    assert node.reset("GracefulShutdown").status_code == 204
    assert not node.machine.power_on
    node.reset("On")
    assert node.reset("ForceOff").status_code == 204
    assert node.client.get(node.system).json()["PowerState"] == "Off"
    bad = node.reset("Nmi")
    assert bad.status_code == 400
    assert bad.json()["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith(
        "ActionParameterValueNotInList"
    )
    missing = node.client.post(f"{node.system}/Actions/ComputerSystem.Reset", json={})
    assert missing.status_code == 400


@pytest.mark.parametrize(
    ("enabled", "target", "mode", "flags"),
    [
        ("Once", "Pxe", "UEFI", BootFlags(True, False, True, BootDevice.PXE)),
        ("Continuous", "Pxe", "Legacy", BootFlags(True, True, False, BootDevice.PXE)),
        ("Continuous", "Hdd", "UEFI", BootFlags(True, True, True, BootDevice.DISK)),
        ("Once", "Cd", "Legacy", BootFlags(True, False, False, BootDevice.CDROM)),
    ],
)
def test_boot_override_is_the_machines_boot_flags(
    new: Callable[..., Bmc], enabled: str, target: str, mode: str, flags: BootFlags
) -> None:
    node = new()
    boot = {
        "BootSourceOverrideEnabled": enabled,
        "BootSourceOverrideTarget": target,
        "BootSourceOverrideMode": mode,
    }
    answer = node.client.patch(node.system, json={"Boot": boot})
    assert answer.status_code == 200, answer.text
    assert node.machine.boot == flags
    shown = answer.json()["Boot"]
    assert {k: shown[k] for k in boot} == boot
    node.reset("On")
    after = node.client.get(node.system).json()["Boot"]
    # The firmware used a next-boot-only override; a continuous one stays.
    assert after["BootSourceOverrideEnabled"] == ("Disabled" if enabled == "Once" else enabled)
    assert node.machine.boots[-1].startswith({"Pxe": "pxe", "Hdd": "disk", "Cd": "cdrom"}[target])


def test_boot_override_refuses_what_it_cannot_do(new: Callable[..., Bmc]) -> None:
    node = new()
    wrong_target = node.client.patch(
        node.system, json={"Boot": {"BootSourceOverrideTarget": "Usb"}}
    )
    assert wrong_target.status_code == 400
    assert "PropertyValueNotInList" in wrong_target.json()["error"]["code"]
    read_only = node.client.patch(node.system, json={"PowerState": "On"})
    assert read_only.status_code == 400
    assert node.client.patch(node.system, content=b"{not json").status_code == 400
    assert node.machine.boot == BootFlags()
    # A target alone, while no override is set, applies once.
    node.client.patch(node.system, json={"Boot": {"BootSourceOverrideTarget": "Pxe"}})
    assert node.machine.boot == BootFlags(True, False, False, BootDevice.PXE)
    node.client.patch(node.system, json={"Boot": {"BootSourceOverrideEnabled": "Disabled"}})
    assert not node.machine.boot.valid


def test_etag_and_if_match(new: Callable[..., Bmc]) -> None:
    node = new()
    first = node.client.get(node.system)
    etag = first.headers["ETag"]
    assert node.client.get(node.system, headers={"If-None-Match": etag}).status_code == 304
    patch = {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}
    stale = node.client.patch(node.system, json=patch, headers={"If-Match": '"stale"'})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"].endswith("PreconditionFailed")
    assert not node.machine.boot.valid
    done = node.client.patch(node.system, json=patch, headers={"If-Match": etag})
    assert done.status_code == 200
    assert done.headers["ETag"] != etag
    # The old ETag is stale now, and so is one from before a power change.
    assert node.client.patch(node.system, json=patch, headers={"If-Match": etag}).status_code == 412
    current = done.headers["ETag"]
    node.reset("On")
    again = node.client.patch(node.system, json=patch, headers={"If-Match": current})
    assert again.status_code == 412
    assert node.client.patch(node.system, json=patch, headers={"If-Match": "*"}).status_code == 200


# --- authentication and sessions --------------------------------------------------


def _login(node: Bmc, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(
        f"{node.url}/redfish/v1/SessionService/Sessions",
        json={"UserName": USER, "Password": password},
        verify=node.context,
    )


def test_sessions_log_in_are_used_and_log_out(new: Callable[..., Bmc]) -> None:
    node = new(auth=False)
    login = _login(node)
    assert login.status_code == 201
    token, location = login.headers["X-Auth-Token"], login.headers["Location"]
    assert location.startswith("/redfish/v1/SessionService/Sessions/")
    assert login.json()["UserName"] == USER
    assert login.json()["Password"] is None
    headers = {"X-Auth-Token": token}
    assert node.client.get(node.system, headers=headers).status_code == 200
    sessions = node.client.get("/redfish/v1/SessionService/Sessions", headers=headers).json()
    assert {"@odata.id": location} in sessions["Members"]
    assert node.client.delete(location, headers=headers).status_code == 204
    refused = node.client.get(node.system, headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["@Message.ExtendedInfo"][0]["MessageId"]


def test_sessions_expire_when_idle(new: Callable[..., Bmc]) -> None:
    node = new(session_timeout=0.5, auth=False)
    token = _login(node).headers["X-Auth-Token"]
    assert node.client.get(node.system, headers={"X-Auth-Token": token}).status_code == 200
    time.sleep(1.0)
    assert node.client.get(node.system, headers={"X-Auth-Token": token}).status_code == 401
    assert len(node.bmc.sessions) == 0


def test_bad_credentials_get_a_redfish_error(new: Callable[..., Bmc]) -> None:
    node = new(auth=False)
    for auth in (None, (USER, "wrong"), ("nobody", PASSWORD)):
        answer = node.client.get(node.system, auth=auth)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
        error = answer.json()["error"]
        assert error["code"] == "Base.1.8.ResourceAtUriUnauthorized"
        info = error["@Message.ExtendedInfo"][0]
        assert info["MessageId"] == error["code"]
        assert info["Resolution"]
    assert _login(node, "wrong").status_code == 401


# --- dialects ---------------------------------------------------------------------


def test_dell_needs_if_match_for_the_boot_override(new: Callable[..., Bmc]) -> None:
    node = new(Dialect.DELL)
    assert node.system == "/redfish/v1/Systems/System.Embedded.1"
    patch = {"Boot": {"BootSourceOverrideTarget": "Pxe"}}
    refused = node.client.patch(node.system, json=patch)
    assert refused.status_code == 428
    assert refused.json()["error"]["code"].endswith("PreconditionRequired")
    etag = node.client.get(node.system).headers["ETag"]
    assert node.client.patch(node.system, json=patch, headers={"If-Match": etag}).status_code == 200
    manager = node.client.get("/redfish/v1/Managers/iDRAC.Embedded.1").json()
    media = node.client.get(manager["VirtualMedia"]["@odata.id"]).json()
    assert media["Members@odata.count"] == 2


def test_hpe_power_actions_go_through_a_task(new: Callable[..., Bmc]) -> None:
    node = new(Dialect.HPE)
    accepted = node.reset("On")
    assert accepted.status_code == 202
    monitor = accepted.headers["Location"]
    assert accepted.json()["TaskState"] == "Running"
    assert not node.machine.power_on  # accepted is not done
    deadline = time.monotonic() + 10 * TASK_SECONDS
    while (answer := node.client.get(monitor)).status_code == 202:
        assert time.monotonic() < deadline, "the task never completed"
        time.sleep(0.1)
    assert answer.status_code == 204
    assert node.machine.power_on
    task = node.client.get(accepted.json()["@odata.id"]).json()
    assert task["TaskState"] == "Completed"
    assert task["PercentComplete"] == 100
    tasks = node.client.get("/redfish/v1/TaskService/Tasks").json()
    assert tasks["Members@odata.count"] == 1


def test_supermicro_wants_a_session(new: Callable[..., Bmc]) -> None:
    node = new(Dialect.SUPERMICRO)
    refused = node.client.get(node.system)  # basic auth, right password
    assert refused.status_code == 401
    assert "WWW-Authenticate" not in refused.headers
    token = _login(node).headers["X-Auth-Token"]
    answer = node.client.get(node.system, auth=None, headers={"X-Auth-Token": token})
    assert answer.status_code == 200


# --- faults -----------------------------------------------------------------------


def test_no_answer_accepts_and_never_answers(new: Callable[..., Bmc]) -> None:
    node = new()
    node.bmc.gate.fault = faults.parse_fault("no-answer")
    began = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        node.client.get(node.system, timeout=1.0)
    assert time.monotonic() - began < 10
    node.bmc.gate.fault = faults.NO_FAULT
    assert node.client.get(node.system).status_code == 200


def test_wrong_password_fault_refuses_the_manifest_password(new: Callable[..., Bmc]) -> None:
    node = new()
    node.bmc.gate.fault = faults.parse_fault("wrong-password")
    assert node.client.get(node.system).status_code == 401
    assert _login(node).status_code == 401


def test_slow_answers_come_late(new: Callable[..., Bmc]) -> None:
    node = new()
    node.bmc.gate.fault = faults.parse_fault("slow:400")
    began = time.monotonic()
    assert node.client.get(node.system).status_code == 200
    assert 0.35 < time.monotonic() - began < 10
    with pytest.raises(httpx.TimeoutException):
        node.client.get(node.system, timeout=0.1)


def test_busy_answers_503_with_retry_after(new: Callable[..., Bmc]) -> None:
    node = new()
    node.bmc.gate.fault = faults.parse_fault("busy")
    answer = node.client.get(node.system)
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) > 0
    assert answer.json()["error"]["code"].endswith("ServiceTemporarilyUnavailable")


def test_task_hang_never_completes(new: Callable[..., Bmc]) -> None:
    node = new()  # generic: a power action is carried out at once, but not under the fault
    node.bmc.gate.fault = faults.parse_fault("task-hang")
    accepted = node.reset("On")
    assert accepted.status_code == 202
    time.sleep(2 * TASK_SECONDS)
    assert node.client.get(accepted.headers["Location"]).status_code == 202
    assert not node.machine.power_on


def test_new_certificate_is_not_the_labs(new: Callable[..., Bmc], served: Served) -> None:
    node = new()
    node.bmc.gate.fault = faults.parse_fault("new-certificate")
    began = time.monotonic()
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        node.client.get(node.system)
    assert time.monotonic() - began < 10
    shown = ssl.get_server_certificate(("127.0.0.1", node.bmc.port))
    assert shown.encode() != served.bmcs.certificate.cert_pem
    node.bmc.gate.fault = faults.NO_FAULT
    assert node.client.get(node.system).status_code == 200


def test_etag_race_changes_the_system_between_a_get_and_the_patch(
    new: Callable[..., Bmc],
) -> None:
    node = new()
    patch = {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}
    node.bmc.gate.fault = faults.parse_fault("etag-race:1")
    read = node.client.get(node.system)
    raced = node.client.patch(node.system, json=patch, headers={"If-Match": read.headers["ETag"]})
    assert raced.status_code == 412
    info = raced.json()["error"]["@Message.ExtendedInfo"][0]
    assert info["MessageId"] == "Base.1.8.PreconditionFailed"
    assert "ETag" in info["Message"]
    assert not node.machine.boot.valid
    # The other client's write is real: the System shows it, under a new ETag...
    again = node.client.get(node.system)
    assert again.headers["ETag"] != read.headers["ETag"]
    assert again.json()["HostName"] != read.json().get("HostName")
    # ...which the next PATCH may use: etag-race:1 races one PATCH only.
    done = node.client.patch(node.system, json=patch, headers={"If-Match": again.headers["ETag"]})
    assert done.status_code == 200
    assert node.machine.boot == BootFlags(True, False, False, BootDevice.PXE)

    # A bare etag-race races every If-Match PATCH, however fresh its ETag.
    node.bmc.gate.fault = faults.parse_fault("etag-race")
    names: set[str] = set()
    for _ in range(3):
        read = node.client.get(node.system)
        names.add(read.json()["HostName"])
        disk = {"Boot": {"BootSourceOverrideTarget": "Hdd"}}
        answer = node.client.patch(
            node.system, json=disk, headers={"If-Match": read.headers["ETag"]}
        )
        assert answer.status_code == 412
    assert len(names) == 3
    assert node.machine.boot == BootFlags(True, False, False, BootDevice.PXE)
    # If-Match: * matches whatever was written, and without If-Match nothing is judged.
    assert node.client.patch(node.system, json=patch, headers={"If-Match": "*"}).status_code == 200
    assert node.client.patch(node.system, json=patch).status_code == 200
    # Set again, etag-race:1 counts afresh: one more PATCH is raced, the next is not.
    node.bmc.gate.fault = faults.parse_fault("etag-race:1")
    for expected in (412, 200):
        etag = node.client.get(node.system).headers["ETag"]
        answer = node.client.patch(node.system, json=patch, headers={"If-Match": etag})
        assert answer.status_code == expected


def test_etag_race_takes_an_optional_count() -> None:
    assert str(faults.parse_fault("etag-race")) == "etag-race"
    assert faults.parse_fault("etag-race:2").value == 2
    assert str(faults.parse_fault("etag-race:2")) == "etag-race:2"
    for bad in ("etag-race:0", "etag-race:1.5", "etag-race:often"):
        with pytest.raises(ValueError, match="etag-race"):
            faults.parse_fault(bad)


def test_a_faulty_bmc_leaves_its_neighbours_alone(new: Callable[..., Bmc]) -> None:
    hung, neighbour = new(), new()
    hung.bmc.gate.fault = faults.parse_fault("slow:60000")
    with pytest.raises(httpx.TimeoutException):
        hung.client.get(hung.system, timeout=0.5)
    began = time.monotonic()
    assert neighbour.client.get(neighbour.system).status_code == 200
    assert time.monotonic() - began < 5
