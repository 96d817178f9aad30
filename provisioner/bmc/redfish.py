"""Redfish driver: power, boot override, inventory and health of one ComputerSystem
over one logged-in session (:mod:`provisioner.bmc.redfish_http`).

A power action is done when the BMC reports the power state it leads to, not when it is
accepted: tasks (202 and a task monitor) are followed, then ``PowerState`` is read back
until it shows, within ``target.power_deadline``. The boot override is a PATCH sent with
the System's ETag in ``If-Match``, as the most demanding BMCs require. docs/redfish.md
says what each capability reads and writes, and which dialect quirks it handles.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from provisioner.bmc.base import (
    BmcError,
    BootDevice,
    BootSetting,
    ErrorKind,
    Health,
    Inventory,
    PowerAction,
    SensorReading,
    Target,
)
from provisioner.bmc.redfish_http import OnPin, RedfishHttp, Reply
from provisioner.bmc.redfish_sensors import (
    LEGACY,
    MAX_SENSORS,
    expand_query,
    health_word,
    is_reference,
    legacy,
    reading,
)

log = logging.getLogger(__name__)

ROOT = "/redfish/v1"
_RESET = "#ComputerSystem.Reset"
# What each action asks for; where the BMC does not allow it, the next way round.
_RESET_TYPES: dict[PowerAction, tuple[str, ...]] = {
    PowerAction.ON: ("On",),
    PowerAction.OFF: ("ForceOff",),
    PowerAction.SOFT_OFF: ("GracefulShutdown",),
    PowerAction.RESET: ("ForceRestart", "PowerCycle"),
    PowerAction.CYCLE: ("PowerCycle", "ForceRestart"),
}
_ON_STATES = ("on", "poweringoff", "paused")
_TARGETS = {"Pxe": BootDevice.NETWORK, "Hdd": BootDevice.DISK}
_FAILED_TASK = ("Exception", "Killed", "Cancelled", "Interrupted")
_MAC = re.compile(r"^([0-9a-f]{2}[:-]?){5}[0-9a-f]{2}$", re.IGNORECASE)
# How often power state and tasks are read while waiting, unless the BMC says otherwise.
_POLL = 0.25
# Why a boot override PATCH refused twice (412) is not retried a third time.
_CHANGED_TWICE = (
    "the System changed again after it was read again, so another client is writing it; "
    "the boot override was not set, try again"
)


class RedfishDriver:
    """One Redfish session to one BMC; implements :class:`base.Driver`.

    The constructor connects and logs in within ``target.timeout``. Each method is
    bounded by ``target.timeout`` (a power action also by ``target.power_deadline`` for
    the BMC to carry it out). One call at a time; :meth:`abort` from any thread.
    """

    def __init__(self, target: Target, on_pin: OnPin | None = None) -> None:
        self.target = target
        self._http = RedfishHttp(target, on_pin)
        self._system_url: str | None = None
        self._expand: str | None = None  # the $expand query for collections; "" for none
        self._http.log_in(self._deadline())

    def certificate_fingerprint(self) -> str | None:
        """``sha256:<hex>`` of the certificate the BMC presented; None over plain HTTP."""
        return self._http.fingerprint

    # -- power ----------------------------------------------------------------------

    def power_state(self) -> str:
        return _power(self._system(self._deadline())[0], self._http.where)

    def set_power(self, action: PowerAction) -> None:
        """Ask for ``action`` and return once the BMC reports the state it leads to.
        Cycle and reset of a machine that is off power it on; on when on and off when
        off are done already."""
        system, _ = self._system(self._deadline())
        state = _power(system, self._http.where)
        if action in (PowerAction.CYCLE, PowerAction.RESET) and state == "off":
            action = PowerAction.ON
        wanted = "off" if action in (PowerAction.OFF, PowerAction.SOFT_OFF) else "on"
        if action in (PowerAction.ON, PowerAction.OFF, PowerAction.SOFT_OFF) and state == wanted:
            return
        reset = system.get("Actions", {}).get(_RESET, {})
        url = reset.get("target") or f"{self._system_url}/Actions/ComputerSystem.Reset"
        allowed = reset.get("ResetType@Redfish.AllowableValues")
        choices = [t for t in _RESET_TYPES[action] if allowed is None or t in allowed]
        if choices:
            self._reset(url, choices[0], wanted)
        elif action in (PowerAction.CYCLE, PowerAction.RESET) and {"ForceOff", "On"} <= set(
            allowed or ()
        ):
            self._reset(url, "ForceOff", "off")  # no restart of its own: off, then on
            self._reset(url, "On", "on")
        else:
            raise BmcError(
                ErrorKind.UNSUPPORTED,
                f"The BMC at {self._http.where} offers no reset type for {action} "
                f"(it allows {', '.join(allowed or ())}).",
            )

    def _reset(self, url: str, reset_type: str, wanted: str) -> None:
        reply = self._http.request("POST", url, {"ResetType": reset_type}, self._deadline())
        accepted = time.monotonic()
        end = accepted + self.target.power_deadline
        if reply.status == 202:
            self._follow_task(reply, reset_type, end)
        elif reply.status == 409 and self.power_state() == wanted:
            return  # refused because it is there already
        elif reply.status >= 300:
            raise self._http.failed("POST", url, reply)
        while True:
            state = self.power_state()
            if state == wanted:
                return
            if time.monotonic() >= end:
                raise BmcError(
                    ErrorKind.TIMEOUT,
                    f"The BMC at {self._http.where} accepted {reset_type} but still reports "
                    f"{state} after {time.monotonic() - accepted:.3g} s; check the machine "
                    "(a shutdown the OS ignores, a stuck power supply) or raise the BMC's "
                    "power deadline.",
                )
            self._http.pause(min(_POLL, end - time.monotonic()))

    def _follow_task(self, accepted: Reply, reset_type: str, end: float) -> None:
        """Poll the task monitor until it is done (204, or a Task Completed)."""
        monitor = accepted.headers.get("location")
        task = _json_or_empty(accepted)
        if not monitor:
            monitor = task.get("@odata.id")
        if not monitor:
            return  # 202 without a monitor: nothing to follow but the power state
        name = task.get("@odata.id") or monitor
        started = time.monotonic()
        reply = accepted
        while True:
            if reply is not accepted:
                if reply.status == 204:
                    return
                if reply.status >= 300:
                    raise BmcError(
                        ErrorKind.PROTOCOL,
                        f"The BMC at {self._http.where} failed {reset_type}: its task {name} "
                        f"answered {reply.message()}.",
                    )
                task = _json_or_empty(reply)
                state = task.get("TaskState")
                if state in _FAILED_TASK:
                    raise BmcError(
                        ErrorKind.PROTOCOL,
                        f"The BMC at {self._http.where} failed {reset_type}: task {name} "
                        f"ended {state}{_task_messages(task)}.",
                    )
                if reply.status == 200 and state in (None, "Completed"):
                    return
            wait = _seconds(reply.headers.get("retry-after"), _POLL)
            if time.monotonic() >= end:
                raise BmcError(
                    ErrorKind.TIMEOUT,
                    f"The BMC at {self._http.where} accepted {reset_type} but its task {name} "
                    f"is still {task.get('TaskState', 'running')} after "
                    f"{time.monotonic() - started:.3g} s; check the BMC's task list "
                    f"({ROOT}/TaskService/Tasks).",
                )
            self._http.pause(min(wait, 1.0, end - time.monotonic()))
            reply = self._http.request("GET", monitor, None, self._deadline())

    # -- boot device ----------------------------------------------------------------

    def boot_device(self) -> BootSetting:
        boot = self._system(self._deadline())[0].get("Boot") or {}
        target = boot.get("BootSourceOverrideTarget")
        enabled = boot.get("BootSourceOverrideEnabled")
        if enabled in (None, "Disabled") or target in (None, "None"):
            return BootSetting(BootDevice.DEFAULT, persistent=True)
        # UefiHttp boots from the network, but not the way the service's netboot
        # serves (PXE); reported as OTHER so that the service sets Pxe again.
        return BootSetting(
            _TARGETS.get(str(target), BootDevice.OTHER),
            persistent=enabled == "Continuous",
            uefi=boot.get("BootSourceOverrideMode") == "UEFI",
        )

    def set_boot_device(self, setting: BootSetting) -> None:
        if setting.device not in (BootDevice.NETWORK, BootDevice.DISK, BootDevice.DEFAULT):
            raise BmcError(
                ErrorKind.UNSUPPORTED,
                f"Boot device {setting.device!r} cannot be set; use network, disk or default.",
            )
        deadline = self._deadline()
        for attempt in (1, 2):
            system, etag = self._system(deadline)
            boot = system.get("Boot") or {}
            headers = {"If-Match": etag} if etag else {}
            url = str(self._system_url)
            reply = self._http.request(
                "PATCH", url, {"Boot": _boot_patch(setting, boot)}, deadline, headers
            )
            if reply.status == 412 and attempt == 1:
                continue  # changed since we read it: read it again, once
            if reply.status == 412:
                raise self._http.failed("PATCH", url, reply, _CHANGED_TWICE)
            if reply.status >= 300:
                raise self._http.failed("PATCH", url, reply)
            return

    # -- inventory and health -------------------------------------------------------

    def inventory(self) -> Inventory:
        deadline = self._deadline()
        system, _ = self._system(deadline)
        facts: dict[str, Any] = {
            "manufacturer": system.get("Manufacturer"),
            "product": system.get("Model"),
            "serial": system.get("SerialNumber"),
            "asset_tag": system.get("AssetTag"),
            "guid": _guid(system.get("UUID")),
            "sku": system.get("SKU"),
            "bios_version": system.get("BiosVersion"),
            "health": health_word(system),
        }
        manager = self._linked(system, "ManagedBy", f"{ROOT}/Managers", deadline)
        facts["firmware"] = manager.get("FirmwareVersion") if manager else None
        summary = system.get("ProcessorSummary") or {}
        cpus = self._members(system, "Processors", deadline)
        facts["processors"] = {
            "count": summary.get("Count", len(cpus)),
            "model": summary.get("Model") or next((c.get("Model") for c in cpus), None),
            "cores": sum(int(c.get("TotalCores") or 0) for c in cpus) or None,
        }
        dimms = [d for d in self._members(system, "Memory", deadline) if d.get("CapacityMiB")]
        facts["memory"] = {
            "total_gib": (system.get("MemorySummary") or {}).get("TotalSystemMemoryGiB"),
            "dimms": [
                {
                    "name": d.get("Id"),
                    "size_mib": d.get("CapacityMiB"),
                    "type": d.get("MemoryDeviceType"),
                    "speed_mhz": d.get("OperatingSpeedMhz"),
                    "serial": d.get("SerialNumber"),
                }
                for d in dimms
            ],
        }
        facts["drives"] = [
            {
                "name": d.get("Name") or d.get("Id"),
                "size_bytes": d.get("CapacityBytes"),
                "media_type": d.get("MediaType"),
                "model": d.get("Model"),
                "serial": d.get("SerialNumber"),
            }
            for storage in self._members(system, "Storage", deadline)
            for d in self._read_all(storage.get("Drives") or [], deadline)
        ]
        nics = self._members(system, "EthernetInterfaces", deadline)
        facts["nics"] = [
            {"name": n.get("Id"), "mac": _mac(n.get("MACAddress")), "link": n.get("LinkStatus")}
            for n in nics
        ]
        facts["macs"] = list(dict.fromkeys(m["mac"] for m in facts["nics"] if m["mac"]))
        facts["firmware_inventory"] = self._firmware_inventory(deadline)
        return Inventory(facts=facts)

    def health(self) -> Health:
        deadline = self._deadline()
        system, _ = self._system(deadline)
        chassis = self._linked(system, "Chassis", f"{ROOT}/Chassis", deadline) or {}
        links = [(chassis.get(part) or {}).get("@odata.id") for part, _ in LEGACY]
        collection = (chassis.get("Sensors") or {}).get("@odata.id")
        if collection and not any(links):
            return Health(health_word(system), self._sensors(str(collection), deadline))
        # The legacy Thermal and Power wherever the Chassis links them, though deprecated
        # since Redfish 2020.4: two GETs give every reading, where the Sensors collection
        # costs a GET per sensor on a BMC without $expand, and BMCs that serve both (iDRAC
        # 9) list hundreds of Sensors.
        sensors: list[SensorReading] = []
        for (_, arrays), link in zip(LEGACY, links, strict=True):
            found = self._optional(link, deadline) if link else None
            sensors += legacy(found or {}, arrays)
        return Health(health_word(system), sensors)

    def _sensors(self, path: str, deadline: float) -> list[SensorReading]:
        """The first :data:`MAX_SENSORS` members of a Sensors collection: in its own
        answer where the BMC offers $expand, else each read in turn."""
        if self._expand is None:
            self._expand = expand_query(self._get(f"{ROOT}/", deadline))
        found = self._optional(path + self._expand, deadline) or {}
        members = found.get("Members") or []
        if len(members) > MAX_SENSORS:
            log.info(
                "BMC %s lists %d sensors; reading the first %d",
                self._http.where,
                len(members),
                MAX_SENSORS,
            )
        read = [
            self._optional(str(m["@odata.id"]), deadline) if is_reference(m) else m
            for m in members[:MAX_SENSORS]
        ]
        return [reading(m) for m in read if isinstance(m, dict)]

    def abort(self) -> None:
        self._http.abort()

    def close(self) -> None:
        """Log out; never raises."""
        self._http.close()

    # -- reading --------------------------------------------------------------------

    def _deadline(self) -> float:
        return time.monotonic() + self.target.timeout

    def _system(self, deadline: float) -> tuple[dict[str, Any], str | None]:
        """The System and its ETag; the first member of Systems, found once."""
        if self._system_url is None:
            systems = self._get(f"{ROOT}/Systems", deadline)
            members = systems.get("Members") or []
            if not members:
                raise BmcError(
                    ErrorKind.UNSUPPORTED,
                    f"The BMC at {self._http.where} lists no computer system under "
                    f"{ROOT}/Systems; check that it manages a server.",
                )
            self._system_url = str(members[0]["@odata.id"])
        reply = self._http.request("GET", self._system_url, None, deadline)
        if reply.status != 200:
            raise self._http.failed("GET", self._system_url, reply)
        system = reply.json()
        return system, reply.headers.get("etag") or system.get("@odata.etag")

    def _get(self, path: str, deadline: float) -> dict[str, Any]:
        reply = self._http.request("GET", path, None, deadline)
        if reply.status != 200:
            raise self._http.failed("GET", path, reply)
        return reply.json()

    def _optional(self, path: str, deadline: float) -> dict[str, Any] | None:
        """A resource a BMC may lack: None where it has not."""
        try:
            return self._get(path, deadline)
        except BmcError as err:
            if err.kind is ErrorKind.UNSUPPORTED:
                return None
            raise

    def _read_all(self, links: list[Any], deadline: float) -> list[dict[str, Any]]:
        paths = [str(m["@odata.id"]) for m in links if isinstance(m, dict) and "@odata.id" in m]
        return [r for r in (self._optional(p, deadline) for p in paths) if r is not None]

    def _members(self, parent: dict[str, Any], name: str, deadline: float) -> list[dict[str, Any]]:
        """The members of the collection ``parent[name]`` links to; [] without one."""
        link = (parent.get(name) or {}).get("@odata.id")
        found = self._optional(link, deadline) if link else None
        return self._read_all((found or {}).get("Members") or [], deadline)

    def _linked(
        self, system: dict[str, Any], relation: str, collection: str, deadline: float
    ) -> dict[str, Any] | None:
        """The System's first ``Links[relation]``, else the collection's first member."""
        links = (system.get("Links") or {}).get(relation) or []
        if not links:
            links = (self._optional(collection, deadline) or {}).get("Members") or []
        found = self._read_all(links[:1], deadline)
        return found[0] if found else None

    def _firmware_inventory(self, deadline: float) -> dict[str, str]:
        root = self._get(f"{ROOT}/", deadline)
        update = root.get("UpdateService", {}).get("@odata.id")
        service = self._optional(update, deadline) if update else None
        items = self._members(service or {}, "FirmwareInventory", deadline)
        # By Id: unique in the collection, where names repeat on some BMCs.
        return {
            str(i.get("Id") or i.get("Name")): str(i["Version"]) for i in items if i.get("Version")
        }


def _power(system: dict[str, Any], place: str) -> str:
    state = system.get("PowerState")
    if not isinstance(state, str):
        raise BmcError(
            ErrorKind.PROTOCOL, f"The BMC at {place} reports no PowerState for its system."
        )
    return "on" if state.lower() in _ON_STATES else "off"


def _boot_patch(setting: BootSetting, boot: dict[str, Any]) -> dict[str, str]:
    def allowed(prop: str, value: str) -> bool:
        values = boot.get(f"{prop}@Redfish.AllowableValues")
        return values is None or value in values

    if setting.device is BootDevice.DEFAULT:
        patch = {"BootSourceOverrideEnabled": "Disabled"}
        if allowed("BootSourceOverrideTarget", "None"):
            patch["BootSourceOverrideTarget"] = "None"
        return patch
    patch = {
        "BootSourceOverrideTarget": "Pxe" if setting.device is BootDevice.NETWORK else "Hdd",
        "BootSourceOverrideEnabled": "Continuous" if setting.persistent else "Once",
    }
    mode = "UEFI" if setting.uefi else "Legacy"
    # A BMC without the property (older firmware, UEFI-only boards) keeps its own mode.
    if "BootSourceOverrideMode" in boot and allowed("BootSourceOverrideMode", mode):
        patch["BootSourceOverrideMode"] = mode
    return patch


def _json_or_empty(reply: Reply) -> dict[str, Any]:
    try:
        return reply.json()
    except BmcError:
        return {}


def _task_messages(task: dict[str, Any]) -> str:
    words = [str(m.get("Message")) for m in task.get("Messages") or [] if isinstance(m, dict)]
    return f" ({' '.join(w for w in words if w)})" if any(words) else ""


def _seconds(value: str | None, default: float) -> float:
    try:
        return max(0.0, float(value)) if value else default
    except ValueError:
        return default


def _guid(value: Any) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(value).lower()


def _mac(value: Any) -> str | None:
    text = str(value or "").strip()
    if not _MAC.match(text):
        return None
    digits = re.sub(r"[:-]", "", text).lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


__all__ = ["RedfishDriver"]
