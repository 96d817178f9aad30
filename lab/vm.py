"""Real machines for the lab: QEMU virtual machines behind the lab's virtual BMCs.

A :class:`Vm` is one QEMU process's life in a workdir of its own: the disk image and the
OVMF variable store (both kept across power cycles, like a machine's disk and NVRAM), the
serial console log, the QMP socket. :class:`VmFirmware` is the `lab.machine.Firmware` of
a lab `Machine` whose hardware is a VM: the BMC's power and boot-device commands become
QMP commands, as docs/lab-vms.md tabulates:

- power on starts QEMU, power off is ``quit``, cycle and reset are ``system_reset``, soft
  off is ``system_powerdown`` (the ACPI button: the power state follows QEMU, so a guest
  that ignores the button stays on, as a real machine does), and a guest that powers
  itself off (QEMU exits) turns the machine's power off;
- the boot device is the NIC's and disk's ``bootindex``, set with ``qom-set``; QEMU
  reads it at the next reset, so the order for a boot is set just before it and the
  order the BMC's flags then name (the disk, once a next-boot-only request is used) right
  after it, ready for a reset the guest itself does.

QEMU always runs under TCG (``-accel tcg -cpu max``): the KVM of the machines this lab
runs on cannot run stock guests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from lab.bmc import LabBmc
from lab.machine import OK, BootDevice, BootFlags, Machine
from lab.qmp import Event, Qmp, QmpClosed, QmpError
from lab.vmnet import LabNetwork, Namespace, spawn
from provisioner.agent import build

log = logging.getLogger(__name__)

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
FIRMWARES = ("bios", "uefi")
# ipxe: the iPXE EFI driver in QEMU's NIC option ROM boots at once (and asks DHCP for
# the script itself); edk2: no option ROM, so OVMF's own PXE client fetches a loader
# over TFTP, as most real UEFI servers do.
UEFI_PXE = ("ipxe", "edk2")
DISK_FORMATS = ("qcow2", "raw")
NIC = "/machine/peripheral/nic0"
DISK = "/machine/peripheral/disk0"
_NETWORK_BOOT = frozenset({BootDevice.PXE})
_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, NUL included
_POLL_SECONDS = 0.5
_START_SECONDS = 60.0  # from exec to QMP answering, on a busy machine
# One reboot of a BIOS VM is a burst of resets: SeaBIOS resets the machine again (to
# restore its shadowed image) and a rebooting kernel may try more than one way, seconds
# apart under load. QEMU rebuilds the firmware's boot order at each: resets closer
# together than this (by QEMU's clock) are one boot, and the order for the next boot is
# set only once they have stopped.
_SAME_BOOT_SECONDS = 6.0


class VmError(RuntimeError):
    """A VM cannot be made or started; the message says why."""


@dataclass(frozen=True)
class VmSpec:
    """What one VM is: identity as the guest reads it (SMBIOS, UUID, MAC) and hardware."""

    name: str
    uuid: uuid.UUID
    mac: str
    tap: str  # its tap on the lab bridge (`lab.vmnet.LabNetwork.add_tap`)
    vendor: str
    product: str
    serial: str
    firmware: str = "bios"
    uefi_pxe: str = "ipxe"
    memory_mb: int = 512  # 96 MB boots the agent; 64 MB does not
    disk_bytes: int = 2 * 1024**3
    disk_format: str = "raw"  # sparse; qcow2 needs qemu-img (Debian's qemu-utils)

    def __post_init__(self) -> None:
        for value, known, what in (
            (self.firmware, FIRMWARES, "firmware"),
            (self.uefi_pxe, UEFI_PXE, "UEFI PXE"),
            (self.disk_format, DISK_FORMATS, "disk format"),
        ):
            if value not in known:
                raise VmError(f"unknown {what} {value!r}; known: {', '.join(known)}")


def spec_for(machine: Machine, tap: str, **hardware: str | int) -> VmSpec:
    """The VM of a lab machine: its name, UUID, first MAC and FRU strings."""
    inventory = machine.inventory
    return VmSpec(
        name=machine.name,
        uuid=machine.uuid,
        mac=machine.macs[0],
        tap=tap,
        vendor=inventory.vendor,
        product=inventory.product,
        serial=inventory.serial,
        firmware=machine.boot_mode,
        **hardware,  # type: ignore[arg-type]
    )


def attach(
    machine: Machine, network: LabNetwork, workdir: Path, **hardware: str | int
) -> VmFirmware:
    """Make ``machine`` a VM on ``network`` (a tap of its own, files in ``workdir``),
    powered off and stopped when the network closes."""
    spec = spec_for(machine, network.add_tap(), **hardware)
    firmware = VmFirmware(machine, Vm(spec, workdir, network.namespace))
    machine.firmware = firmware
    network.on_close(firmware.close)
    return firmware


def first_device(device: BootDevice) -> str:
    """Which of the VM's two boot devices a boot from ``device`` tries first."""
    return NIC if device in _NETWORK_BOOT else DISK


def _option(value: str) -> str:
    return value.replace(",", ",,")  # QEMU's option syntax doubles a literal comma


class Vm:
    """One VM's files and QEMU process. Not thread-safe: :class:`VmFirmware` drives it
    from one thread (its QMP client may be shared for reading)."""

    def __init__(self, spec: VmSpec, workdir: Path, namespace: Namespace | None) -> None:
        self.spec = spec
        self.workdir = workdir
        self.namespace = namespace
        workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log = workdir / "serial.log"
        self.qmp_path = workdir / "qmp.sock"
        if len(str(self.qmp_path)) > _SOCKET_PATH_MAX:
            raise VmError(f"{self.qmp_path} is too long for a unix socket; use a shorter workdir")
        self.disk = workdir / f"disk.{spec.disk_format}"
        self.vars = workdir / "OVMF_VARS.fd"
        self.process: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self._first = ""  # the device the next reset boots first
        self._prepare()

    def _prepare(self) -> None:
        s = self.spec
        if not self.disk.exists():
            if s.disk_format == "raw":
                with self.disk.open("wb") as disk:
                    disk.truncate(s.disk_bytes)  # sparse
            elif shutil.which("qemu-img") is None:
                raise VmError("qcow2 disks need qemu-img (apt-get install qemu-utils)")
            else:
                result = subprocess.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), str(s.disk_bytes)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if result.returncode != 0:
                    raise VmError(f"qemu-img create {self.disk}: {result.stderr.strip()}")
        if s.firmware == "uefi" and not self.vars.exists():
            if not OVMF_CODE.is_file():
                raise VmError(f"UEFI VMs need OVMF ({OVMF_CODE}; apt-get install ovmf)")
            shutil.copyfile(OVMF_VARS, self.vars)

    def command(self, first: str) -> list[str]:
        """QEMU's command line, booting ``first`` (NIC or DISK) first."""
        s = self.spec
        nic_index, disk_index = (1, 2) if first == NIC else (2, 1)
        nic = f"virtio-net-pci,id=nic0,netdev=n0,mac={s.mac},bootindex={nic_index}"
        if s.firmware == "uefi" and s.uefi_pxe == "edk2":
            nic += ",romfile="
        args = [
            "qemu-system-x86_64",
            "-name", _option(s.name),
            "-machine", "q35" if s.firmware == "uefi" else "pc",
            "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", str(s.memory_mb),
            "-nodefaults", "-display", "none", "-vga", "none",
            "-uuid", str(s.uuid),
            "-smbios",
            f"type=1,manufacturer={_option(s.vendor)},product={_option(s.product)},"
            f"serial={_option(s.serial)}",
            "-netdev", f"tap,id=n0,ifname={s.tap},script=no,downscript=no",
            "-device", nic,
            "-drive", f"file={_option(str(self.disk))},if=none,id=d0,format={s.disk_format}",
            "-device",
            f"virtio-blk-pci,id=disk0,drive=d0,bootindex={disk_index},"
            f"serial={_option(s.serial[:17])}-D0",
            "-chardev", f"file,id=serial0,path={_option(str(self.serial_log))},append=on",
            "-serial", "chardev:serial0",
            "-monitor", "none",
            "-qmp", f"unix:{_option(str(self.qmp_path))},server=on,wait=off",
        ]  # fmt: skip
        if s.firmware == "uefi":
            args += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={_option(str(self.vars))}",
            ]  # fmt: skip
        return args

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, first: str) -> None:
        """Start QEMU booting ``first`` first; returns once QMP answers, by which time
        the machine has been reset and the guest runs."""
        self.qmp_path.unlink(missing_ok=True)
        args = self.command(first)
        if self.namespace is not None:
            args = self.namespace.exec_args(args)
        with (self.workdir / "qemu.log").open("ab") as output:
            self.process = spawn(args, output)
        self._first = first
        deadline = time.monotonic() + _START_SECONDS
        while True:
            try:
                self.qmp = Qmp.connect(self.qmp_path, timeout=30, wait=1)
                return
            except (OSError, QmpClosed) as exc:
                # Until QEMU listens, unless it already gave up (a bad option, say).
                if self.running and time.monotonic() < deadline:
                    continue
                self.kill()
                text = (self.workdir / "qemu.log").read_text(errors="replace")[-2000:]
                raise VmError(f"QEMU for {self.spec.name} did not start: {exc}\n{text}") from exc

    def boot_order(self) -> dict[str, int]:
        """The NIC's and the disk's bootindex, as QEMU has them now."""
        assert self.qmp is not None
        return {
            path: int(self.qmp.execute("qom-get", {"path": path, "property": "bootindex"}))
            for path in (NIC, DISK)
        }

    def set_first(self, first: str) -> None:
        """Make ``first`` the first boot device from the next reset on."""
        assert self.qmp is not None
        if first == self._first:
            return
        order = self.boot_order()
        other = DISK if first == NIC else NIC
        self._first = first
        if order[first] < order[other]:
            return
        # QEMU refuses a bootindex another device holds: park one on a free index.
        for path, index in ((other, max(order.values()) + 1), (first, 1), (other, 2)):
            self.qmp.execute("qom-set", {"path": path, "property": "bootindex", "value": index})

    def reset(self) -> Event:
        """``system_reset``, returning QEMU's RESET event: the reset is done by then
        (QEMU sends it after the devices' reset, the firmware's boot order included)."""
        assert self.qmp is not None
        self.qmp.execute("system_reset")
        return self.qmp.wait_event("RESET", timeout=30)

    def quit(self, timeout: float = 15.0) -> None:
        """Power off: QEMU quits at once; killed if it does not."""
        if self.qmp is not None:
            with contextlib.suppress(QmpClosed, QmpError, OSError):
                self.qmp.execute("quit")
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._closed()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)
        self._closed()

    def _closed(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.process is not None and self.process.poll() is not None:
            self.process = None


class VmFirmware:
    """The `Firmware` of a machine that is a VM. The BMC's packet thread only queues
    work; one thread per VM starts QEMU (so it lives as long as QEMU may: QEMU gets
    SIGKILL when it ends), talks QMP, and notices the guest powering itself off."""

    def __init__(self, machine: Machine, vm: Vm) -> None:
        self.machine = machine
        self.vm = vm
        self.errors: list[str] = []  # the last 20 things that went wrong, for a status
        self._work: queue.Queue[tuple[str, BootDevice]] = queue.Queue()
        self._last_reset = 0.0  # QEMU's timestamp of the last reset
        self._thread = threading.Thread(target=self._run, name=f"vm {machine.name}", daemon=True)
        self._thread.start()

    # --- lab.machine.Firmware ------------------------------------------------------

    def booted(self, device: BootDevice) -> None:
        self._work.put(("boot", device))

    def powered_off(self) -> None:
        self._work.put(("off", BootDevice.NONE))

    # --- beyond the protocol -----------------------------------------------------------

    def press_power_button(self) -> None:
        """ACPI power button (IPMI soft off): the guest decides whether to power off."""
        self._work.put(("button", BootDevice.NONE))

    def close(self) -> None:
        """Power the VM off and end its thread."""
        self._work.put(("close", BootDevice.NONE))
        self._thread.join(timeout=60)
        self.vm.kill()  # only if the thread could not

    def _run(self) -> None:
        while True:
            try:
                action, device = self._work.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                action, device = "", BootDevice.NONE
            try:
                if action == "close":
                    self.vm.quit()
                    return
                self._do(action, device)
                self._follow()
            except (OSError, QmpClosed, QmpError, TimeoutError, VmError) as exc:
                # QEMU died under a command, or refused it: the next round sees which.
                self.errors[:] = [*self.errors[-19:], f"{action or 'watch'}: {exc}"]
                log.warning("VM %s: %s: %s", self.machine.name, action or "watch", exc)
                if action == "boot" and not self.vm.running:
                    self.machine.powered_off_by_itself()  # it never came on

    def _do(self, action: str, device: BootDevice) -> None:
        vm = self.vm
        if action:
            self._note(f"BMC: {action} {device.name.lower()}, flags {self.machine.boot}")
        if action == "boot":
            if vm.running:
                vm.set_first(first_device(device))
                self._last_reset = vm.reset().timestamp
            else:
                vm.start(first_device(device))
        elif action == "off":
            vm.quit()
        elif action == "button" and vm.qmp is not None:
            vm.qmp.execute("system_powerdown")

    def _follow(self) -> None:
        """Keep QEMU's state and the machine's in step between commands."""
        vm = self.vm
        if vm.process is not None and not vm.running:
            # QEMU exited and no command of ours asked it to: the guest powered off.
            vm.kill()
            self.machine.powered_off_by_itself()
            return
        if vm.qmp is None:
            return
        for event in vm.qmp.events():
            self._note(f"event {event.name} {event.data} at {event.timestamp:.3f}")
            if event.name != "RESET":
                continue
            if event.data.get("guest") and event.timestamp > self._last_reset + _SAME_BOOT_SECONDS:
                self._guest_reset()
            self._last_reset = event.timestamp
        if time.time() < self._last_reset + _SAME_BOOT_SECONDS:
            return
        # The order the BMC's flags name for the next boot, should the guest reset.
        flags = self.machine.boot
        vm.set_first(first_device(BootDevice(flags.device) if flags.valid else BootDevice.DISK))

    def _note(self, line: str) -> None:
        """A line of the VM's ``events.log``: what QEMU reported and the BMC did."""
        stamp = time.strftime("%H:%M:%S")
        with (self.vm.workdir / "events.log").open("a") as out:
            out.write(f"{stamp} {line}\n")

    def _guest_reset(self) -> None:
        """The guest rebooted (an installer's or the agent's ``reboot``): it booted from
        the order set for the next boot, so a next-boot-only request is used up, as the
        machine's firmware does when the BMC resets it."""
        flags = self.machine.boot
        used = BootDevice(flags.device) if flags.valid else BootDevice.DISK
        self.machine.boots.append(used.name.lower() + ("-uefi" if flags.uefi else ""))
        self._note(f"guest reset: booted {used.name.lower()}, flags {flags}")
        if flags.valid and not flags.persistent:
            self.machine.set_boot_flags(BootFlags(valid=False, persistent=False, uefi=flags.uefi))


class VmBmc(LabBmc):
    """The lab BMC of a VM: soft off presses the ACPI button instead of emulating an OS
    that shuts down at once; the power state then follows the guest."""

    def power_shutdown(self) -> int:
        firmware = self.machine.firmware
        if not isinstance(firmware, VmFirmware):
            return super().power_shutdown()
        if not self.machine.power_on:
            return super().power_shutdown()  # refused as the machine refuses it
        firmware.press_power_button()
        return OK


# --- the service the VMs boot from ----------------------------------------------------

SERVICE_PORT = 8080


def start_service(network: LabNetwork, home: Path, agent_dir: Path, api_port: int = 0) -> str:
    """``provisioner serve`` in ``network``'s namespace on the bridge (HTTP, TFTP, and the
    DHCP hops read from the network's dnsmasq log), its files in ``home``, its API
    forwarded to the host's 127.0.0.1:``api_port`` (a free port when 0), an admin token
    for it in ``home/admin-token``, the build of the agent directory ``agent_dir`` as its
    deploy agent. Returns the API's URL on the host
    once the service is ready; the network's closing stops it."""
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    boot_url = f"http://{network.address}:{SERVICE_PORT}"
    # The lab's service is its own: none of the operator's PROVISIONER_* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env.update(
        PROVISIONER_DATA_DIR=str(data),
        PROVISIONER_TFTP_ENABLED="1",
        PROVISIONER_TFTP_ADDRESS=network.address,
        PROVISIONER_TFTP_PORT="69",
        PROVISIONER_TFTP_ROOT=str(home / "tftp"),
        PROVISIONER_DHCP_LOG=str(network.dhcp_log),
        PROVISIONER_BOOT_URL=boot_url,
    )
    network.dhcp_log.touch()  # the network's dnsmasq, started later, appends to it
    # Answered quickly, a VM's agent is noticed quickly when it stops (a TCG boot is slow
    # enough already).
    env.update(PROVISIONER_AGENT_HEARTBEAT_INTERVAL="2", PROVISIONER_AGENT_HEARTBEAT_TIMEOUT="60")
    agent = build.current(agent_dir)
    if agent is not None:
        _install_agent(agent, data)
    program = shutil.which("provisioner", path=f"{Path(sys.executable).parent}:{env['PATH']}")
    if program is None:
        raise VmError("--vms needs the provisioner command (pip install the project)")

    def offline(*command: str) -> str:
        done = subprocess.run([program, *command], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise VmError(f"provisioner {command[0]} {command[1]}: {done.stderr[-1000:]}")
        return done.stdout

    offline("pxe", "assets", "--root", str(home / "tftp"))
    token_file = home / "admin-token"
    if not token_file.exists():
        token = offline("token", "create", "--scope", "admin", "--name", "lab").strip()
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(token + "\n")
    serve = [program, "serve", "--host", network.address, "--port", str(SERVICE_PORT)]
    service = network.run(serve, home / "service.log", env)
    api = network.forward(SERVICE_PORT, api_port)
    url = f"http://127.0.0.1:{api.port}"
    deadline = time.monotonic() + 120
    while not _ready(url):
        if service.poll() is not None or time.monotonic() > deadline:
            raise VmError(f"the service did not start; see {home / 'service.log'}")
        time.sleep(0.5)
    return url


def _install_agent(agent: build.Agent, data_dir: Path) -> None:
    """Make ``agent`` the service's own build, as ``provisioner agent build`` with its
    data directory would (the lab's service leaves PROVISIONER_AGENT_DIR unset): the
    service then boots it for discovery, inspection, image deploys and wipes. A copy, so
    a rebuild while the lab runs does not change its service's agent."""
    into = data_dir / "agent" / agent.key
    shutil.copytree(agent.directory, into, dirs_exist_ok=True)
    (data_dir / "agent" / "current").write_text(agent.key + "\n")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
