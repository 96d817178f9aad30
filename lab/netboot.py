"""Emulated machines that boot like machines: when one is powered on (on, cycle, reset),
its firmware boots the device its boot flags name. From the network it does what a real
machine does, against the service's real endpoints: DHCP (answered by the lab's command
line), its bootloader over TFTP, the iPXE scripts over HTTP (`lab.ipxe`), kernel and
initrd, then an "installer" that reads its answer file and makes the callbacks written
in it (`lab.installer`), records the installed OS and reboots. From the disk it runs
that OS, if any.

Every boot of a serving process runs on one asyncio loop in one thread, so the BMCs'
packet thread only hands a boot over and hundreds of machines boot at once without a
thread each. Each machine sends from its own loopback address (127.1.x.y), so the
service sees one boot address per machine as on a real network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from lab import installer, ipxe, tftp_client
from lab.faults import FaultGate, Kind
from lab.machine import BootDevice, BootProgress, InstalledOs, Machine

log = logging.getLogger(__name__)

# The firmware asks DHCP for the loader of its kind (option 93); iPXE then reports its
# ${platform} and ${buildarch}.
BOOT_MODES = {
    "bios": ("undionly.kpxe", "pcbios", "i386"),
    "uefi": ("ipxe.efi", "efi", "x86_64"),
}
_DISKS = frozenset({BootDevice.NONE, BootDevice.DISK, BootDevice.DISK_SAFE, BootDevice.REMOTE_DISK})
_FIRST_SOURCE = int(ipaddress.IPv4Address("127.1.0.0"))
_TFTP_BLKSIZE = 1432  # what iPXE and most PXE ROMs ask for on a 1500-byte MTU
_CALLBACK_TRIES = 5  # as the answer files' own curl --retry 5
_DEPLOYMENT = re.compile(r"\(deployment (\w+)\)")
_SECRET_SEGMENT = re.compile(r"/(answers|callback)/[^/?\s]+")
_SECRET_QUERY = re.compile(r"([?&]token=)[^&\s]+")


def source_address(index: int) -> str:
    """Node ``index``'s address on the boot network: 127.1.0.1, 127.1.0.2, ..."""
    return str(ipaddress.IPv4Address(_FIRST_SOURCE + index + 1))


@dataclass(frozen=True)
class DhcpOffer:
    """What a DHCP server would tell a booting machine: the TFTP server (next-server)
    and, once iPXE runs, the script URL."""

    tftp_host: str
    tftp_port: int
    ipxe_url: str


@dataclass(frozen=True)
class NetbootSettings:
    dhcp: DhcpOffer | None = None  # None: network boots get no DHCP answer
    install_seconds: float = 0.5  # the installer's work between `started` and `done`
    reboot_seconds: float = 0.5  # from `done` until the machine boots again
    # iPXE ``sleep N`` waits N x this: the service's scripts sleep 10-30 s before a
    # retry, which is realistic and slow for a test.
    sleep_scale: float = 0.1
    http_timeout: float = 30.0


class Netboot:
    """The boots of every machine of one serving process, on one asyncio loop."""

    def __init__(self, settings: NetbootSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        # One TLS context for every client: building one costs ~60 ms (it reads the CA
        # bundle), which 500 machines would pay at every boot.
        self.tls = ssl.create_default_context()
        self._thread = threading.Thread(target=self.loop.run_forever, name="netboot", daemon=True)
        self._firmwares: list[_Firmware] = []

    def start(self) -> None:
        self._thread.start()

    def attach(self, machine: Machine, gate: FaultGate, index: int) -> None:
        firmware = _Firmware(self, machine, gate, source_address(index))
        self._firmwares.append(firmware)
        machine.firmware = firmware

    def call(self, action: Callable[..., None], *args: Any) -> None:
        self.loop.call_soon_threadsafe(action, *args)

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._halt_all(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        self.loop.close()

    async def _halt_all(self) -> None:
        tasks = [f.task for f in self._firmwares if f.task is not None and not f.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Firmware:
    """One machine's firmware and what it boots. Its methods other than `booted` and
    `powered_off` run on the netboot loop only."""

    def __init__(self, netboot: Netboot, machine: Machine, gate: FaultGate, address: str) -> None:
        self.netboot = netboot
        self.settings = netboot.settings
        self.machine = machine
        self.gate = gate
        self.address = address
        self.task: asyncio.Task[None] | None = None
        if machine.power_on:  # racked running: whatever its disk holds
            self._local_disk("powered on at start")

    # --- called from the BMC's thread ------------------------------------------

    def booted(self, device: BootDevice) -> None:
        self.netboot.call(self._restart, device)

    def powered_off(self) -> None:
        self.netboot.call(self._halt)

    # --- on the loop -----------------------------------------------------------

    def _restart(self, device: BootDevice) -> None:
        self._cancel()
        self.task = self.netboot.loop.create_task(self._boot(device))

    def _halt(self) -> None:
        self._cancel()
        self.hop("off", "powered off")

    def _cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None

    def hop(self, state: str, message: str) -> None:
        self.machine.progress = BootProgress(state, message)
        log.info("%s %s: %s", self.machine.name, self.address, message)

    async def _boot(self, device: BootDevice) -> None:
        try:
            if device is BootDevice.PXE:
                await self._network()
            elif device in _DISKS:
                self._local_disk("boot device disk")
            else:
                self.hop("no-bootable-media", f"boot device {device.name.lower()}: nothing there")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a lab bug must show on the machine, not kill the loop
            log.exception("%s: boot failed", self.machine.name)
            self.hop("boot-error", f"emulation error: {exc!r}")

    def _local_disk(self, why: str) -> None:
        installed = self.machine.installed
        if installed is None:
            self.hop("no-bootable-disk", f"{why}: no bootable disk")
        else:
            self.hop("os-running", f"{why}: {installed.image} running")

    async def _network(self) -> None:
        if self.gate.fault.kind is Kind.BOOT_HANG:
            self.hop("hung", "boot hangs before DHCP (fault boot-hang)")
            return
        dhcp = self.settings.dhcp
        if dhcp is None:
            self.hop("no-dhcp-answer", "PXE: no DHCP answer")
            return
        loader, platform, arch = BOOT_MODES[self.machine.boot_mode]
        self.hop("booting", f"DHCP: next-server {dhcp.tftp_host}:{dhcp.tftp_port}, file {loader}")
        try:
            data = await tftp_client.fetch(
                dhcp.tftp_host,
                dhcp.tftp_port,
                loader,
                blksize=_TFTP_BLKSIZE,
                tsize=True,
                local_address=self.address,
            )
        except (tftp_client.TftpError, TimeoutError, OSError) as exc:
            # PXE ROMs give up and try the next boot device.
            self._local_disk(f"TFTP {loader} failed ({exc or 'timed out'}); next boot device")
            return
        self.hop("booting", f"TFTP {loader}: {len(data)} bytes")
        mac = self.machine.macs[0] if self.machine.macs else ""
        variables = {
            "net0/mac": mac,
            "mac": mac,
            "net0/ip": self.address,
            "ip": self.address,
            "platform": platform,
            "buildarch": arch,
            "uuid": str(self.machine.uuid),
            "serial": self.machine.inventory.serial,
            "manufacturer": self.machine.inventory.vendor,
            "product": self.machine.inventory.product,
        }
        transport = httpx.AsyncHTTPTransport(local_address=self.address, verify=self.netboot.tls)
        async with httpx.AsyncClient(
            transport=transport, timeout=self.settings.http_timeout
        ) as http:
            host = _Host(self, http)
            try:
                outcome = await ipxe.run(dhcp.ipxe_url, variables, host)
            except ipxe.ScriptError as exc:
                self.hop("boot-failed", f"iPXE: {_redact(str(exc))}")
                return
            if isinstance(outcome, ipxe.LocalBoot):
                self._local_disk(f"iPXE {_redact(outcome.reason)}")
            elif isinstance(outcome, ipxe.Reboot):
                self.hop("rebooting", "iPXE reboot")
                self.machine.reboot()
            else:
                await self._installer(host, outcome)

    async def _installer(self, host: _Host, boot: ipxe.Installer) -> None:
        wipe = installer.wipe_callback(boot.args)
        if wipe is not None:
            await self._wipe(host, wipe)
            return
        answer = installer.answer_of(boot.args)
        if answer is None:
            self.hop("installer-failed", "installer: no answer file on the kernel command line")
            return
        self.hop("installer-running", "installer started")
        try:
            text = await host.text(answer.url, "answer file")
        except ipxe.FetchError as exc:
            self.hop("installer-failed", f"installer could not fetch its answer file: {exc}")
            return
        calls = installer.callbacks(text, is_yaml=answer.yaml)
        self.machine.installed = None  # partitioning starts: the old OS is gone
        fault = self.gate.fault.kind
        if fault is Kind.INSTALLER_SILENT:
            self.hop("installer-running", "installer never calls back (fault installer-silent)")
            return
        if fault is Kind.INSTALLER_FAILS:
            await host.call(calls, "started")
            await host.call(calls, "failed", "lab fault installer-fails: the installer failed")
            self.hop("installer-failed", "installer failed (fault installer-fails)")
            return
        await host.call(calls, "started")
        await asyncio.sleep(self.settings.install_seconds)
        await host.call(calls, "progress")
        await host.call(calls, "done")
        console = _DEPLOYMENT.search(" ".join(boot.console))
        image = installer.image_of(text) or "unknown"
        self.machine.installed = InstalledOs(image, console[1] if console else None)
        await self._reboot(f"installed {image}")

    async def _wipe(self, host: _Host, url: str) -> None:
        self.hop("installer-running", "wipe image started")
        calls = [installer.Callback(f"{url}/{kind}", kind, None) for kind in ("started", "done")]
        await host.call(calls, "started")
        await asyncio.sleep(self.settings.install_seconds)
        self.machine.installed = None
        await host.call(calls, "done")
        await self._reboot("disk wiped")

    async def _reboot(self, what: str) -> None:
        self.hop("rebooting", f"{what}; rebooting in {self.settings.reboot_seconds:g} s")
        await asyncio.sleep(self.settings.reboot_seconds)
        self.machine.reboot()


class _Host:
    """The network side of one boot: iPXE's downloads and the installer's requests."""

    def __init__(self, firmware: _Firmware, http: httpx.AsyncClient) -> None:
        self.firmware = firmware
        self.http = http

    def hop(self, message: str) -> None:
        self.firmware.hop(self.firmware.machine.progress.state, message)

    async def script(self, url: str) -> str:
        return await self.text(url, "iPXE script")

    async def text(self, url: str, what: str) -> str:
        try:
            response = await self.http.get(url)
        except httpx.HTTPError as exc:
            self.hop(f"{what} {_redact(url)}: {exc!r}")
            raise ipxe.FetchError(repr(exc)) from exc
        self.hop(
            f"{what} {_redact(url)}: HTTP {response.status_code}, {len(response.content)} bytes"
        )
        if response.status_code >= 400:
            raise ipxe.FetchError(f"HTTP {response.status_code}")
        return response.text

    async def file(self, url: str, what: str) -> int:
        size = 0
        try:
            async with self.http.stream("GET", url) as response:
                async for chunk in response.aiter_raw():
                    size += len(chunk)
        except httpx.HTTPError as exc:
            self.hop(f"{what} {_redact(url)}: {exc!r}")
            raise ipxe.FetchError(repr(exc)) from exc
        self.hop(f"{what} {_redact(url)}: HTTP {response.status_code}, {size} bytes")
        if response.status_code >= 400:
            raise ipxe.FetchError(f"HTTP {response.status_code}")
        return size

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.firmware.settings.sleep_scale)

    async def call(
        self, calls: list[installer.Callback], kind: str, message: str | None = None
    ) -> None:
        """Every callback of ``kind`` the answer file makes, retried as its curl would."""
        wanted = [c for c in calls if c.kind == kind]
        if not wanted:
            self.hop(f"the answer file makes no {kind} callback")
        for callback in wanted:
            body = callback.body
            if body is None and message is not None:
                body = json.dumps({"message": message})
            headers = {"Content-Type": "application/json"} if body else {}
            outcome = "no answer"
            for attempt in range(_CALLBACK_TRIES):
                if attempt:
                    await asyncio.sleep(1.0 * self.firmware.settings.sleep_scale)
                try:
                    response = await self.http.post(
                        callback.url, content=body or b"", headers=headers
                    )
                except httpx.TransportError as exc:
                    outcome = repr(exc)
                    continue
                outcome = f"HTTP {response.status_code}"
                if response.status_code < 500:
                    break
            self.hop(f"callback {kind} {_redact(callback.url)}: {outcome}")


def _redact(text: str) -> str:
    """URLs without the deployment token (path segment or ?token=) for logs and status."""
    return _SECRET_QUERY.sub(r"\1…", _SECRET_SEGMENT.sub(r"/\1/…", text))
