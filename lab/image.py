"""``provisioner-lab image build``: a small disk image an agent can deploy, that boots in
BIOS and UEFI machines and behaves like a freshly deployed operating system at first boot.

The image is an MBR disk with one FAT partition holding Debian's kernel, a busybox
initramfs (``lab/image_init.sh`` as its ``/init``), syslinux for BIOS (syslinux's MBR code
boots the active partition's ``ldlinux.sys``) and systemd-boot as ``\\EFI\\BOOT\\BOOTX64.EFI``
for UEFI. It is made without root and without loop devices: the partition table is
written here, the filesystem by ``mkfs.fat --offset``, files by mtools at the partition's
byte offset, and ``syslinux --offset`` installs into the file.

Packages come from apt exactly as the deploy agent's (:mod:`provisioner.agent.build`): the
same resolution, verified download and package cache; the image is cached under
``<data_dir>/lab-image/<key>/`` where the key hashes every input.

At boot the image reads the config drive :func:`config_drive` writes (OpenStack's
layout: a filesystem labelled ``config-2`` with ``openstack/latest/meta_data.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from provisioner.agent import build, ramdisk
from provisioner.settings import default_data_dir

# What the image's init needs: disks and NICs of the lab's VMs (virtio) and of QEMU's
# defaults, and FAT with the code pages Debian's kernel mounts it with by default.
MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "ahci",
    "sd_mod",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
)

SYSLINUX_MBR = Path("/usr/lib/SYSLINUX/mbr.bin")
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
TOOLS = ("apt-get", "apt-cache", "dpkg-deb", "mkfs.fat", "mcopy", "mmd", "syslinux")

SECTOR = 512
DISK_MIB = 32
# The partition starts at 1 MiB, where partitioning tools put it (aligned for any disk).
PARTITION_START = 2048
PARTITION_TYPE = 0xEF  # EFI system partition; syslinux's MBR code boots any active type
LABEL = "LABIMAGE"
KERNEL_ARGS = "console=tty0 console=ttyS0,115200"

# Bump when the layout changes so cached images are not reused.
_FORMAT = 1

Progress = Callable[[str], None]


class Format(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class Image:
    """A built image (raw, sparse) and what it was built from."""

    path: Path
    kernel_version: str
    packages: tuple[build.Package, ...]


def _run(args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
        )
    except FileNotFoundError:
        raise build.BuildError(
            f"{args[0]} is not installed (Debian: {_PROVIDER.get(args[0], args[0])})"
        ) from None
    if done.returncode != 0:
        raise build.BuildError(f"{' '.join(args)} failed: {done.stderr.strip()[-500:]}")


_PROVIDER = {
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "syslinux": "syslinux",
    "dpkg-deb": "dpkg",
    "qemu-img": "qemu-utils",
}


def _script(name: str) -> bytes:
    return resources.files("lab").joinpath(name).read_bytes()


def _udhcpc() -> bytes:
    # The agent's lease script: the same DHCP behaviour in the agent and the deployed image.
    return resources.files("provisioner.agent").joinpath("udhcpc.sh").read_bytes()


def _boot_files() -> dict[str, Path]:
    """The bootloader files this machine's packages provide, by what they are."""
    files = {
        "syslinux MBR (syslinux)": SYSLINUX_MBR,
        "systemd-boot (systemd-boot-efi)": SYSTEMD_BOOT,
    }
    syslinux = shutil.which("syslinux")
    if syslinux is not None:
        files["syslinux installer (syslinux)"] = Path(syslinux)
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing or syslinux is None:
        raise build.BuildError(
            f"missing {', '.join(missing or ['syslinux'])}; apt-get install them"
        )
    return files


def key(packages: Sequence[build.Package], boot_files: Mapping[str, Path]) -> str:
    inputs = {
        "format": _FORMAT,
        "packages": [asdict(package) for package in packages],
        "modules": list(MODULES),
        "layout": [DISK_MIB, PARTITION_START, PARTITION_TYPE, LABEL, KERNEL_ARGS],
        "files": {
            name: hashlib.sha256(data).hexdigest()
            for name, data in {
                "init": _script("image_init.sh"),
                "udhcpc": _udhcpc(),
                **{name: path.read_bytes() for name, path in boot_files.items()},
            }.items()
        },
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def build_image(data_dir: Path, progress: Progress) -> Image:
    """The image for the packages apt offers now: built, or found built already."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            raise build.BuildError(
                f"{tool} is not installed; apt-get install {_PROVIDER.get(tool, tool)}"
            )
    progress(f"resolving {build.KERNEL_PACKAGE} and {build.BUSYBOX_PACKAGE}")
    packages = (build.resolve(build.KERNEL_PACKAGE), build.resolve(build.BUSYBOX_PACKAGE))
    kernel_version = packages[0].name.removeprefix("linux-image-")
    boot_files = _boot_files()
    root = data_dir / "lab-image"
    out = root / key(packages, boot_files)
    image = Image(out / "image.raw", kernel_version, packages)
    if (out / "build.json").is_file():
        progress(f"up to date: {out}")
        return image
    # The agent's package cache: a machine that built the agent has these already.
    debs = []
    for package in packages:
        progress(f"downloading {package.pinned}")
        debs.append(build.download(package, data_dir / "agent" / "packages"))
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix="build-") as scratch:
        tree = Path(scratch) / "tree"
        for deb in debs:
            progress(f"unpacking {deb.name}")
            _run(["dpkg-deb", "-x", str(deb), str(tree)])
        progress("making the initramfs")
        files = Path(scratch) / "files"
        files.mkdir()
        shutil.copyfile(tree / "boot" / f"vmlinuz-{kernel_version}", files / "vmlinuz")
        modules = _initramfs(tree, kernel_version, files / "initrd.img")
        staging = root / f".{out.name}.new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        progress("making the disk image")
        _disk(staging / "image.raw", files, boot_files)
        record = {
            "kernel_version": kernel_version,
            "packages": [asdict(package) for package in packages],
            "modules": modules,
            "sha256": _sha256(staging / "image.raw"),
        }
        (staging / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        # Renamed into place whole: an interrupted build leaves no directory that looks done.
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    progress(f"built {out}")
    return image


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _initramfs(tree: Path, kernel_version: str, into: Path) -> list[str]:
    """Writes the busybox initramfs; returns the modules it loads, in order."""
    kernel_modules = tree / "lib" / "modules" / kernel_version / "kernel"
    found = ramdisk.module_files(kernel_modules)
    try:
        names = ramdisk.load_order(MODULES, found)
    except ramdisk.NotAModule as exc:
        raise build.BuildError(str(exc)) from None
    entries = {
        "bin/busybox": ramdisk.file((tree / "bin" / "busybox").read_bytes(), executable=True),
        "bin/sh": ramdisk.symlink("busybox"),
        "init": ramdisk.file(_script("image_init.sh"), executable=True),
        "etc/lab/udhcpc": ramdisk.file(_udhcpc(), executable=True),
        "etc/lab/modules": ramdisk.file("".join(f"{name}\n" for name in names).encode()),
        **{f"lib/modules/{name}.ko": ramdisk.file(found[name].read_bytes()) for name in names},
        **{name: ramdisk.directory() for name in ("proc", "sys", "dev", "tmp", "run", "mnt")},
    }
    into.write_bytes(ramdisk.initramfs(ramdisk.with_parents(entries)))
    return names


def _chs(lba: int) -> bytes:
    """The CHS address of ``lba`` in the 255-head, 63-sector geometry BIOSes assume."""
    cylinder, rest = divmod(lba, 255 * 63)
    if cylinder > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rest, 63)
    return bytes([head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF])


def mbr(boot_code: bytes, disk_sectors: int, signature: int) -> bytes:
    """Sector 0: the boot code, the disk signature and one active partition from
    :data:`PARTITION_START` to the end of the disk."""
    count = disk_sectors - PARTITION_START
    entry = (
        b"\x80"
        + _chs(PARTITION_START)
        + bytes([PARTITION_TYPE])
        + _chs(disk_sectors - 1)
        + struct.pack("<II", PARTITION_START, count)
    )
    return (
        boot_code[:440].ljust(440, b"\0")
        + struct.pack("<IH", signature, 0)
        + entry.ljust(64, b"\0")
        + b"\x55\xaa"
    )


def _disk(path: Path, files: Path, boot_files: Mapping[str, Path]) -> None:
    sectors = DISK_MIB * 2**20 // SECTOR
    offset = PARTITION_START * SECTOR
    with path.open("wb") as handle:
        handle.truncate(sectors * SECTOR)  # sparse: only what is written takes space
    _run(
        [
            "mkfs.fat", "-F", "16", "-n", LABEL, "--invariant", "--offset", str(PARTITION_START),
            str(path), str((sectors - PARTITION_START) * SECTOR // 1024),
        ]
    )  # fmt: skip
    (files / "syslinux.cfg").write_text(
        "SERIAL 0 115200\nDEFAULT lab\nPROMPT 0\nTIMEOUT 0\n"
        f"LABEL lab\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_ARGS}\n"
    )
    (files / "loader.conf").write_text("default lab.conf\ntimeout 0\neditor no\n")
    (files / "lab.conf").write_text(
        f"title lab image\nlinux /vmlinuz\ninitrd /initrd.img\noptions {KERNEL_ARGS}\n"
    )
    _mtools(
        path,
        offset,
        ["mmd", "::/syslinux", "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"],
    )
    for source, target in (
        (files / "vmlinuz", "::/vmlinuz"),
        (files / "initrd.img", "::/initrd.img"),
        (files / "syslinux.cfg", "::/syslinux/syslinux.cfg"),
        (boot_files["systemd-boot (systemd-boot-efi)"], "::/EFI/BOOT/BOOTX64.EFI"),
        (files / "loader.conf", "::/loader/loader.conf"),
        (files / "lab.conf", "::/loader/entries/lab.conf"),
    ):
        _mtools(path, offset, ["mcopy", str(source), target])
    _run(["syslinux", "--install", "--offset", str(offset), "--directory", "/syslinux", str(path)])
    # After syslinux, which writes only the partition's boot sector and its own files.
    with path.open("r+b") as handle:
        handle.write(mbr(SYSLINUX_MBR.read_bytes(), sectors, signature=0x4C414231))


def _mtools(image: Path, offset: int, command: list[str]) -> None:
    # mtools checks that a filesystem's geometry matches the device's; an image has none.
    _run([command[0], "-i", f"{image}@@{offset}", *command[1:]], env={"MTOOLS_SKIP_CHECK": "1"})


def export(image: Image, output: Path, fmt: Format = Format.RAW) -> None:
    """Writes the image to ``output``: raw with its holes kept, or converted to qcow2."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt is Format.QCOW2:
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image.path), str(output)])
        return
    chunk = 1 << 20
    with image.path.open("rb") as source, output.open("wb") as target:
        while data := source.read(chunk):
            if data.count(0) == len(data):
                target.seek(len(data), os.SEEK_CUR)
            else:
                target.write(data)
        target.truncate()


def meta_data(hostname: str, public_keys: Mapping[str, str], callback: str) -> dict[str, object]:
    """``openstack/latest/meta_data.json`` as the image reads it."""
    return {
        "uuid": hashlib.sha256(hostname.encode()).hexdigest()[:32],
        "hostname": hostname,
        "name": hostname,
        "public_keys": dict(public_keys),
        "meta": {"provisioner_callback": callback},
    }


def config_drive(path: Path, hostname: str, public_keys: Mapping[str, str], callback: str) -> Path:
    """A 2 MiB FAT image labelled ``config-2`` holding ``openstack/latest/meta_data.json``
    (see :func:`meta_data`), made without root; attach it as a second disk."""
    path.unlink(missing_ok=True)
    _run(["mkfs.fat", "-C", "-n", "config-2", str(path), "2048"])
    with tempfile.TemporaryDirectory() as scratch:
        document = Path(scratch) / "meta_data.json"
        document.write_text(json.dumps(meta_data(hostname, public_keys, callback), indent=2))
        _mtools(path, 0, ["mmd", "::/openstack", "::/openstack/latest"])
        _mtools(path, 0, ["mcopy", str(document), "::/openstack/latest/meta_data.json"])
    return path


app = typer.Typer(no_args_is_help=True, add_completion=False)


# A callback makes the app a group even with one command, so ``build`` is named.
@app.callback()
def image_group() -> None:
    """The deployable test image."""


@app.command("build")
def build_command(
    output: Annotated[Path, typer.Option(help="Where to write the image.")],
    format: Annotated[Format, typer.Option(help="raw (sparse) or qcow2.")] = Format.RAW,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Cache (shared with the agent build); $PROVISIONER_DATA_DIR or ./var."),
    ] = None,
) -> None:
    """Build the image (or reuse the cached build) and write it to OUTPUT."""
    cache = data_dir or default_data_dir()
    try:
        image = build_image(cache, typer.echo)
        export(image, output, format)
    except build.BuildError as exc:
        typer.echo(f"provisioner-lab image build: {exc}", err=True)
        raise typer.Exit(2) from None
    size = output.stat().st_size
    typer.echo(f"wrote {output} ({format.value}, {size:,} bytes, kernel {image.kernel_version})")


def run(argv: list[str]) -> int:
    """``provisioner-lab image ARGV...`` (lab/cli.py hands everything after ``image``
    here); returns the exit code."""
    try:
        app(args=argv, prog_name="provisioner-lab image")
    except SystemExit as done:  # Typer always ends this way; provisioner-lab returns codes
        return done.code if isinstance(done.code, int) else 1
    return 0


if __name__ == "__main__":
    app(prog_name="provisioner-lab image")
