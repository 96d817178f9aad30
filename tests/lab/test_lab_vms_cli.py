"""``provisioner-lab up --vms N``: the lab as an operator starts it, a real process
serving QEMU VMs behind BMCs with the service on a private network. One VM boot in all
(a VM under TCG takes a core and tens of seconds). Needs root, qemu-system-x86_64, ip,
dnsmasq and ipmitool (required when PROVISIONER_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx

from lab import vmnet
from tests.lab.conftest import free_port_block, need_vm_lab
from tests.lab.test_vms import gone
from tests.serving import BIN, clean_env, poll

LAB = str(BIN / "provisioner-lab")
START_DEADLINE = 180  # the service's migrations and start on a busy machine
BOOT_DEADLINE = 420  # one network boot, on a busy 2-core machine


def test_without_the_tools_the_lab_names_what_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [LAB, "up", "--vms", "1", "--control-dir", str(tmp_path / "control")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},  # nothing to be found
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    for tool in ("qemu-system-x86_64 (Debian: qemu-system-x86)", "dnsmasq", "ip (Debian"):
        assert tool in result.stderr
    if os.geteuid() != 0:
        assert "root" in result.stderr
    assert not (tmp_path / "control").exists()


def test_ctrl_c_while_starting_leaves_nothing_behind(tmp_path: Path) -> None:
    """Interrupted before it serves (the service still starting), the lab unwinds: no
    namespace, no service, no dnsmasq. Started as a shell's background job is, with
    SIGINT ignored, which the lab must not inherit."""
    need_vm_lab("ipmitool")
    process = subprocess.Popen(
        [
            LAB, "up", "--vms", "1",
            "--manifest", str(tmp_path / "rack.csv"),
            "--control-dir", str(tmp_path / "control"),
            "--agent-dir", str(tmp_path / "no-agent"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(tmp_path / "home"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    own = f"{vmnet.PREFIX}{process.pid}-"
    poll(
        lambda: own in vmnet.ip("netns", "list") or process.poll() is not None,
        60,
        lambda: "the lab made no namespace",
    )
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    assert "lab stopped while starting" in output
    assert own not in vmnet.ip("netns", "list")
    assert not _ours(tmp_path)


def _ours(tmp_path: Path) -> list[str]:
    """Command lines of running processes that name ``tmp_path``."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [_cmdline(pid) for pid in pids if not gone(pid) and str(tmp_path) in _cmdline(pid)]


def test_options_of_emulated_nodes_are_refused_with_vms(tmp_path: Path) -> None:
    result = subprocess.run(
        [LAB, "up", "--vms", "1", "--boot-mode", "uefi", "--control-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--boot-mode are for --nodes (choose the VMs' firmware with --firmware)" in (
        result.stderr
    )


class Lab:
    """``provisioner-lab up`` as a process, its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [LAB, "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def line(self, start: str) -> str | None:
        return next((line for line in self.lines if line.startswith(start)), None)

    def output(self) -> str:
        return "\n".join(self.lines[-60:])


def word_after(line: str, marker: str) -> str:
    return line.split(marker, 1)[1].split()[0].rstrip(";:,)")


def test_a_vm_lab_boots_an_imported_node_from_its_service(tmp_path: Path) -> None:
    """The manifest imports through the forwarded API with the token the lab wrote;
    ipmitool against the node's BMC sets PXE and powers it on; the VM network-boots from
    the lab's service, which records the hop on the node's timeline; the status names
    the running QEMU; Ctrl-C leaves no namespace and no process of the lab behind."""
    need_vm_lab("ipmitool")
    manifest = tmp_path / "rack.csv"
    control = tmp_path / "control"
    base_port = free_port_block(1)
    env = clean_env(tmp_path / "home")
    lab = Lab(
        [
            "--vms", "1", "--firmware", "bios",
            "--manifest", str(manifest),
            "--control-dir", str(control),
            "--workdir", str(tmp_path / "lab"),
            "--base-port", str(base_port),
            "--password", "vm-secret",
            "--agent-dir", str(tmp_path / "no-agent"),
        ],
        env,
    )  # fmt: skip
    namespace = ""
    try:
        poll(
            lambda: lab.line("lab up:") or lab.process.poll() is not None,
            START_DEADLINE,
            lambda: f"the lab did not come up:\n{lab.output()}",
        )
        assert lab.process.poll() is None, lab.output()
        assert manifest.is_file()
        service = lab.line("service: ")
        started = lab.line("starting 1 VMs")
        assert service is not None, lab.output()
        assert started is not None, lab.output()
        url = word_after(service, "service: ")
        token_file = Path(word_after(service, "admin token in "))
        namespace = word_after(started, "in namespace ")
        assert namespace in vmnet.ip("netns", "list")
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token not in "\n".join(lab.lines)  # a path to the token, never the token

        cli_env = {**env, "PROVISIONER_URL": url, "PROVISIONER_TOKEN": token}
        imported = subprocess.run(
            [str(BIN / "provisioner"), "rack", "import", str(manifest), "--json"],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert imported.returncode == 0, imported.stderr
        name = "lab-r01-u01"

        def ipmitool(*args: str) -> str:
            command = [
                "ip", "netns", "exec", namespace, "ipmitool", "-I", "lanplus",
                "-H", str(vmnet.NETWORK.network_address + 1), "-p", str(base_port),
                "-U", "admin", "-E", *args,
            ]  # fmt: skip
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=30,
                env={**env, "IPMI_PASSWORD": "vm-secret"},
            )
            assert done.returncode == 0, f"ipmitool {' '.join(args)}: {done.stderr}"
            return done.stdout

        ipmitool("chassis", "bootdev", "pxe")
        ipmitool("power", "on")
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

        def hops() -> list[tuple[str, str]]:
            events = api.get(f"/api/v1/nodes/{name}/events").json()
            return [(e["kind"], e["message"]) for e in events if e["kind"].startswith("boot-")]

        def booted() -> bool:
            return any(kind in ("boot-ipxe", "boot-tftp") for kind, _ in hops())

        workdir = tmp_path / "lab" / name

        def why() -> str:
            events = (
                (workdir / "events.log").read_text() if (workdir / "events.log").exists() else ""
            )
            dhcp = (tmp_path / "lab" / "net" / "dnsmasq.log").read_text(errors="replace")
            return f"hops {hops()}\nVM events:\n{events}\nDHCP:\n{dhcp[-2000:]}\n{lab.output()}"

        poll(booted, BOOT_DEADLINE, why)
        # The lab's DHCP server skips the ping and advertises the bridge's IPv6 prefix
        # (pxe dnsmasq-config --lab): without the advertisement iPXE waits 13-16 s.
        net = tmp_path / "lab" / "net"
        assert "no-ping" in (net / "dnsmasq.conf").read_text().splitlines()
        assert "router advertisement on fd00:213::" in (net / "dnsmasq.log").read_text()
        status = subprocess.run(
            [LAB, "status", "--control-dir", str(control)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert '"qemu": "running"' in status.stdout, status.stdout
        assert '"power": "on"' in status.stdout, status.stdout
        inside = [int(pid) for pid in vmnet.ip("netns", "pids", namespace).split()]
        qemu = [pid for pid in inside if "qemu" in Path(f"/proc/{pid}/comm").read_text()]
        assert qemu, inside
        api.close()
    finally:
        if lab.process.poll() is None:
            lab.process.send_signal(signal.SIGINT)
        code = lab.process.wait(timeout=120)
    assert code == 0, lab.output()
    assert lab.line("lab stopped"), lab.output()
    assert namespace not in vmnet.ip("netns", "list")
    assert all(gone(pid) for pid in inside), inside
    assert not _ours(tmp_path)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
