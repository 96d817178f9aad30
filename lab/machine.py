"""The emulated machine behind a virtual BMC: its power, the boot device its firmware
will use, the inventory burned into its FRU EEPROM, its NICs and what its sensors read.

It knows nothing of IPMI framing; the BMC translates requests into calls here and
answers with the completion codes these calls return.
"""

from __future__ import annotations

import random
import struct
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Protocol

VENDOR = "Provisioner Lab"  # matched by hardware_profiles/lab-virtual-server.yaml
PRODUCT = "Virtual Server VS-1"
# A machine with a QEMU VM behind its BMC (lab/vm.py): hardware_profiles/lab-qemu.yaml.
VM_PRODUCT = "Virtual Server VQ-1"
BOARD = "VS-1 Mainboard"

# IPMI completion codes the machine decides (IPMI 2.0 table 5-2).
OK = 0x00
NOT_IN_PRESENT_STATE = 0xD5  # e.g. power cycle while off, which a real BMC refuses

_FRU_EPOCH = datetime(1996, 1, 1, tzinfo=UTC)


class BootDevice(IntEnum):
    """Boot device selector of the boot flags parameter (IPMI 2.0 table 28-14)."""

    NONE = 0x0
    PXE = 0x1
    DISK = 0x2
    DISK_SAFE = 0x3
    DIAGNOSTIC = 0x4
    CDROM = 0x5
    BIOS_SETUP = 0x6
    REMOTE_FLOPPY = 0x7
    REMOTE_CDROM = 0x8
    REMOTE_MEDIA = 0x9
    REMOTE_DISK = 0xB
    FLOPPY = 0xF


@dataclass
class BootFlags:
    """The boot flags a BMC keeps for the firmware. Unless persistent, they apply to the
    next boot only and the firmware clears `valid` when it uses them."""

    valid: bool = False
    persistent: bool = False
    uefi: bool = False
    device: int = BootDevice.NONE


class Firmware(Protocol):
    """What the machine runs when it starts: the lab's boot emulation (`lab.netboot`).
    Called from whichever thread pressed the button, so it must only hand work over."""

    def booted(self, device: BootDevice) -> None: ...

    def powered_off(self) -> None: ...


@dataclass(frozen=True)
class InstalledOs:
    """What an installer left on the machine's disk."""

    image: str
    deployment: str | None = None  # as the installer's console named it


@dataclass
class BootProgress:
    """How far the machine got since it was last powered on, for `provisioner-lab status`."""

    state: str = "off"
    last_hop: str = ""


@dataclass(frozen=True)
class Inventory:
    """What the machine's FRU EEPROM holds."""

    vendor: str
    product: str
    part_number: str
    version: str
    serial: str
    asset_tag: str
    board: str
    board_serial: str
    board_part_number: str
    manufactured: datetime


@dataclass(frozen=True)
class SensorSpec:
    """A threshold sensor: raw readings y = m * x * 10**exponent (unsigned x, 0..255),
    thresholds in engineering units, and the reading while powered on and off (None:
    the sensor has no standby power and reports "reading unavailable")."""

    number: int
    name: str
    sensor_type: int  # IPMI table 42-3: 0x01 temperature, 0x02 voltage, 0x04 fan
    entity: int  # IPMI table 43-13: 0x37 air inlet, 0x03 processor, 0x1D fan, 0x0A PSU
    unit: int  # IPMI table 43-15: 1 degrees C, 4 volts, 18 RPM
    m: int
    exponent: int
    lower_critical: float
    lower_noncritical: float
    upper_noncritical: float
    upper_critical: float
    reading_on: float
    reading_off: float | None

    def raw(self, value: float) -> int:
        return max(0, min(255, round(value / (self.m * 10.0**self.exponent))))


@dataclass
class Machine:
    name: str
    uuid: uuid.UUID
    macs: list[str]
    inventory: Inventory
    sensors: list[SensorSpec]
    power_on: bool = False
    boot: BootFlags = field(default_factory=BootFlags)
    # Devices the firmware booted from, oldest first: what a test or a demo checks
    # after a provisioning run.
    boots: list[str] = field(default_factory=list)
    boot_mode: str = "bios"  # "bios" or "uefi": which network bootloader the firmware asks for
    firmware: Firmware | None = None
    installed: InstalledOs | None = None
    progress: BootProgress = field(default_factory=BootProgress)
    # The BMC's packet thread and the boot emulation's thread both boot the machine
    # (a power cycle; an installer's reboot): consuming a next-boot-only request must be
    # atomic with setting new flags.
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    # --- power: each returns an IPMI completion code -------------------------------

    def power_state(self) -> str:
        return "on" if self.power_on else "off"

    def press_power_on(self) -> int:
        with self._lock:
            if self.power_on:
                return OK
            self.power_on = True
            device = self._firmware_boots()
        self._start(device)
        return OK

    def press_power_off(self) -> int:
        with self._lock:
            self.power_on = False
        self._stopped()
        return OK

    def power_cycle(self) -> int:
        with self._lock:
            if not self.power_on:
                return NOT_IN_PRESENT_STATE
            device = self._firmware_boots()
        self._start(device)
        return OK

    def hard_reset(self) -> int:
        return self.power_cycle()

    def reboot(self) -> None:
        """The running software restarts the machine (an installer's last step)."""
        self.power_cycle()

    def soft_off(self) -> int:
        """ACPI power-button press: the emulated OS shuts down at once."""
        with self._lock:
            if not self.power_on:
                return NOT_IN_PRESENT_STATE
            self.power_on = False
        self._stopped()
        return OK

    def powered_off_by_itself(self) -> None:
        """The running software powered the machine off (``poweroff -f`` in a VM, whose
        QEMU then exits): the firmware has stopped already, so it is not told."""
        with self._lock:
            self.power_on = False

    def diagnostic_interrupt(self) -> int:
        return OK if self.power_on else NOT_IN_PRESENT_STATE

    def set_boot_flags(self, flags: BootFlags) -> None:
        with self._lock:
            self.boot = flags

    def _firmware_boots(self) -> BootDevice:
        flags = self.boot
        device = BootDevice(flags.device) if flags.valid else BootDevice.DISK
        self.boots.append(device.name.lower() + ("-uefi" if flags.uefi else ""))
        if flags.valid and not flags.persistent:
            # The firmware consumed a next-boot-only request.
            self.boot = BootFlags(valid=False, persistent=False, uefi=flags.uefi)
        return device

    def _start(self, device: BootDevice) -> None:
        if self.firmware is not None:
            self.firmware.booted(device)

    def _stopped(self) -> None:
        if self.firmware is not None:
            self.firmware.powered_off()

    # --- sensors ----------------------------------------------------------------

    def reading(self, sensor: SensorSpec) -> float | None:
        return sensor.reading_on if self.power_on else sensor.reading_off

    # --- FRU ----------------------------------------------------------------------

    def fru_image(self) -> bytes:
        """The FRU EEPROM: common header, chassis, board and product info areas
        (IPMI Platform Management FRU Information Storage Definition v1.0)."""
        inv = self.inventory
        chassis = _area([0x17], [inv.part_number, inv.serial])  # 0x17: rack mount chassis
        minutes = int((inv.manufactured - _FRU_EPOCH).total_seconds() // 60)
        board = _area(
            [0x00, *struct.pack("<I", minutes)[:3]],  # language English, mfg date/time
            [inv.vendor, inv.board, inv.board_serial, inv.board_part_number, ""],
        )
        product = _area(
            [0x00],
            [inv.vendor, inv.product, inv.part_number, inv.version, inv.serial, inv.asset_tag, ""],
        )
        offset = 1  # in 8-byte units, after the header
        offsets = []
        for area in (chassis, board, product):
            offsets.append(offset)
            offset += len(area) // 8
        header = bytes([0x01, 0x00, *offsets, 0x00, 0x00])
        return header + bytes([_checksum(header)]) + chassis + board + product


def _area(fixed: list[int], fields: list[str]) -> bytes:
    body = bytearray([0x01, 0x00, *fixed])  # format version, length placeholder
    for text in fields:
        encoded = text.encode("ascii")
        body += bytes([0xC0 | len(encoded)]) + encoded  # type 11b: 8-bit ASCII
    body.append(0xC1)  # end of fields
    body += bytes(-(len(body) + 1) % 8)  # pad so the area, checksum included, is 8n
    body[1] = (len(body) + 1) // 8
    return bytes(body) + bytes([_checksum(body)])


def _checksum(data: bytes | bytearray) -> int:
    return -sum(data) & 0xFF


def build_machine(name: str, index: int, seed: int, macs: list[str]) -> Machine:
    """A machine whose serials, UUID and sensor readings follow from (seed, index)."""
    rng = random.Random(f"{seed}/machine/{index}")  # noqa: S311 - reproducible
    serial = f"VS1{rng.randrange(16**7):07X}"
    inventory = Inventory(
        vendor=VENDOR,
        product=PRODUCT,
        part_number="VS1-0001-R",
        version="1.0",
        serial=serial,
        asset_tag=f"LAB-{index + 1:05d}",
        board=BOARD,
        board_serial=f"MB{rng.randrange(16**8):08X}",
        board_part_number="VS1-MB-02",
        manufactured=datetime(2024, 1, 1, tzinfo=UTC).replace(
            month=rng.randint(1, 12), day=rng.randint(1, 28)
        ),
    )
    inlet = rng.uniform(20.0, 26.0)
    sensors = [
        SensorSpec(1, "Inlet Temp", 0x01, 0x37, 1, 1, 0, 3, 8, 38, 42, round(inlet), round(inlet)),
        SensorSpec(
            2,
            "CPU Temp",
            0x01,
            0x03,
            1,
            1,
            0,
            3,
            8,
            85,
            95,
            round(inlet + rng.uniform(18, 30)),
            None,
        ),
        SensorSpec(
            3,
            "Fan1",
            0x04,
            0x1D,
            18,
            60,
            0,
            600,
            1200,
            13800,
            15000,
            60 * rng.randint(90, 120),
            None,
        ),
        SensorSpec(
            4,
            "PSU1 12V",
            0x02,
            0x0A,
            4,
            6,
            -2,
            10.8,
            11.4,
            12.6,
            13.2,
            0.06 * rng.randint(198, 202),
            None,
        ),
    ]
    return Machine(
        name=name,
        uuid=uuid.UUID(int=rng.getrandbits(128), version=4),
        macs=macs,
        inventory=inventory,
        sensors=sensors,
    )
