"""The lab's deployable test image (lab/image.py) is built once per session from Debian's
packages, and really boots: under QEMU (pure emulation) in BIOS and in UEFI, and fed as
qcow2, with a config drive as a second disk. At first boot it reads the drive, gets an
address by DHCP, calls the first-boot callback with its hostname and says so on the
serial console.

The VMs' network is QEMU's user-mode stack: the guest reaches this host's 127.0.0.1 as
10.0.2.2, where a test HTTP server records the callback; nothing else is reachable.
"""

from __future__ import annotations

import json
import queue
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lab import cli as lab_cli
from lab import image
from tests.agent.fixtures import need, qemu_machine

# Quiet, a boot to the callback takes 10-20 s under emulation; a busy CI machine 2-3x that.
BOOT_DEADLINE = 240
KEYS = {"operator": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIlabimage operator@lab"}


def test_a_second_build_with_the_same_inputs_is_the_cached_one(
    lab_image: image.Image, agent_data: Path
) -> None:
    lines: list[str] = []
    again = image.build_image(agent_data, lines.append)
    assert again == lab_image
    assert lines[-1] == f"up to date: {lab_image.path.parent}"


def test_the_image_is_small_sparse_and_partitioned_for_both_firmware_modes(
    lab_image: image.Image, tmp_path: Path
) -> None:
    out = tmp_path / "lab.raw"
    image.export(lab_image, out)
    assert out.read_bytes() == lab_image.path.read_bytes()
    size = out.stat().st_size
    assert size <= 64 * 2**20
    assert out.stat().st_blocks * 512 < size / 2, "the copy lost its holes"
    sector0 = out.read_bytes()[:512]
    assert sector0[:440] == image.SYSLINUX_MBR.read_bytes()[:440]
    assert sector0[510:] == b"\x55\xaa"
    status, kind, start, count = struct.unpack_from("<B3xB3xII", sector0, 446)
    assert (status, kind, start) == (0x80, 0xEF, image.PARTITION_START)
    assert (start + count) * 512 == size
    # Both boot paths are on the FAT partition, read back with mtools.
    listing = subprocess.run(
        ["mdir", "-a", "-b", "-/", "-i", f"{out}@@{start * 512}", "::/"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    for name in ("vmlinuz", "initrd.img", "syslinux/ldlinux.sys", "syslinux/syslinux.cfg"):
        assert f"::/{name}" in listing
    for name in ("EFI/BOOT/BOOTX64.EFI", "loader/entries/lab.conf"):
        assert f"::/{name}" in listing


def test_the_config_drive_is_fat_labelled_config_2_with_openstack_meta_data(
    tmp_path: Path,
) -> None:
    need("mkfs.fat", "mcopy", "mmd", "mtype")
    drive = image.config_drive(tmp_path / "cd.img", "node-1", KEYS, "http://x/callback/t/done")
    boot_sector = drive.read_bytes()[:512]
    assert boot_sector[0x2B:0x36] == b"config-2   "
    text = subprocess.run(
        ["mtype", "-i", str(drive), "::/openstack/latest/meta_data.json"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    ).stdout
    meta = json.loads(text)
    assert meta["hostname"] == "node-1"
    assert meta["public_keys"] == KEYS
    assert meta["meta"] == {"provisioner_callback": "http://x/callback/t/done"}


def test_provisioner_lab_image_build_writes_the_image(
    lab_image: image.Image, agent_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``provisioner-lab image build``, through lab/cli.py."""
    out = tmp_path / "out.raw"
    argv = ["image", "build", "--output", str(out), "--data-dir", str(agent_data)]
    assert lab_cli.main(argv) == 0
    assert out.read_bytes() == lab_image.path.read_bytes()
    assert f"wrote {out} (raw, " in capsys.readouterr().out
    assert lab_cli.main([*argv[:-2], "--format", "vhd"]) == 2


# --- booting it ------------------------------------------------------------------------


@pytest.fixture
def callbacks() -> Iterator[tuple[queue.Queue[tuple[str, Any]], int]]:
    posts: queue.Queue[tuple[str, Any]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.put((self.path, json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield posts, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def qemu(firmware: str, disk: Path, disk_format: str, drive: Path, tmp_path: Path) -> list[str]:
    return [
        *qemu_machine(firmware, tmp_path),
        "-netdev", "user,id=n0",
        # No NIC boot ROM: the machine boots from its disk, as a deployed one does.
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:a9:01:01,romfile=",
        "-drive", f"file={disk},format={disk_format},if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,bootindex=1",
        "-drive", f"file={drive},format=raw,if=none,id=d1",
        "-device", "virtio-blk-pci,drive=d1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("firmware", "disk_format"), [("bios", "raw"), ("uefi", "raw"), ("bios", "qcow2")]
)
def test_the_image_boots_reads_its_config_drive_and_calls_back(
    firmware: str,
    disk_format: str,
    lab_image: image.Image,
    callbacks: tuple[queue.Queue[tuple[str, Any]], int],
    tmp_path: Path,
) -> None:
    need("qemu-system-x86_64", *(["qemu-img"] if disk_format == "qcow2" else []))
    posts, port = callbacks
    hostname = f"lab-{firmware}-{disk_format}"
    disk = tmp_path / f"disk.{disk_format}"
    image.export(lab_image, disk, image.Format(disk_format))
    callback = f"http://10.0.2.2:{port}/callback/node-token/done"
    drive = image.config_drive(tmp_path / "config-drive.img", hostname, KEYS, callback)
    serial = tmp_path / "serial.log"
    vm = subprocess.Popen(
        qemu(firmware, disk, disk_format, drive, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            path, body = posts.get(timeout=BOOT_DEADLINE)
        except queue.Empty:
            console = serial.read_text(errors="replace") if serial.exists() else ""
            pytest.fail(f"no callback in {BOOT_DEADLINE} s; console:\n{console[-3000:]}")
        assert path == "/callback/node-token/done"
        assert body["event"] == "first-boot"
        assert body["hostname"] == hostname
        assert body["boot_mode"] == firmware
        assert body["address"] == "10.0.2.15"
        # The console line follows the callback's answer: give the guest time to write it.
        line = f"lab image booted {hostname}"
        deadline = time.monotonic() + 60
        while line not in serial.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
        console = serial.read_text(errors="replace")
        assert line in console, console[-3000:]
        assert "1 public key(s) installed" in console
        assert vm.poll() is None, "the image must stay up after its first boot"
    finally:
        vm.kill()
        vm.wait(timeout=30)
        assert vm.stderr is not None
        vm.stderr.close()
