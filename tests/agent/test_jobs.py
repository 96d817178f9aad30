"""The agent's jobs for real: one QEMU boot (BIOS, pure emulation) with two disks, whose
heartbeats a small service answers with the protocol's commands in turn - a deploy of a
gzipped image with its config drive, the same deploy again (answered from memory), then
deploys that must fail: an image the service cannot serve, a checksum that does not match,
a GPT image, an image whose partition covers the whole disk; a full wipe of one disk, a
metadata wipe of both and of a disk that does not exist - then power-off. The disks'
files are read back on the host: what the agent says it did must be what is there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from provisioner.agent import build
from tests.agent.fixtures import need, qemu_machine

# A boot is 15-25 s under emulation and the jobs write about 200 MiB; a busy CI machine
# takes 2-3x that.
DEADLINE = 480
MiB = 2**20
SECTOR = 512
TOKEN = "node-token"

# The deploy target: room for the image, a gap, and the 64 MiB config drive at the end.
# It starts filled with a pattern so what the agent zeroes can be told from what it left.
VDA_SIZE = 160 * MiB
# Smaller than the 128 MiB a metadata wipe zeroes, so that wipe covers it whole.
VDB_SIZE = 24 * MiB
PATTERN = b"\xa5"

META_DATA = {"uuid": "3f1c9a36-2a6e-4b4c-9d2e-5b7d1c0e8a41", "hostname": "node-7"}
USER_DATA = b"#cloud-config\nhostname: node-7\n"


def mbr_image(size: int, partitions: list[tuple[int, int, int]], seed: int) -> bytes:
    """``size`` random bytes whose first sector is an MBR with ``partitions`` (type,
    first sector, sector count): random, so a byte written wrong cannot go unseen."""
    data = bytearray(random.Random(seed).randbytes(size))
    data[446:512] = bytes(66)
    for slot, (kind, first, count) in enumerate(partitions):
        entry = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", kind, b"\xfe\xff\xff", first, count)
        data[446 + 16 * slot : 462 + 16 * slot] = entry
    data[510:512] = b"\x55\xaa"
    return bytes(data)


# 6 MiB and three sectors: the read-back must stop inside a MiB.
IMAGE = mbr_image(6 * MiB + 3 * SECTOR, [(0x83, 2048, 8192)], seed=1)
GPT_IMAGE = mbr_image(MiB, [(0xEE, 1, 2047)], seed=2)
# Its partition leaves no room for the config drive.
FULL_IMAGE = mbr_image(MiB, [(0x83, 2048, VDA_SIZE // SECTOR - 2048)], seed=3)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_drive_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in (
            ("openstack/latest/meta_data.json", json.dumps(META_DATA).encode()),
            ("openstack/latest/user_data", USER_DATA),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@dataclass
class Step:
    """One command the service gives when the agent is idle, and the image it serves
    while that command is the latest (None: it answers 404)."""

    command: str
    image: bytes | None = b""


@dataclass
class Service:
    steps: list[Step]
    vda: Path
    after_deploy: Path
    heartbeats: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    downloads: Counter[str] = field(default_factory=Counter)
    image: bytes | None = b""
    intrusion: list[str] = field(default_factory=lambda: ["wipe full /dev/vdb"])
    lock: threading.Lock = field(default_factory=threading.Lock)

    def heartbeat(self, busy: str) -> str:
        self.heartbeats.append(busy)
        if busy:
            # Once, a second job while the first runs: the agent must not start it.
            return self.intrusion.pop() if self.intrusion else "wait 1"
        if not self.steps:
            return "poweroff"
        step = self.steps.pop(0)
        self.image = step.image
        return step.command

    def result(self, body: dict[str, Any]) -> None:
        self.results.append(body)
        # The disk as the first deploy left it, before the later steps overwrite it: the
        # guest flushed it before posting, so the host file holds it.
        if body["command"] == "deploy" and body["ok"] and not self.after_deploy.exists():
            shutil.copyfile(self.vda, self.after_deploy)


def serve(service: Service) -> ThreadingHTTPServer:
    prefix = f"/agent/{TOKEN}/"

    class Handler(BaseHTTPRequestHandler):
        def answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            what = self.path.removeprefix(prefix)
            with service.lock:
                service.downloads[what] += 1
                body = {"image": service.image, "config-drive": config_drive_tar()}.get(what)
            if body is None:
                self.send_error(404)
                return
            self.answer(body)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            what = self.path.removeprefix(prefix)
            answer = ""
            with service.lock:
                if what == "heartbeat":
                    answer = service.heartbeat(body["busy"])
                elif what == "result":
                    service.result(body)
            self.answer(answer.encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def disk(path: Path, size: int) -> Path:
    path.write_bytes(PATTERN * size)
    return path


def mtools(*args: str) -> str:
    # mtools refuses a FAT whose geometry it finds odd unless told not to check.
    environment = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    done = subprocess.run(args, capture_output=True, text=True, check=True, env=environment)
    return done.stdout


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[tuple[Service, int]]:
    size = str(len(IMAGE))
    steps = [
        Step(f"deploy /dev/vda raw.gz {size} {sha256(IMAGE)}", gzip.compress(IMAGE)),
        Step(f"deploy /dev/vda raw.gz {size} {sha256(IMAGE)}", gzip.compress(IMAGE)),
        Step(f"deploy /dev/vda raw {size} {sha256(IMAGE)}", None),
        Step(f"deploy /dev/vda raw {size} {sha256(b'another image')}", IMAGE),
        Step(f"deploy /dev/vda raw {len(GPT_IMAGE)} {sha256(GPT_IMAGE)}", GPT_IMAGE),
        Step(f"deploy /dev/vda raw {len(FULL_IMAGE)} {sha256(FULL_IMAGE)}", FULL_IMAGE),
        Step("wipe full /dev/vdb"),
        Step("wipe metadata /dev/vda /dev/vdb /dev/vdz"),
    ]
    service = Service(steps, disk(tmp_path / "vda.raw", VDA_SIZE), tmp_path / "after-deploy.raw")
    disk(tmp_path / "vdb.raw", VDB_SIZE)
    server = serve(service)
    try:
        yield service, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_agent_deploys_and_wipes(
    agent: build.Agent, jobs: tuple[Service, int], tmp_path: Path
) -> None:
    need("mtype", "mlabel")
    service, port = jobs
    args = [
        *qemu_machine("bios", tmp_path),
        "-kernel", str(agent.kernel), "-initrd", str(agent.initrd),
        "-append", f"console=ttyS0 provisioner.url=http://10.0.2.2:{port} "
        f"provisioner.token={TOKEN} BOOTIF=01-52-54-00-a9-00-02 provisioner.heartbeat=1",
        "-netdev", "user,id=n0",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:a9:00:02",
        "-drive", f"file={service.vda},if=virtio,format=raw",
        "-drive", f"file={tmp_path / 'vdb.raw'},if=virtio,format=raw",
    ]  # fmt: skip
    try:
        subprocess.run(args, timeout=DEADLINE, check=True)
    except subprocess.TimeoutExpired:
        serial = (tmp_path / "serial.log").read_text(errors="replace")
        pytest.fail(f"the VM did not power off in {DEADLINE} s; console:\n{serial[-4000:]}")
    serial = (tmp_path / "serial.log").read_text(errors="replace")
    assert "provisioner-agent: powering off" in serial, serial[-4000:]
    assert [result["command"] for result in service.results] == [
        "deploy", "deploy", "deploy", "deploy", "deploy", "deploy", "wipe", "wipe",
    ], serial[-4000:]  # fmt: skip
    deployed, again, missing, mismatch, gpt, no_room, full, metadata = service.results

    # The heartbeat said what ran while it ran.
    assert set(service.heartbeats) == {"", "deploy", "wipe"}
    # The wipe sent while the first deploy ran was refused (it would have posted a result
    # before the second deploy's).
    assert service.intrusion == []
    assert "the deploy job is still running; 'wipe full /dev/vdb' is not started" in serial

    assert deployed == {
        "command": "deploy",
        "ok": True,
        "disk": "/dev/vda",
        "bytes": len(IMAGE),
        "sha256": sha256(IMAGE),
        "seconds": deployed["seconds"],
        "message": "",
    }
    assert isinstance(deployed["seconds"], int)
    # The same command again is answered with the result it had, not deployed twice: 5
    # images fetched for 6 deploys.
    assert again == deployed
    assert service.downloads == {"image": 5, "config-drive": 1}

    assert missing["ok"] is False
    assert missing["message"].startswith("wget of the image failed: ")

    assert mismatch["ok"] is False
    # What was read back is the image: the raw stream went to the disk intact.
    assert mismatch["message"] == (
        f"checksum mismatch: read back {sha256(IMAGE)}, expected {sha256(b'another image')}"
    )
    assert gpt["ok"] is False
    assert gpt["sha256"] == sha256(GPT_IMAGE)
    assert gpt["message"] == (
        "/dev/vda has a GPT partition table; the agent writes config drives on MBR disks only"
    )

    assert no_room["ok"] is False
    assert no_room["message"] == (
        "partition 1 of the image reaches into the last 64 MiB of /dev/vda,"
        " where the config drive goes"
    )

    check_config_drive(service.after_deploy)

    # Seconds vary with the machine; that they are whole numbers is what counts.
    assert all(isinstance(disk.pop("seconds"), int) for disk in full["disks"] + metadata["disks"])
    assert full == {
        "command": "wipe",
        "ok": True,
        "disks": [
            wiped(
                "/dev/vdb", "full", VDB_SIZE, "read back 16 samples of 1 MiB spread over the disk"
            ),
        ],
    }
    assert metadata == {
        "command": "wipe",
        "ok": False,  # /dev/vdz failed, so the whole does
        "disks": [
            wiped("/dev/vda", "metadata", 128 * MiB, "read back 128 MiB"),
            wiped("/dev/vdb", "metadata", VDB_SIZE, "read back 24 MiB"),
            wiped("/dev/vdz", "metadata", 0, "", failure="/dev/vdz is not a block device"),
        ],
    }

    data = service.vda.read_bytes()
    assert data[: 64 * MiB] == bytes(64 * MiB)
    assert data[-64 * MiB :] == bytes(64 * MiB)
    # A metadata wipe leaves the middle alone.
    assert data[64 * MiB : VDA_SIZE - 64 * MiB] == PATTERN * (VDA_SIZE - 128 * MiB)
    assert (tmp_path / "vdb.raw").read_bytes() == bytes(VDB_SIZE)


def wiped(disk: str, method: str, written: int, verified: str, failure: str = "") -> dict[str, Any]:
    """A disk's entry in a wipe result, less its seconds."""
    return {
        "disk": disk,
        "method": method,
        "bytes": written,
        "ok": not failure,
        "verified": f"{verified}: all zero" if verified else "",
        "message": failure,
    }


def check_config_drive(path: Path) -> None:
    """The image is on the disk, and the config drive is its second partition: the last
    64 MiB, a FAT filesystem labelled config-2 holding the served files."""
    data = path.read_bytes()
    entry = data[446 + 16 : 462 + 16]
    assert data[: 446 + 16] + data[462 + 16 : len(IMAGE)] == (IMAGE[: 446 + 16] + IMAGE[462 + 16 :])
    assert IMAGE[446 + 16 : 462 + 16] == bytes(16)
    kind, first, count = entry[4], *struct.unpack("<II", entry[8:16])
    assert (kind, first, count) == (0x0C, (VDA_SIZE - 64 * MiB) // SECTOR, 64 * MiB // SECTOR)
    fat = f"{path}@@{first * SECTOR}"
    assert "config-2" in mtools("mlabel", "-i", fat, "-s", "::").lower()
    meta_data = mtools("mtype", "-i", fat, "::/openstack/latest/meta_data.json")
    assert json.loads(meta_data) == META_DATA
    assert mtools("mtype", "-i", fat, "::/openstack/latest/user_data") == USER_DATA.decode()
