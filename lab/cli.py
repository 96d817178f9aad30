"""``provisioner-lab``: start a lab of virtual BMCs and the machines behind them, and
change their faults while it runs.

provisioner-lab up --nodes 48 --manifest rack.csv --seed 7 \
    --tftp 127.0.0.1:6969 --ipxe-url http://127.0.0.1:8000/boot/bootstrap.ipxe
provisioner-lab up --vms 2 --firmware mixed --manifest vms.csv   (root: QEMU VMs)
provisioner-lab fault lab-r01-u03 no-answer
provisioner-lab status
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from lab import control, faults, rack, vm, vmnet
from lab.bmc import SESSION_IDLE_SECONDS
from lab.netboot import BOOT_MODES, DhcpOffer, NetbootSettings
from lab.redfish import options as redfish_options
from provisioner.agent import build
from provisioner.settings import default_agent_dir

DEFAULT_CONTROL_DIR = Path(".provisioner-lab")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.command(args)
    except (ValueError, LookupError, OSError, vm.VmError, vmnet.NetworkError) as exc:
        print(f"provisioner-lab: {exc}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    # The docstring's first paragraph, whole: its first line alone ends mid-sentence.
    summary = " ".join(__doc__.split("\n\n")[0].replace("``", "").split())
    parser = argparse.ArgumentParser(prog="provisioner-lab", description=summary)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start virtual BMCs and write their manifest")
    size = up.add_mutually_exclusive_group(required=True)
    size.add_argument("--nodes", type=int, help="number of emulated machines and their BMCs")
    size.add_argument(
        "--vms",
        type=int,
        metavar="N",
        help="number of QEMU VMs behind BMCs, with the service serving them on a private "
        "network (root; docs/lab-vms.md)",
    )
    up.add_argument(
        "--manifest",
        type=Path,
        default=Path("lab-manifest.csv"),
        help="manifest to write, CSV or .yaml (default: %(default)s)",
    )
    up.add_argument(
        "--seed",
        type=int,
        default=1,
        help="makes serials, MACs, passwords and packet drops reproducible",
    )
    up.add_argument(
        "--base-port",
        type=int,
        default=6230,
        help="UDP port of the first BMC; the others follow (default: %(default)s)",
    )
    up.add_argument("--address", default="127.0.0.1", help="address every BMC listens on")
    up.add_argument("--username", default="admin", help="BMC user name (default: %(default)s)")
    up.add_argument("--password", help="one password for every BMC (default: one per node)")
    up.add_argument("--role", help="role to write into the manifest (it must exist)")
    up.add_argument(
        "--power",
        choices=("on", "off"),
        default="off",
        help="power state the machines start in (default: %(default)s)",
    )
    up.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NODE=FAULT",
        help="e.g. lab-r01-u03=no-answer, =wrong-password, =slow:500, =drop:0.3, "
        "=boot-hang, =installer-silent, =installer-fails",
    )
    up.add_argument(
        "--faults", type=Path, metavar="FILE", help="YAML mapping of node name to fault, as --fault"
    )
    up.add_argument(
        "--per-process",
        type=int,
        default=rack.PER_PROCESS,
        help="BMCs per process (default: %(default)s)",
    )
    up.add_argument(
        "--session-timeout",
        type=float,
        default=SESSION_IDLE_SECONDS,
        metavar="SECONDS",
        help="a BMC drops a session idle this long (default: %(default)s)",
    )
    up.add_argument(
        "--control-dir",
        type=Path,
        default=DEFAULT_CONTROL_DIR,
        help="where the control sockets live (default: %(default)s)",
    )
    boot = up.add_argument_group(
        "network boot",
        "what a DHCP server would tell the machines; without both, a "
        "network boot gets no DHCP answer",
    )
    boot.add_argument("--tftp", metavar="HOST:PORT", help="next-server: the pxe TFTP server")
    boot.add_argument(
        "--ipxe-url",
        metavar="URL",
        help="script URL handed to iPXE, e.g. http://SVC/boot/bootstrap.ipxe",
    )
    boot.add_argument(
        "--boot-mode",
        action="append",
        default=[],
        metavar="MODE|NODE=MODE",
        help="bios (undionly.kpxe, the default) or uefi (ipxe.efi), lab-wide or per node",
    )
    defaults = NetbootSettings()
    boot.add_argument(
        "--install-time",
        type=float,
        default=defaults.install_seconds,
        metavar="SECONDS",
        help="the installer's work between its started and done callbacks (default: %(default)s)",
    )
    boot.add_argument(
        "--reboot-delay",
        type=float,
        default=defaults.reboot_seconds,
        metavar="SECONDS",
        help="from an installer's done until the machine boots again (default: %(default)s)",
    )
    boot.add_argument(
        "--sleep-scale",
        type=float,
        default=defaults.sleep_scale,
        metavar="FACTOR",
        help="an iPXE 'sleep N' waits N x FACTOR seconds (default: %(default)s)",
    )
    redfish_options.add(up)
    vms = up.add_argument_group("VMs (with --vms)")
    vms.add_argument(
        "--firmware",
        choices=("bios", "uefi", "mixed"),
        default="bios",
        help="the VMs' firmware; mixed alternates, bios first (default: %(default)s)",
    )
    vms.add_argument(
        "--uefi-pxe",
        choices=("ipxe", "edk2"),
        default="ipxe",
        help="UEFI network boot by QEMU's iPXE ROM or by OVMF's own PXE client, which "
        "fetches snponly.efi over TFTP (default: %(default)s)",
    )
    vms.add_argument(
        "--api-port",
        type=int,
        default=0,
        help="host port at 127.0.0.1 forwarded to the service (default: a free one)",
    )
    vms.add_argument(
        "--workdir",
        type=Path,
        help="the VMs' disks and logs, the service's data, the admin token "
        "(default: CONTROL_DIR/vms; keep it short, unix sockets live in it)",
    )
    vms.add_argument(
        "--agent-dir",
        type=Path,
        default=default_agent_dir(),
        help="agent directory whose build (provisioner agent build) the lab's service "
        "boots to discover, inspect, deploy and wipe (default: %(default)s)",
    )
    vms.add_argument(
        "--unlisted",
        type=int,
        default=0,
        metavar="N",
        help="leave the last N VMs out of the manifest, to be discovered when they "
        "network-boot (default: %(default)s)",
    )
    up.set_defaults(command=_up)

    fault = commands.add_parser("fault", help="set a running node's fault ('none' clears it)")
    fault.add_argument("node")
    fault.add_argument("fault", metavar="FAULT")
    fault.add_argument("--control-dir", type=Path, default=DEFAULT_CONTROL_DIR)
    fault.set_defaults(command=_fault)

    status = commands.add_parser(
        "status", help="power, boot flags, boot progress, installed OS and fault of every node"
    )
    status.add_argument("--control-dir", type=Path, default=DEFAULT_CONTROL_DIR)
    status.set_defaults(command=_status)

    # Options after "image" are the image builder's (Typer) to parse: argparse reads no
    # prefix of its own there.
    image = commands.add_parser(
        "image", help="the deployable test image", add_help=False, prefix_chars="\0"
    )
    image.add_argument("rest", nargs=argparse.REMAINDER)
    image.set_defaults(command=_image)
    return parser


def _image(args: argparse.Namespace) -> int:
    # Imported when asked for: with Typer and the settings loaded, a lab serving BMCs
    # grows by megabytes more under a login storm (tests/lab/test_sessions.py).
    from lab import image

    return image.run(args.rest)


def _up(args: argparse.Namespace) -> int:
    if args.vms is not None:
        return _up_vms(args)
    began = time.monotonic()
    if not 1 <= args.per_process <= 900:
        raise ValueError("--per-process takes 1 to 900 (select() stops near 1,024 sockets)")
    node_faults = _node_faults(args)
    boot_mode, boot_modes = _boot_modes(args.boot_mode)
    netboot = NetbootSettings(
        dhcp=_dhcp(args.tftp, args.ipxe_url),
        install_seconds=_seconds(args.install_time, "--install-time"),
        reboot_seconds=_seconds(args.reboot_delay, "--reboot-delay"),
        sleep_scale=_seconds(args.sleep_scale, "--sleep-scale"),
    )
    plans = rack.plan_rack(
        args.nodes,
        seed=args.seed,
        base_port=args.base_port,
        address=args.address,
        username=args.username,
        password=args.password,
        node_faults=node_faults,
        boot_mode=boot_mode,
        boot_modes=boot_modes,
        **redfish_options.plan(args),
    )
    rack.write_manifest(args.manifest, plans, role=args.role, driver=redfish_options.driver(args))
    processes = -(-len(plans) // args.per_process)
    last_port = plans[-1].port
    print(
        f"starting {len(plans)} BMCs on {args.address}:{args.base_port}-{last_port} "
        f"in {processes} process(es){redfish_options.describe(args)}; manifest {args.manifest}",
        flush=True,
    )
    if netboot.dhcp is None:
        print("network boot: no DHCP answer (give --tftp and --ipxe-url)", flush=True)
    else:
        dhcp = netboot.dhcp
        print(f"network boot: next-server {dhcp.tftp_host}:{dhcp.tftp_port}, iPXE {dhcp.ipxe_url}")
    # Every boot hop, one line each; httpx's own request lines would repeat them with
    # the deployment tokens in their URLs.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("lab").setLevel(logging.INFO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    progress = _Progress(len(plans), processes, began)
    settings = rack.LabSettings(
        seed=args.seed,
        control_dir=args.control_dir,
        power_on=args.power == "on",
        session_timeout=args.session_timeout,
        netboot=netboot,
        **redfish_options.settings(args),
    )
    ok = rack.run(plans, settings, per_process=args.per_process, on_event=progress.event, stop=stop)
    print("lab stopped" if ok else "lab failed to start", flush=True)
    return 0 if ok else 1


VM_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "dnsmasq": "dnsmasq-base",
    "ip": "iproute2",
}


def _up_vms(args: argparse.Namespace) -> int:
    """``up --vms N``: a lab network, the service serving it, N VMs behind BMCs, all in
    this process (its main thread starts the service; each VM's thread its QEMU)."""
    began = time.monotonic()
    if args.power == "on":
        raise ValueError("--vms starts the VMs off: power them on through their BMCs")
    redfish_options.refuse_with_vms(args)
    if not 0 <= args.unlisted < args.vms:
        raise ValueError("--unlisted must leave at least one of the --vms in the manifest")
    if args.tftp or args.ipxe_url or args.boot_mode:
        raise ValueError(
            "--vms boot from the lab's own service and DHCP server: --tftp, --ipxe-url "
            "and --boot-mode are for --nodes (choose the VMs' firmware with --firmware)"
        )
    needs = [f"{tool} (Debian: {VM_TOOLS[tool]})" for tool in VM_TOOLS if not shutil.which(tool)]
    if os.geteuid() != 0:
        needs.append("root (network namespaces and taps)")
    if needs:
        raise ValueError(f"--vms needs {', '.join(needs)}")
    workdir = (args.workdir or args.control_dir / "vms").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("lab").setLevel(logging.INFO)
    # While starting, SIGINT and SIGTERM unwind (leaving the network stops what runs),
    # even where the shell started the lab with SIGINT ignored (a background job).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        return _serve_vms(args, workdir, began)
    except KeyboardInterrupt:
        print("lab stopped while starting", flush=True)
        return 1


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _serve_vms(args: argparse.Namespace, workdir: Path, began: float) -> int:
    with vmnet.LabNetwork(workdir / "net") as network:
        plans = rack.plan_rack(
            args.vms,
            seed=args.seed,
            base_port=args.base_port,
            address=network.address,
            username=args.username,
            password=args.password,
            node_faults=_node_faults(args),
            macs_per_node=1,  # a VM has one NIC
        )
        # mixed: every other VM is UEFI, the first BIOS.
        uefi = {"bios": (), "uefi": (0, 1), "mixed": (1,)}[args.firmware]
        plans = [
            dataclasses.replace(p, boot_mode="uefi" if p.index % 2 in uefi else "bios")
            for p in plans
        ]
        service = workdir / "service"
        url = vm.start_service(network, service, args.agent_dir, args.api_port)
        token = service / "admin-token"
        print(
            f"service: {url} (log {service / 'service.log'}); admin token in {token}: "
            f"export PROVISIONER_URL={url} PROVISIONER_TOKEN=$(cat {token})",
            flush=True,
        )
        if build.current(args.agent_dir) is None:
            print(
                f"no agent built in {args.agent_dir} (provisioner agent build): "
                "the VMs cannot be inspected from the inside, deployed with images or wiped",
                flush=True,
            )
        boot_url = f"http://{network.address}:{vm.SERVICE_PORT}"
        network.start_dhcp(boot_url, snponly=args.uefi_pxe == "edk2")
        rack.write_manifest(args.manifest, plans[: len(plans) - args.unlisted], role=args.role)
        print(
            f"starting {len(plans)} VMs ({args.firmware}) behind BMCs on "
            f"{network.address}:{args.base_port}-{plans[-1].port} in namespace "
            f"{network.namespace.name} (ipmitool there: ip netns exec "
            f"{network.namespace.name} ipmitool -I lanplus -H {network.address} -p PORT ...); "
            f"manifest {args.manifest}; VM files in {workdir}",
            flush=True,
        )
        settings = rack.LabSettings(
            seed=args.seed, control_dir=args.control_dir, session_timeout=args.session_timeout
        )
        progress = _Progress(len(plans), 1, began)
        failed = threading.Event()
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())

        def report(event: tuple[Any, ...]) -> None:
            if event[0] == "failed":
                failed.set()
            progress.event("main", event)

        rack.serve_vms(plans, settings, network, workdir, report, stop, uefi_pxe=args.uefi_pxe)
    print("lab stopped" if not failed.is_set() else "lab failed to start", flush=True)
    return 1 if failed.is_set() else 0


class _Progress:
    """Prints the start-up of one or many serving processes as one story."""

    def __init__(self, total: int, processes: int, began: float) -> None:
        self.total = total
        self.processes = processes
        self.began = began
        self.started: dict[str, int] = {}
        self.ready: dict[str, tuple[int, list[str], int]] = {}

    def event(self, label: str, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "started":
            self.started[label] = event[1]
            print(f"  started {sum(self.started.values())}/{self.total}", flush=True)
        elif kind == "failed":
            print(f"  {label}: {event[1]}", file=sys.stderr, flush=True)
        elif kind == "ready":
            self.ready[label] = (event[1], event[2], event[3])
            if len(self.ready) == self.processes:
                self._summary()

    def _summary(self) -> None:
        answering = sum(r[0] for r in self.ready.values())
        silent = [name for r in self.ready.values() for name in r[1]]
        rss_mib = sum(r[2] for r in self.ready.values()) / 1024
        seconds = time.monotonic() - self.began
        quiet = f"; silent: {', '.join(silent)}" if silent else ""
        print(
            f"lab up: {answering}/{self.total} BMCs answering in {seconds:.1f} s, "
            f"{self.processes} process(es), {rss_mib:.0f} MiB RSS{quiet}; Ctrl-C stops",
            flush=True,
        )


def _dhcp(tftp: str | None, ipxe_url: str | None) -> DhcpOffer | None:
    if tftp is None and ipxe_url is None:
        return None
    if tftp is None or ipxe_url is None:
        raise ValueError("--tftp and --ipxe-url go together: DHCP gives a machine both")
    host, sep, port = tftp.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--tftp takes HOST:PORT, not {tftp!r}")
    if not ipxe_url.startswith(("http://", "https://")):
        raise ValueError(f"--ipxe-url takes an http(s) URL, not {ipxe_url!r}")
    return DhcpOffer(host, int(port), ipxe_url)


def _boot_modes(values: list[str]) -> tuple[str, dict[str, str]]:
    """``--boot-mode uefi`` for the whole lab, ``--boot-mode NODE=uefi`` for one node."""
    default, per_node = "bios", {}
    for value in values:
        node, sep, mode = value.rpartition("=")
        if mode not in BOOT_MODES:
            raise ValueError(f"unknown boot mode {mode!r} in {value!r}; known: bios, uefi")
        if sep:
            per_node[node.strip().lower()] = mode
        else:
            default = mode
    return default, per_node


def _seconds(value: float, option: str) -> float:
    if not 0 <= value <= 3600:
        raise ValueError(f"{option} takes 0 to 3600, not {value:g}")
    return value


def _node_faults(args: argparse.Namespace) -> dict[str, faults.Fault]:
    node_faults = _faults_file(args.faults) if args.faults else {}
    node_faults.update(faults.parse_assignment(text) for text in args.fault)
    return node_faults


def _faults_file(path: Path) -> dict[str, faults.Fault]:
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of node name to fault")
    return {str(node).lower(): faults.parse_fault(str(text)) for node, text in document.items()}


def _fault(args: argparse.Namespace) -> int:
    answer = control.set_fault(args.control_dir, args.node, faults.parse_fault(args.fault))
    if "error" in answer:
        raise ValueError(answer["error"])
    print(f"{answer['node']}: {answer['fault']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    print(json.dumps(control.status(args.control_dir), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
