"""A lab rack: N virtual BMCs on one address, their manifest, and the processes that
serve them. One process serves up to ``per_process`` BMCs (pyghmi waits on its sockets
with select(), which stops working near 1,024 descriptors); more BMCs are spread over
worker processes that the calling process supervises. A lab of QEMU VMs
(:func:`serve_vms`) is always served by one process, from its main thread.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import functools
import multiprocessing
import os
import random
import signal
import socket
import string
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab import faults
from lab.bmc import SESSION_IDLE_SECONDS, LabBmc
from lab.control import ControlServer
from lab.machine import VM_PRODUCT, Machine, build_machine
from lab.netboot import BOOT_MODES, Netboot, NetbootSettings
from lab.packet_loop import PacketLoop
from lab.redfish import serving
from lab.redfish.control import RedfishControl
from lab.redfish.dialects import Dialect, parse_dialect
from lab.redfish.server import RedfishServer
from lab.redfish.server import probe as probe_redfish
from lab.redfish.tls import Certificate
from lab.vm import VmBmc, VmFirmware, attach
from lab.vmnet import LabNetwork

UNITS_PER_RACK = 42
MACS_PER_NODE = 2
PER_PROCESS = 250
# Which BMCs each node has: IPMI on UDP port P, Redfish over HTTPS on TCP port P, or both.
PROTOCOLS = ("ipmi", "redfish", "both")
MANIFEST_COLUMNS = (
    "name",
    "rack",
    "u",
    "role",
    "bmc_address",
    "bmc_port",
    "bmc_username",
    "bmc_password",
    "macs",
)


@dataclass(frozen=True)
class NodePlan:
    """One node of the lab: where its BMC listens and what the manifest says of it."""

    index: int
    name: str
    rack: str
    u: int
    address: str
    port: int
    username: str
    password: str
    macs: tuple[str, ...]
    fault: faults.Fault = faults.NO_FAULT
    boot_mode: str = "bios"  # which network bootloader its firmware asks for
    dialect: Dialect = Dialect.GENERIC  # of its Redfish BMC


def plan_rack(
    count: int,
    *,
    seed: int,
    base_port: int,
    address: str = "127.0.0.1",
    username: str = "admin",
    password: str | None = None,
    node_faults: dict[str, faults.Fault] | None = None,
    boot_mode: str = "bios",
    boot_modes: dict[str, str] | None = None,
    macs_per_node: int = MACS_PER_NODE,
    dialect: str = Dialect.GENERIC,
    dialects: dict[str, str] | None = None,
) -> list[NodePlan]:
    """Nodes lab-r01-u01 ... with 42 per rack. MACs (52:54:00:xx:xx:xx, unique,
    ``macs_per_node`` each) and, unless one shared ``password`` is given, per-node
    passwords follow from ``seed``. Every node boots in ``boot_mode`` but those named
    in ``boot_modes``, and its Redfish BMC speaks ``dialect`` but for those named in
    ``dialects``."""
    if not 1 <= count <= 10_000:
        raise ValueError("a lab has 1 to 10000 nodes")
    if base_port < 1 or base_port + count - 1 > 65535:
        raise ValueError(f"ports {base_port}..{base_port + count - 1} are not all valid")
    node_faults = dict(node_faults or {})
    boot_modes = dict(boot_modes or {})
    default_dialect = parse_dialect(dialect)
    node_dialects = {name: parse_dialect(value) for name, value in (dialects or {}).items()}
    for mode in (boot_mode, *boot_modes.values()):
        if mode not in BOOT_MODES:
            raise ValueError(f"unknown boot mode {mode!r}; known: {', '.join(BOOT_MODES)}")
    # Reproducible on purpose: lab passwords protect nothing, and a rerun with the same
    # seed must give the same manifest.
    rng = random.Random(f"{seed}/rack")  # noqa: S311
    suffixes = rng.sample(range(1 << 24), count * macs_per_node)
    alphabet = string.ascii_letters + string.digits
    plans = []
    for index in range(count):
        rack, unit = divmod(index, UNITS_PER_RACK)
        name = f"lab-r{rack + 1:02d}-u{unit + 1:02d}"
        own = suffixes[index * macs_per_node : (index + 1) * macs_per_node]
        secret = "".join(rng.choice(alphabet) for _ in range(16))
        plans.append(
            NodePlan(
                index=index,
                name=name,
                rack=f"lab-r{rack + 1:02d}",
                u=unit + 1,
                address=address,
                port=base_port + index,
                username=username,
                password=password if password is not None else secret,
                macs=tuple(_mac(value) for value in own),
                fault=node_faults.pop(name, faults.NO_FAULT),
                boot_mode=boot_modes.pop(name, boot_mode),
                dialect=node_dialects.pop(name, default_dialect),
            )
        )
    if node_faults:
        raise ValueError(f"faults given for nodes the lab does not have: {', '.join(node_faults)}")
    if boot_modes:
        raise ValueError(
            f"boot modes given for nodes the lab does not have: {', '.join(boot_modes)}"
        )
    if node_dialects:
        raise ValueError(
            f"dialects given for nodes the lab does not have: {', '.join(node_dialects)}"
        )
    return plans


def _mac(value: int) -> str:
    return "52:54:00:" + ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in (16, 8, 0))


def write_manifest(
    path: Path, plans: Sequence[NodePlan], role: str | None = None, driver: str | None = None
) -> None:
    """The rack manifest of docs/rack-manifest.md: YAML for .yaml/.yml, CSV otherwise.
    A ``driver`` adds the column ``bmc_driver`` to every row (``redfish`` for a lab of
    Redfish BMCs)."""
    extra = {"bmc_driver": driver} if driver else {}
    rows: list[dict[str, Any]] = [
        {
            "name": plan.name,
            "rack": plan.rack,
            "u": plan.u,
            "role": role,
            "bmc_address": plan.address,
            "bmc_port": plan.port,
            "bmc_username": plan.username,
            "bmc_password": plan.password,
            "macs": list(plan.macs),  # the first is the NIC the node PXE-boots from
            **extra,
        }
        for plan in plans
    ]
    tmp = path.with_name(path.name + ".tmp")
    # The rows hold the BMC passwords in the clear: the owner's only, whatever the umask
    # (fchmod too, for a leftover .tmp of another mode and for a umask above 0o177).
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with open(os.open(tmp, flags, 0o600), "w", newline="") as out:
        os.fchmod(out.fileno(), 0o600)
        if path.suffix.lower() in (".yaml", ".yml"):
            nodes = [{k: v for k, v in row.items() if v is not None} for row in rows]
            yaml.safe_dump({"nodes": nodes}, out, sort_keys=False)
        else:
            writer = csv.DictWriter(out, fieldnames=[*MANIFEST_COLUMNS, *extra])
            writer.writeheader()
            writer.writerows({**row, "macs": " ".join(row["macs"])} for row in rows)
    tmp.replace(path)


# --- serving -----------------------------------------------------------------------

Report = Callable[[tuple[Any, ...]], None]
"""Progress from a serving process: ("started", n), ("ready", answering, silent names,
RSS in KiB) or ("failed", message)."""


@dataclass(frozen=True)
class LabSettings:
    """What every serving process of one lab shares."""

    seed: int
    control_dir: Path
    power_on: bool = False
    session_timeout: float = SESSION_IDLE_SECONDS
    netboot: NetbootSettings = field(default_factory=NetbootSettings)
    protocol: str = "ipmi"  # one of PROTOCOLS
    # The Redfish BMCs' certificate, made by `run` once per lab; None with redfish_http.
    certificate: Certificate | None = None
    redfish_http: bool = False  # plain HTTP instead of HTTPS, for debugging


def serve(
    plans: Sequence[NodePlan], settings: LabSettings, report: Report, stop: threading.Event
) -> None:
    """Serve ``plans`` in this process until ``stop`` is set: each node's IPMI BMC, its
    Redfish BMC, or both, in front of one machine."""
    loop = PacketLoop()
    netboot = Netboot(settings.netboot)
    redfish: RedfishServer | None = None
    if settings.protocol != "ipmi":
        redfish = RedfishServer(None if settings.redfish_http else settings.certificate)
        redfish.start()
    try:
        for done, plan in enumerate(plans, 1):
            machine = build_machine(plan.name, plan.index, settings.seed, list(plan.macs))
            machine.power_on = settings.power_on
            machine.boot_mode = plan.boot_mode
            gate = faults.FaultGate(settings.seed, plan.name, plan.fault)
            netboot.attach(machine, gate, plan.index)
            if settings.protocol != "redfish":
                loop.bmcs.append(_bmc(LabBmc, machine, plan, gate, loop, settings))
            if redfish is not None:
                redfish.add(serving.redfish_bmc(machine, plan, gate, settings))
            if done % 50 == 0 or done == len(plans):
                report(("started", done))
    except OSError as exc:
        report(("failed", f"cannot listen on {plan.address}:{plan.port}: {_bind_advice(exc)}"))
        netboot.close()
        if redfish is not None:
            redfish.close()
        return
    netboot.start()
    thread = threading.Thread(target=loop.run, name="bmc-packets", daemon=True)
    thread.start()
    ipmi = {bmc.machine.name: bmc for bmc in loop.bmcs}
    control = (
        ControlServer(settings.control_dir, ipmi)
        if redfish is None
        else RedfishControl(settings.control_dir, ipmi, redfish.bmcs)
    )
    control.start()
    try:
        silent = _silent(plans, settings.protocol)
        report(("ready", len(plans) - len(silent), silent, process_rss_kib()))
        while not stop.wait(0.5):
            pass
    finally:
        control.close()
        loop.stop()
        thread.join(timeout=5)
        if redfish is not None:
            redfish.close()
        netboot.close()
        for bmc in loop.bmcs:
            bmc.close()


def _silent(plans: Sequence[NodePlan], protocol: str) -> list[str]:
    """The nodes whose BMCs do not answer, leaving out those told not to. A Redfish BMC
    answers when it accepts connections (which a ``no-answer`` one does too)."""
    expected = [p.port for p in plans if p.fault.kind is not faults.Kind.NO_ANSWER]
    answered = set(expected) if protocol == "redfish" else probe(plans[0].address, expected)
    if protocol != "ipmi":
        answered &= probe_redfish(plans[0].address, [p.port for p in plans])
    return [p.name for p in plans if p.port not in answered]


def serve_vms(
    plans: Sequence[NodePlan],
    settings: LabSettings,
    network: LabNetwork,
    workdir: Path,
    report: Report,
    stop: threading.Event,
    *,
    uefi_pxe: str = "ipxe",
) -> None:
    """Serve ``plans`` as QEMU VMs on ``network`` (files in ``workdir/<name>``) until
    ``stop`` is set, in this process and from this thread: each VM's QEMU is started by
    a thread of its own, and the network's closing stops them. The BMCs listen inside
    the network's namespace on ``plan.address`` (the bridge's), where the service that
    serves the VMs reaches them."""
    settings.control_dir.mkdir(parents=True, exist_ok=True)
    loop = PacketLoop()
    firmwares: dict[str, VmFirmware] = {}
    try:
        for plan in plans:
            machine = build_machine(plan.name, plan.index, settings.seed, list(plan.macs))
            machine.inventory = dataclasses.replace(machine.inventory, product=VM_PRODUCT)
            machine.boot_mode = plan.boot_mode
            firmwares[plan.name] = attach(machine, network, workdir / plan.name, uefi_pxe=uefi_pxe)
            gate = faults.FaultGate(settings.seed, plan.name, plan.fault)

            # Bound by a thread inside the namespace: the socket lives there.
            bmc = functools.partial(_bmc, VmBmc, machine, plan, gate, loop, settings)
            loop.bmcs.append(network.namespace.inside(bmc))
        report(("started", len(plans)))
    except OSError as exc:
        report(("failed", f"cannot listen on {plan.address}:{plan.port}: {_bind_advice(exc)}"))
        return
    thread = threading.Thread(target=loop.run, name="bmc-packets", daemon=True)
    thread.start()
    control = _VmControl(settings.control_dir, {b.machine.name: b for b in loop.bmcs}, firmwares)
    control.start()
    try:
        expected = [p.port for p in plans if p.fault.kind is not faults.Kind.NO_ANSWER]
        answered = network.namespace.inside(lambda: probe(plans[0].address, expected))
        silent = [p.name for p in plans if p.port not in answered]
        report(("ready", len(plans) - len(silent), silent, process_rss_kib()))
        while not stop.wait(0.5):
            pass
    finally:
        control.close()
        loop.stop()
        thread.join(timeout=5)
        for each in loop.bmcs:
            each.close()


class _VmControl(ControlServer):
    """The control socket of a VM lab: a node's status also says whether its QEMU runs
    and what went wrong driving it."""

    def __init__(self, directory: Path, bmcs: dict[str, Any], vms: dict[str, VmFirmware]) -> None:
        super().__init__(directory, bmcs)
        self._vms = vms

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = super().answer(request)
        if request.get("op") == "status":
            for name, firmware in self._vms.items():
                answer["nodes"][name]["vm"] = {
                    "qemu": "running" if firmware.vm.running else "stopped",
                    "firmware": firmware.vm.spec.firmware,
                    "workdir": str(firmware.vm.workdir),
                    "errors": firmware.errors[-5:],
                }
        return answer


def _bind_advice(exc: OSError) -> str:
    """Why a BMC's port could not be had, and the option of ``provisioner-lab up`` that
    changes it."""
    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
        return f"{exc.strerror}; choose other ports with --base-port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{exc.strerror}; choose an address of this machine with --address"
    return str(exc.strerror or exc)


def run(
    plans: Sequence[NodePlan],
    settings: LabSettings,
    *,
    per_process: int = PER_PROCESS,
    on_event: Callable[[str, tuple[Any, ...]], None],
    stop: threading.Event,
) -> bool:
    """Serve the lab until ``stop`` is set: in this process when it fits in one, else
    in worker processes. ``on_event(process label, event)`` sees every report. Returns
    False if a process failed to start."""
    settings.control_dir.mkdir(parents=True, exist_ok=True)
    if settings.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {settings.protocol!r}; known: {', '.join(PROTOCOLS)}")
    # One certificate for every Redfish BMC of the lab, made before any worker is forked.
    settings = serving.with_certificate(settings, plans[0].address)
    if len(plans) <= per_process:
        failed = threading.Event()

        def report(event: tuple[Any, ...]) -> None:
            if event[0] == "failed":
                failed.set()
            on_event("main", event)

        serve(plans, settings, report, stop)
        return not failed.is_set()
    # Fork, not spawn: the children start with the modules already imported (4 workers
    # answer in 0.9 s instead of 2.5 s) and share those pages. Safe here because this
    # process runs no other thread yet: it never created a BMC or a queue feeder.
    context = multiprocessing.get_context("fork")
    events: Any = context.Queue()
    workers = []
    for start in range(0, len(plans), per_process):
        label = f"worker-{start // per_process + 1}"
        chunk = list(plans[start : start + per_process])
        worker = context.Process(target=_worker, name=label, args=(label, chunk, settings, events))
        worker.start()
        workers.append(worker)
    try:
        while not stop.is_set():
            try:
                label, event = events.get(timeout=0.2)
            except Exception:  # queue.Empty, or the queue torn down
                if any(not w.is_alive() for w in workers):
                    on_event("main", ("failed", "a worker process exited"))
                    return False
                continue
            on_event(label, event)
            if event[0] == "failed":
                return False
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: the worker stops its BMCs cleanly
        for worker in workers:
            worker.join(timeout=10)
    return True


def _worker(label: str, plans: list[NodePlan], settings: LabSettings, events: Any) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C reaches the whole process group; the supervisor decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(plans, settings, lambda event: events.put((label, event)), stop)


# --- checking that BMCs answer ------------------------------------------------------


# Get Channel Authentication Capabilities over IPMI 1.5 without a session: what every
# client sends first, and answered by a BMC without any login.
def _auth_cap_request() -> bytes:
    header = [0x20, 0x06 << 2]  # to the BMC, netfn application
    body = [0x81, 0x00, 0x38, 0x8E, 0x04]  # from software 81h: channel "this one", admin
    message = [*header, -sum(header) & 0xFF, *body, -sum(body) & 0xFF]
    # RMCP header, then an IPMI 1.5 session header with no session and no auth.
    return bytes([0x06, 0x00, 0xFF, 0x07, 0x00, *bytes(8), len(message), *message])


AUTH_CAPABILITIES_REQUEST = _auth_cap_request()


def probe(address: str, ports: Sequence[int], timeout: float = 10.0) -> set[int]:
    """The ports among ``ports`` whose BMC answers, asking again every 0.25 s."""
    waiting = set(ports)
    answered: set[int] = set()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for port in sorted(waiting):
                sock.sendto(AUTH_CAPABILITIES_REQUEST, (address, port))
            until = min(deadline, time.monotonic() + 0.25)
            while waiting and (left := until - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, sender = sock.recvfrom(512)
                except TimeoutError:
                    break
                if data[:4] == b"\x06\x00\xff\x07" and sender[1] in waiting:
                    waiting.discard(sender[1])
                    answered.add(sender[1])
    return answered


def process_rss_kib(pid: int | None = None) -> int:
    """Resident set size, from /proc (Linux)."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1])


def _bmc(
    kind: type[LabBmc],
    machine: Machine,
    plan: NodePlan,
    gate: faults.FaultGate,
    loop: PacketLoop,
    settings: LabSettings,
) -> LabBmc:
    """The BMC of ``plan``'s machine, of ``kind``, listening on the plan's address."""
    return kind(
        machine,
        plan.username,
        plan.password,
        gate,
        loop,
        plan.address,
        plan.port,
        session_timeout=settings.session_timeout,
    )
