"""``provisioner demo``: the whole mission on one machine, in a directory of its own.

A lab rack of emulated servers (virtual BMCs on loopback; machines that network-boot over
the service's real TFTP and HTTP), the service on SQLite with its TFTP server on a high
port, two roles, the lab's rack manifest imported, and a live view until every node is
active; then the Ansible inventory, one node's timeline, and where the API is. Nothing is
sent anywhere but 127.0.0.1.

Each run gets a fresh directory under the system's temporary directory: the service's and
the lab's logs stay there after the demo (it says where), and the rest (database, boot
files, lab manifest, token) is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from provisioner.cli.client import CliError
from provisioner.cli.output import cell, console, events_table, info
from provisioner.cli.progress import watch

ROLES = ("compute", "storage")
IMAGE = "lab-rocky-9"
IPXE_SOURCE = Path("/usr/lib/ipxe")


@dataclass
class _Demo:
    workdir: Path
    """Database, boot files, lab manifest and token: removed at the end unless --keep."""
    logs: Path
    """service.log and lab.log: kept."""
    url: str
    tftp_port: int
    env: dict[str, str]
    token: str = ""


def demo(
    nodes: Annotated[int, typer.Option(min=2, max=500, help="Machines in the lab rack.")] = 12,
    vms: Annotated[
        int,
        typer.Option(
            min=0,
            max=8,
            help="Real QEMU VMs instead of emulated machines: the deploy agent inspects them "
            "and writes an image to their disks (needs root, qemu-system-x86, ovmf, dnsmasq).",
        ),
    ] = 0,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=10,
            help="Seconds to wait for every node to be active (default: 300, with --vms 1800).",
        ),
    ] = None,
    keep_running: Annotated[
        bool, typer.Option(help="Leave the service and the lab up until Ctrl-C.")
    ] = False,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Keep the whole run directory (database, boot files, lab manifest, token), "
            "not only the logs.",
        ),
    ] = False,
) -> None:
    """Rack, inspect, provision by role and hand off a lab rack, end to end."""
    run_dir = Path(tempfile.mkdtemp(prefix="provisioner-demo-"))
    info(f"logs: {run_dir / 'service.log'} and {run_dir / 'lab.log'}")
    try:
        if vms:
            # Imported here: it reads the settings (pydantic), which the client commands
            # sharing this CLI do not load.
            from provisioner.cli.demo_vms import run_vms

            run_vms(run_dir, vms, timeout or 1800, keep_running)
        else:
            _run(run_dir, nodes, timeout or 300, keep_running)
    finally:
        # Said last, after the report or an error, so that it is where the eye ends up.
        if keep:
            info(f"kept in {run_dir}: service.log, lab.log, work/ (database, boot files, token)")
        else:
            shutil.rmtree(run_dir / "work", ignore_errors=True)
            info(f"logs kept in {run_dir}: service.log, lab.log")


def _run(run_dir: Path, nodes: int, timeout: float, keep_running: bool) -> None:
    bin_dir = Path(sys.executable).parent
    with _processes() as procs:
        run = _prepare(run_dir / "work", run_dir)
        run.token = _offline_token(bin_dir, run.env)
        procs.append(
            _start(
                bin_dir / "provisioner",
                ["serve", "--port", run.url.rsplit(":")[-1]],
                run,
                "service.log",
            )
        )
        _wait_ready(run.url, procs[-1], run.logs / "service.log")
        api = httpx.Client(base_url=run.url, headers={"Authorization": f"Bearer {run.token}"})
        _catalogue(api)
        manifest = run.workdir / "rack.csv"
        lab_args = [
            "up",
            "--nodes",
            str(nodes),
            "--manifest",
            str(manifest),
            "--base-port",
            str(free_udp_block(nodes)),
            "--tftp",
            f"127.0.0.1:{run.tftp_port}",
            "--ipxe-url",
            f"{run.url}/boot/bootstrap.ipxe",
            "--control-dir",
            str(run.workdir / "lab"),
        ]
        procs.append(_start(bin_dir / "provisioner-lab", lab_args, run, "lab.log"))
        _wait_file(manifest, procs[-1], run.logs / "lab.log")
        _assign_roles(manifest)
        rack = import_manifest(api, manifest)
        info(f"imported {nodes} nodes into rack {rack}; the service takes it from here")

        def fetch() -> list[dict[str, Any]]:
            page = api.get("/api/v1/nodes", params={"rack": rack, "limit": 1000})
            items: list[dict[str, Any]] = page.json()["items"]
            return items

        watch(fetch, "active", f"rack {rack}", timeout, interval=0.5)
        _report(api, run, fetch()[0]["name"])
        if keep_running:
            info("the service and the lab keep running; Ctrl-C ends the demo")
            with suppress(KeyboardInterrupt):
                signal.pause()


def _prepare(workdir: Path, logs: Path) -> _Demo:
    port, tftp_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    tftp_root = workdir / "tftp"
    tftp_root.mkdir(parents=True)
    for name in ("undionly.kpxe", "ipxe.efi"):
        if (IPXE_SOURCE / name).is_file():
            shutil.copyfile(IPXE_SOURCE / name, tftp_root / name)
        else:
            # Lab machines fetch the bootloader but do not run it: a stand-in keeps the
            # demo going on a machine without Debian's ipxe package.
            (tftp_root / name).write_bytes(b"lab stand-in for iPXE (apt-get install ipxe)\n")
    images = workdir / "images" / "lab"
    images.mkdir(parents=True)
    # Small boot files: the demo shows the flow, bench/boot_storm.py measures throughput.
    (images / "vmlinuz").write_bytes(os.urandom(256 << 10))
    (images / "initrd.img").write_bytes(os.urandom(1 << 20))
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env.update(
        PROVISIONER_DATA_DIR=str(workdir / "data"),
        PROVISIONER_URL=url,
        PROVISIONER_IMAGES_DIR=str(workdir / "images"),
        PROVISIONER_BOOT_URL=url,
        PROVISIONER_TFTP_ENABLED="1",
        PROVISIONER_TFTP_ADDRESS="127.0.0.1",
        PROVISIONER_TFTP_PORT=str(tftp_port),
        PROVISIONER_TFTP_ROOT=str(tftp_root),
        PROVISIONER_RECONCILE_INTERVAL="0.25",
        PROVISIONER_POWER_SYNC_INTERVAL="0",
    )
    return _Demo(workdir, logs, url, tftp_port, env)


def _offline_token(bin_dir: Path, env: dict[str, str]) -> str:
    created = subprocess.run(
        [bin_dir / "provisioner", "token", "create", "--scope", "admin", "--name", "demo"],
        env=env,
        capture_output=True,
        text=True,
    )
    if created.returncode != 0:
        raise CliError(f"could not create a token: {created.stderr.strip()}")
    token = created.stdout.strip()
    env["PROVISIONER_TOKEN"] = token
    return token


def _catalogue(api: httpx.Client) -> None:
    image = {
        "name": IMAGE,
        "os_family": "rhel",
        "version": "9",
        "kernel_url": "lab/vmlinuz",
        "initrd_url": "lab/initrd.img",
        "repo_url": "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/",
        "answer_template": "kickstart",
    }
    _created(api.post("/api/v1/images", json=image), "image")
    for role in ROLES:
        body = {"name": role, "default_image": IMAGE, "description": f"lab {role} nodes"}
        _created(api.post("/api/v1/roles", json=body), f"role {role}")


def import_manifest(api: httpx.Client, manifest: Path) -> str:
    """Import the lab's manifest; the rack its nodes are in."""
    imported = api.post(
        "/api/v1/racks/import",
        content=manifest.read_bytes(),
        headers={"Content-Type": "text/csv"},
        timeout=120,
    )
    if imported.status_code != 201:
        raise CliError(f"the lab manifest was not imported: {imported.text}")
    rack: str = imported.json()["nodes"][0]["rack"]
    return rack


def _created(response: httpx.Response, what: str) -> None:
    if response.status_code != 201:
        raise CliError(f"could not create the {what}: {response.text}")


def _assign_roles(manifest: Path) -> None:
    """The first half of the rack computes, the rest stores."""
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for index, row in enumerate(rows):
        row["role"] = ROLES[0] if index < len(rows) / 2 else ROLES[1]
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _report(api: httpx.Client, run: _Demo, example: str) -> None:
    out = console()
    inventory = api.get("/api/v1/handoff/ansible").json()
    out.print("\n[bold]Ansible inventory[/bold] (provisioner ansible-inventory --list)")
    for group, members in sorted(inventory.items()):
        if group in ("_meta", "all"):
            continue
        hosts = members.get("hosts", []) if isinstance(members, dict) else members
        if hosts:
            out.print(cell(f"  {group}: {', '.join(hosts)}"))
    out.print(f"\n[bold]Timeline of {example}[/bold] (provisioner node events {example})")
    events_table(api.get(f"/api/v1/nodes/{example}/events").json())
    out.print(
        f"\nWeb view: {run.url}/ui, API docs: {run.url}/docs (with --keep-running; sign in "
        f"with the token in {run.workdir}/token)"
    )
    token_file = run.workdir / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(run.token + "\n")


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _start(program: Path, args: list[str], run: _Demo, log: str) -> subprocess.Popen[bytes]:
    out = (run.logs / log).open("wb")
    return subprocess.Popen([program, *args], env=run.env, stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        _still_running(proc, log)
        time.sleep(0.1)
    raise CliError(f"the service did not become ready in 30 s; see {log}")


def _wait_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.is_file() and path.stat().st_size:
            return
        _still_running(proc, log)
        time.sleep(0.1)
    raise CliError(f"the lab did not write its manifest in 60 s; see {log}")


def _still_running(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise CliError(f"{log.stem} exited ({proc.returncode}):\n{log.read_text()[-2000:]}")


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_block(count: int) -> int:
    """The first of ``count`` free consecutive UDP ports from 20000 up (below the
    kernel's ephemeral range), for the lab's BMCs."""
    for base in range(20000, 32000 - count, 499):
        held: list[socket.socket] = []
        try:
            for offset in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise CliError(f"no {count} consecutive free UDP ports on 127.0.0.1")
