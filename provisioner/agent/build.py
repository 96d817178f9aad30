"""``provisioner agent build``: the agent's kernel and initramfs, made from Debian packages.

Nothing binary lives in the repository: the kernel comes from Debian's ``linux-image-amd64``
and the userland from ``busybox-static``, fetched with ``apt-get download`` (so from the
archive apt is configured with, and checked against its signed index). The build is cached
under ``<agent_dir>/<key>/`` (``PROVISIONER_AGENT_DIR``, else ``<data_dir>/agent``) where the
key hashes every input (the packages' exact versions and checksums, the agent's scripts, the
module list): it runs again only when one of them changes. The key also names the build in
the URLs of its files, so a machine gets its kernel and initramfs from the same build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from provisioner.agent import ramdisk

KERNEL_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"

# Drivers for the NICs and disk controllers of the lab's VMs and of common servers, and
# the FAT filesystem of the config drive a deploy writes (vfat, with the code page and
# character set Debian's kernel mounts it with by default: cp437 and ascii); the modules
# they need are found from their .modinfo. Everything else a server may need is built into
# Debian's kernel (devtmpfs, DMI, the serial console, gzip initramfs, MBR partitions).
MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "tg3",
    "bnxt_en",
    "r8169",
    "ahci",
    "ata_piix",
    "nvme",
    "sd_mod",
    "megaraid_sas",
    "mpt3sas",
    "vfat",
    "nls_cp437",
    "nls_ascii",
)

# The archive format of the build's output; bump it when the layout changes so cached
# builds are not reused.
_FORMAT = 1
# What key() makes; anything else asked for by name (a URL's key) is no build.
_KEY = re.compile(r"[0-9a-f]{16}")

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """The build cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str

    @property
    def pinned(self) -> str:
        return f"{self.name}={self.version}"


@dataclass(frozen=True)
class Agent:
    """A built agent: its files and what it was built from."""

    directory: Path
    kernel_version: str
    packages: tuple[Package, ...]

    @property
    def key(self) -> str:
        """What the build is known by: its directory's name, the hash of its inputs."""
        return self.directory.name

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"


def _run(args: Sequence[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BuildError(f"{args[0]} is not installed; the agent is built on Debian") from None
    if done.returncode != 0:
        raise BuildError(f"{' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def resolve(name: str) -> Package:
    """The candidate version apt would install of ``name``, following a metapackage
    such as ``linux-image-amd64`` to the package it depends on."""
    fields = _show(name)
    if fields.get("Section", "").endswith("metapackages") or name == KERNEL_PACKAGE:
        depends = fields.get("Depends", "").split(",")[0].split("(")[0].strip()
        if not depends:
            raise BuildError(f"{name} depends on no package; cannot tell which kernel to use")
        fields = _show(depends)
        name = depends
    if "SHA256" not in fields:
        raise BuildError(f"apt knows no downloadable {name}")
    return Package(name, fields["Version"], fields["SHA256"])


def _show(name: str) -> dict[str, str]:
    try:
        text = _run(["apt-cache", "show", "--no-all-versions", name])
    except BuildError:
        raise BuildError(
            f"apt does not know {name}; run apt-get update (as root) and try again"
        ) from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(" "):
            fields[key] = value.strip()
    return fields


def _script(name: str) -> bytes:
    return resources.files("provisioner.agent").joinpath(name).read_bytes()


def key(packages: Sequence[Package], modules: Sequence[str]) -> str:
    inputs = {
        "format": _FORMAT,
        "packages": [asdict(package) for package in packages],
        "modules": list(modules),
        "scripts": {
            name: hashlib.sha256(_script(name)).hexdigest() for name in ("init.sh", "udhcpc.sh")
        },
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def download(package: Package, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    deb = into / f"{package.name}_{package.version.replace(':', '%3a')}_amd64.deb"
    if not deb.is_file() or hashlib.sha256(deb.read_bytes()).hexdigest() != package.sha256:
        _run(["apt-get", "download", package.pinned], cwd=into)
    if hashlib.sha256(deb.read_bytes()).hexdigest() != package.sha256:
        raise BuildError(f"{deb.name} does not match the checksum apt's index gives")
    return deb


def build(root: Path, progress: Progress, *, modules: Sequence[str] = MODULES) -> Agent:
    """The agent for the packages apt offers now, in the agent directory ``root``: built,
    or found built already."""
    progress(f"resolving {KERNEL_PACKAGE} and {BUSYBOX_PACKAGE}")
    packages = (resolve(KERNEL_PACKAGE), resolve(BUSYBOX_PACKAGE))
    kernel_version = packages[0].name.removeprefix("linux-image-")
    out = root / key(packages, modules)
    agent = Agent(out, kernel_version, packages)
    if (out / "build.json").is_file():
        progress(f"up to date: {out}")
        _point_current(root, out)
        return agent
    debs = []
    for package in packages:
        progress(f"downloading {package.pinned}")
        debs.append(download(package, root / "packages"))
    with tempfile.TemporaryDirectory(dir=root, prefix="build-") as scratch:
        tree = Path(scratch) / "tree"
        for deb in debs:
            progress(f"unpacking {deb.name}")
            _run(["dpkg-deb", "-x", str(deb), str(tree)])
        progress(f"making the initramfs ({len(modules)} drivers and what they need)")
        order = _load_order(tree, kernel_version, modules)
        entries = _entries(tree, order)
        staging = Path(scratch) / "out"
        staging.mkdir()
        shutil.copyfile(tree / "boot" / f"vmlinuz-{kernel_version}", staging / "vmlinuz")
        (staging / "initrd.img").write_bytes(ramdisk.initramfs(entries))
        record = {
            "kernel_version": kernel_version,
            "packages": [asdict(package) for package in packages],
            "modules": [path.name.removesuffix(".ko") for path in order],
            "files": {
                name: hashlib.sha256((staging / name).read_bytes()).hexdigest()
                for name in ("vmlinuz", "initrd.img")
            },
        }
        (staging / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        # Renamed into place whole: an interrupted build leaves no directory that looks
        # done. The same build finished meanwhile by another host building into a shared
        # directory stays: replicas may be serving it.
        if not (out / "build.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            staging.rename(out)
    _point_current(root, out)
    progress(f"built {out}")
    return agent


def _load_order(tree: Path, kernel_version: str, modules: Sequence[str]) -> list[Path]:
    """The module files to load, dependencies first."""
    kernel_modules = tree / "lib" / "modules" / kernel_version / "kernel"
    if not kernel_modules.is_dir():
        raise BuildError(f"the kernel package has no modules for {kernel_version}")
    files = ramdisk.module_files(kernel_modules)
    try:
        return [files[name] for name in ramdisk.load_order(modules, files)]
    except ramdisk.NotAModule as exc:
        raise BuildError(str(exc)) from None


def _entries(tree: Path, order: Sequence[Path]) -> dict[str, ramdisk.Entry]:
    names = [path.name.removesuffix(".ko") for path in order]
    entries = {
        "bin/busybox": ramdisk.file((tree / "bin" / "busybox").read_bytes(), executable=True),
        # Enough for the kernel to run /init; /init installs the other applets.
        "bin/sh": ramdisk.symlink("busybox"),
        "init": ramdisk.file(_script("init.sh"), executable=True),
        "etc/agent/udhcpc": ramdisk.file(_script("udhcpc.sh"), executable=True),
        "etc/agent/modules": ramdisk.file("".join(f"{name}\n" for name in names).encode()),
        **{
            f"lib/modules/{name}.ko": ramdisk.file(path.read_bytes())
            for name, path in zip(names, order, strict=True)
        },
        **{name: ramdisk.directory() for name in ("proc", "sys", "dev", "tmp", "run")},
    }
    return ramdisk.with_parents(entries)


def _point_current(root: Path, out: Path) -> None:
    """``<agent_dir>/current`` names the build the service boots machines with; replaced
    whole, through a file of this build's own, as other hosts may build at the same time."""
    fd, pointer = tempfile.mkstemp(dir=root, prefix=".current-")
    with os.fdopen(fd, "w") as out_file:
        out_file.write(out.name + "\n")
    os.chmod(pointer, 0o644)  # mkstemp's 0600 would hide it from a service of another user
    os.replace(pointer, root / "current")


def current(root: Path) -> Agent | None:
    """The agent last built into the agent directory ``root``, if any and complete."""
    try:
        name = (root / "current").read_text().strip()
    except OSError:
        return None
    return find(root, name)


def find(root: Path, name: str) -> Agent | None:
    """The complete build ``name`` (its key) in the agent directory ``root``, current or
    not: a machine told to boot a build before a rebuild still gets that build's files."""
    if not _KEY.fullmatch(name):
        return None
    out = root / name
    try:
        record = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        return None
    packages = tuple(Package(**package) for package in record["packages"])
    return Agent(out, record["kernel_version"], packages)
