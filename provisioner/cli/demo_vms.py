"""``provisioner demo --vms N``: the same mission with real machines.

N QEMU virtual machines (pure emulation; BIOS and UEFI in turn, the UEFI ones booting
through EDK2's own PXE client and TFTP) behind the lab's IPMI BMCs, in a private network
namespace where ``provisioner-lab up --vms`` runs DHCP and the service. The deploy agent
and the lab's test image are built from Debian's packages (cached in the data
directory, so only the first demo downloads them); the image is fed as qcow2 and
written by the agent. The rack goes from manifest import to ``active``: inspected from
the inside, image written and verified, booted from disk, handed off. Needs root (for
the namespace and taps) and Debian's qemu-system-x86, ovmf, dnsmasq and ipxe.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from provisioner.agent import build
from provisioner.cli.client import CliError
from provisioner.cli.demo import import_manifest
from provisioner.cli.output import console, events_table, info
from provisioner.cli.progress import watch
from provisioner.settings import default_agent_dir, default_data_dir

ROLE = "web"
IMAGE = "lab-image"
START_DEADLINE = 300


class _Lab:
    """``provisioner-lab up --vms`` as a process, its output in ``lab.log`` and read as
    it comes for the lines that say where the service is."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.lines: list[str] = []
        program = Path(sys.executable).parent / "provisioner-lab"
        self.process = subprocess.Popen(
            [str(program), "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.log.open("a") as out:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                out.write(line)
                out.flush()

    def line(self, start: str) -> str | None:
        return next((line for line in self.lines if line.startswith(start)), None)

    def wait_up(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while self.line("lab up:") is None:
            if self.process.poll() is not None:
                raise CliError("the VM lab stopped:\n" + "\n".join(self.lines[-20:]))
            if time.monotonic() > deadline:
                raise CliError(f"the VM lab did not come up in {START_DEADLINE} s; see {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(2)  # SIGINT: the lab unwinds namespace, VMs, service
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def run_vms(run_dir: Path, vms: int, timeout: float, keep_running: bool) -> None:
    agent_dir = default_agent_dir()
    info(
        f"building the deploy agent in {agent_dir} and the lab image in {default_data_dir()} "
        "(cached after the first)"
    )
    build.build(agent_dir, lambda line: info(f"  {line}"))
    qcow2 = run_dir / "lab.qcow2"
    _built_image(qcow2)
    work = run_dir / "work"
    manifest = work / "rack.csv"
    lab = _Lab(
        [
            "--vms", str(vms), "--firmware", "mixed", "--uefi-pxe", "edk2",
            "--role", ROLE,
            "--manifest", str(manifest),
            "--control-dir", str(work / "control"),
            "--workdir", str(work / "vms"),
            "--agent-dir", str(agent_dir),
        ],
        run_dir / "lab.log",
    )  # fmt: skip
    try:
        lab.wait_up()
        service = lab.line("service: ") or ""
        url = service.split()[1]
        token = Path(service.split("admin token in ")[1].split(":")[0]).read_text().strip()
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        _catalogue(api, qcow2)
        rack = import_manifest(api, manifest)
        info(
            f"imported {vms} VMs into rack {rack}; each boots the agent twice (inspection, "
            "image) and then its disk, a few minutes under emulation"
        )

        def fetch() -> list[dict[str, Any]]:
            page = api.get("/api/v1/nodes", params={"rack": rack, "limit": 1000})
            items: list[dict[str, Any]] = page.json()["items"]
            return items

        watch(fetch, "active", f"rack {rack}", timeout, interval=1.0)
        example = fetch()[0]["name"]
        out = console()
        out.print(f"\n[bold]Timeline of {example}[/bold] (provisioner node events {example})")
        events_table(api.get(f"/api/v1/nodes/{example}/events").json())
        out.print(
            f"\nEach VM's serial console: {work / 'vms'}/<node>/serial.log. The API: "
            f"export PROVISIONER_URL={url} PROVISIONER_TOKEN=$(cat "
            f"{service.split('admin token in ')[1].split(':')[0]})"
        )
        if keep_running:
            info("the lab and its service keep running; Ctrl-C ends the demo")
            lab.process.wait()
    except KeyboardInterrupt:
        info("demo interrupted")
    finally:
        lab.stop()
        # The demo keeps its logs beside lab.log; work/ (disks, data) may be removed.
        service_log = work / "vms" / "service" / "service.log"
        if service_log.exists():
            shutil.copyfile(service_log, run_dir / "service.log")


def _built_image(into: Path) -> None:
    program = Path(sys.executable).parent / "provisioner-lab"
    done = subprocess.run(
        [str(program), "image", "build", "--output", str(into), "--format", "qcow2"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise CliError(f"the lab image was not built:\n{done.stderr.strip()}")
    info(f"  {done.stdout.strip().splitlines()[-1]}")


def _catalogue(api: httpx.Client, qcow2: Path) -> None:
    image = {
        "name": IMAGE,
        "os_family": "other",
        "version": "1",
        "deploy": "image",
        "image_url": f"file://{qcow2}",
        "checksum": "sha256:" + hashlib.sha256(qcow2.read_bytes()).hexdigest(),
        "format": "qcow2",
    }
    role = {"name": ROLE, "default_image": IMAGE, "description": "lab VMs", "handoff": "immediate"}
    for path, body in (("/api/v1/images", image), ("/api/v1/roles", role)):
        created = api.post(path, json=body)
        if created.status_code != 201:
            raise CliError(f"could not create {body['name']}: {created.text}")
