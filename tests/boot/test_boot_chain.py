"""The whole boot chain against a real ``provisioner serve`` process with its embedded
TFTP server, walked hop by hop with curl the way a machine would: bootloader over TFTP,
bootstrap and per-node iPXE scripts, kernel and initrd, the kickstart, and the callbacks
the kickstart itself contains. Then the node's timeline shows every hop. (The machine
never runs the bootloader it fetches, so stand-in bytes serve; tests/pxe fetch Debian's
real iPXE binaries.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update

from provisioner.models import Node, table_of
from tests.serving import BIN, Served, free_udp_port

MAC = "52:54:00:12:34:56"
REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Served]:
    if shutil.which("curl") is None:
        if REQUIRE_TOOLS:
            pytest.fail("PROVISIONER_REQUIRE_TOOLS=1 but curl is missing")
        pytest.skip("needs curl")
    # No reconciler: nothing drives the power here, the test walks the hops itself.
    served = Served(tmp_path, reconciler="false")
    try:
        yield served
    finally:
        served.stop()
        # Secrets never reach the log: neither the API token nor any deployment token.
        assert served.env["PROVISIONER_TOKEN"] not in served.log.read_text()


def curl(*args: str) -> bytes:
    return subprocess.run(["curl", "-fsS", *args], capture_output=True, check=True).stdout


def test_a_machine_boots_through_every_hop(service: Served) -> None:
    api = service.api
    image = {
        "name": "tiny",
        "os_family": "rhel",
        "version": "9",
        "kernel_url": "tiny/vmlinuz",
        "initrd_url": "tiny/initrd.img",
        "repo_url": "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/",
        "answer_template": "kickstart",
    }
    assert api.post("/api/v1/images", json=image).status_code == 201
    role = {"name": "compute", "default_image": "tiny"}
    assert api.post("/api/v1/roles", json=role).status_code == 201
    node = {
        "name": "r01-u07",
        "rack": "r01",
        "bmc": {
            "driver": "ipmi",
            "address": "127.0.0.1",
            "port": 9,
            "username": "a",
            "password": "bmc-pw",
        },
        "nics": [{"mac": MAC, "pxe": True}],
    }
    assert api.post("/api/v1/nodes", json=node).status_code == 201
    # No BMC behind this node: the inspection the reconciler would do is written directly.
    database = Path(service.env["PROVISIONER_DATA_DIR"]) / "provisioner.db"
    engine = create_engine(f"sqlite:///{database}")
    with engine.begin() as connection:
        connection.execute(update(table_of(Node)).values(state="ready"))
    engine.dispose()
    provision = api.post("/api/v1/nodes/r01-u07/actions/provision", json={"role": "compute"})
    assert provision.status_code == 202

    # 1. The firmware fetches iPXE over TFTP.
    loader = curl("--tftp-blksize", "1468", f"tftp://127.0.0.1:{service.tftp_port}/undionly.kpxe")
    assert loader == (service.tftp_root / "undionly.kpxe").read_bytes()

    # 2. iPXE runs the bootstrap script DHCP named, which chains by MAC.
    bootstrap = curl(f"{service.url}/boot/bootstrap.ipxe").decode()
    chain = re.search(r"chain --autofree (\S+)", bootstrap)
    assert chain
    script_url = (
        chain.group(1)
        .replace("${net0/mac}", MAC)
        .replace("${platform}", "pcbios")
        .replace("${buildarch}", "i386")
    )
    script = curl(script_url).decode()

    # 3. The per-node script: kernel and initrd from the images directory, and the answer.
    kernel = re.search(r"^kernel --name kernel (\S+) (.*?) \|\| goto failed$", script, re.M)
    initrd = re.search(r"^initrd --name initrd (\S+) \|\| goto failed$", script, re.M)
    assert kernel, script
    assert initrd, script
    assert curl(kernel.group(1)) == (service.images / "vmlinuz").read_bytes()
    assert curl(initrd.group(1)) == (service.images / "initrd.img").read_bytes()
    answer_url = re.search(r"inst\.ks=(\S+)", kernel.group(2))
    assert answer_url
    kickstart = curl(answer_url.group(1)).decode()

    # 4. The installer makes the callbacks its kickstart contains, in order.
    calls = [line for line in kickstart.splitlines() if "/callback/" in line]
    for kind in ("started", "progress", "done"):
        (line,) = [c for c in calls if re.search(rf"/callback/\S+/{kind}\b", c)]
        subprocess.run(["sh", "-c", line], check=True, timeout=30)

    # 5. The timeline tells the whole story, and the CLI shows it.
    wanted = [
        "boot-tftp",
        "boot-ipxe",
        "boot-file",
        "boot-file",
        "boot-answer",
        "callback-started",
        "callback-progress",
        "callback-done",
    ]
    deadline = time.monotonic() + 10
    while True:
        kinds = [e["kind"] for e in api.get("/api/v1/nodes/r01-u07/events").json()]
        if all(kinds.count(k) >= wanted.count(k) for k in wanted):
            break
        assert time.monotonic() < deadline, kinds
        time.sleep(0.1)
    shown = subprocess.run(
        [BIN / "provisioner", "node", "events", "r01-u07"],
        env=service.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for text in (
        "TFTP undionly.kpxe",
        "iPXE script: install tiny",
        "tiny/vmlinuz",
        "answer file served",
        "installer done",
    ):
        assert text in " ".join(shown.split()), (text, shown)
    deployment_token = answer_url.group(1).rsplit("/", 1)[-1]
    assert deployment_token not in shown


def test_tftp_refuses_escapes_through_the_service(service: Served) -> None:
    for name in ("../../etc/passwd", "/etc/passwd"):
        result = subprocess.run(
            ["curl", "-fsS", f"tftp://127.0.0.1:{service.tftp_port}/{name}"],
            capture_output=True,
        )
        assert result.returncode != 0
        assert b"root:" not in result.stdout


def test_standalone_pxe_serves_per_mac_files_from_the_api(service: Served) -> None:
    """``provisioner pxe serve --api``: a PXELINUX machine's per-MAC file comes from the
    service, and the transfer lands on the node's timeline."""
    api = service.api
    node = {
        "name": "r01-u08",
        "bmc": {
            "driver": "ipmi",
            "address": "127.0.0.1",
            "port": 9,
            "username": "a",
            "password": "bmc-pw",
        },
        "nics": [{"mac": MAC, "pxe": True}],
    }
    assert api.post("/api/v1/nodes", json=node).status_code == 201
    port = free_udp_port()
    pxe = subprocess.Popen(
        [
            BIN / "provisioner",
            "pxe",
            "serve",
            "--api",
            service.url,
            "--tftp-address",
            "127.0.0.1",
            "--tftp-port",
            str(port),
            "--root",
            str(service.tftp_root),
        ],
        env=service.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        name = f"pxelinux.cfg/01-{MAC.replace(':', '-')}"
        deadline = time.monotonic() + 15
        while True:
            result = subprocess.run(
                ["curl", "-fsS", f"tftp://127.0.0.1:{port}/{name}"], capture_output=True
            )
            if result.returncode == 0:
                break
            assert pxe.poll() is None, pxe.communicate()[0].decode()
            assert time.monotonic() < deadline, result.stderr
            time.sleep(0.2)
        assert "LOCALBOOT 0" in result.stdout.decode()
        assert "r01-u08 is enrolled" in result.stdout.decode()

        deadline = time.monotonic() + 10
        while True:
            events = api.get("/api/v1/nodes/r01-u08/events").json()
            if any(
                e["kind"] == "boot-tftp" and "TFTP pxelinux.cfg" in e["message"] for e in events
            ):
                break
            assert time.monotonic() < deadline, events
            time.sleep(0.1)
    finally:
        pxe.terminate()
        output = pxe.communicate(timeout=10)[0].decode()
    assert pxe.returncode == 0, output
    assert service.env["PROVISIONER_TOKEN"] not in output
