"""VM cycle benchmark: real QEMU machines from power-on to inventory and to `active`.

For each firmware (BIOS, UEFI) and each number of VMs (1, 4), in every repetition:

- the project: `provisioner-lab up --vms N --firmware F` (the lab's own service, DHCP
  server and BMCs in a network namespace), a 64 MiB raw image and a role with
  `handoff: immediate`, then the lab's manifest imported: the service inspects each VM
  with the deploy agent (power-on -> inventory) and provisions it (power-on -> agent ->
  image written -> reboot -> first boot -> active);
- the raw chain, beside it in the same run: a namespace of its own with dnsmasq serving
  DHCP (the lab's configuration) and its own TFTP, Python's http.server serving a
  one-line iPXE script, the agent's kernel and the agent's initramfs with another /init
  (a shell script that loads the same drivers, takes a lease, posts the DMI serial and the
  MACs and powers off); the VMs are powered on through QEMU directly, no BMC.

Every phase comes from what the machine did, on one clock: QEMU's process start (power
on), the DHCP, TFTP and HTTP packets on the lab bridge with the kernel's receive time,
the VM's serial console as its lines appear, and the service's timeline (API, full ISO
times). The target (issue 12): the project's power-on -> inventory within 10 % of the
raw chain's.

Needs root, QEMU, OVMF, iPXE, dnsmasq, an agent build (`provisioner agent build`) and
the lab image's tools. Run by hand (not in CI), from the checkout:

    sudo .venv/bin/python bench/vm_cycle.py                    # rewrites its block
    sudo .venv/bin/python bench/vm_cycle.py --reps 1 --vms 1 --no-write-results

bench/README.md says what is measured and how.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import hashlib
import json
import os
import re
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from common import (
    BIN,
    IPXE,
    MIB,
    REPO,
    Process,
    add_output_options,
    clean_env,
    code_state,
    command_line,
    expect,
    machine,
    now_utc,
    progress,
    publish,
    render_table,
    results_head,
    save_raw,
    wait_for,
    work_dir,
)

from lab import vm as qemu
from lab import vmnet
from provisioner.agent import build, ramdisk

RESULTS_BEGIN = "<!-- bench/vm_cycle.py writes from here -->"
RESULTS_END = "<!-- bench/vm_cycle.py writes up to here -->"
TARGET = 1.10  # the project's power-on -> inventory at most 10 % over the raw chain's
SO_TIMESTAMPNS = 35  # Linux; the socket module does not name it
PORT = qemu.SERVICE_PORT  # the raw chain's HTTP server: where the lab's DHCP points iPXE
INIT = """#!/bin/sh
# The raw chain's /init: the agent's drivers, a lease, the facts posted, power off.
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1
for module in $(cat /etc/agent/modules); do insmod "/lib/modules/$module.ko" 2>/dev/null; done
for word in $(cat /proc/cmdline); do case $word in raw.url=*) url=${word#*=} ;; esac; done
for path in /sys/class/net/*; do
    name=${path##*/}
    [ "$name" = lo ] && continue
    ip link set "$name" up
    udhcpc -i "$name" -n -q -t 5 -T 2 -s /etc/agent/udhcpc && break
done
printf '{"serial":"%s","macs":"%s"}' "$(cat /sys/class/dmi/id/product_serial)" \\
    "$(cat /sys/class/net/*/address | tr '\\n' ' ')" >/tmp/facts
wget -q -O /dev/null --header "Content-Type: application/json" --post-file /tmp/facts "$url/facts"
echo "raw-chain: facts posted"
poweroff -f
"""
Marks = list[tuple[float, str, str]]  # (host time, kind, detail), by VM
CONSOLE_MARKS = ("Run /init", "provisioner-agent:", "raw-chain:", "lab image booted")
# Phases of a network boot up to the inventory, in order, and the milestones ending them.
BOOT_PHASES = (
    ("firmware", "dhcp0"),  # power-on (QEMU starts) -> first DHCP request
    ("DHCP", "ack0"),  # the firmware's (BIOS: iPXE's) lease
    ("TFTP", "tftp_end"),  # UEFI with EDK2's PXE: the iPXE loader over TFTP
    ("iPXE DHCP", "ack_ipxe"),  # UEFI: iPXE's own lease
    ("script+files", "initrd_end"),  # iPXE script(s), kernel and initramfs over HTTP
    ("kernel", "init"),  # kernel start-up to "Run /init" on the console
    ("agent start", "agent_ack"),  # drivers loaded, NIC up, lease
    ("facts", "post"),  # facts gathered, the POST sent
    ("inventory", "inventory"),  # the POST received and recorded
)
DEPLOY_PHASES = (
    ("command", "command"),  # inventory -> the service's deploy command
    ("image write", "image_end"),  # the image streamed to the disk
    ("verify+config drive", "result"),  # read back, config drive, result posted
    ("reboot", "image_init"),  # reboot, firmware, boot loader, the image's kernel to /init
    ("first boot", "callback"),  # the image's init to its first-boot callback
    ("hand-off", "active"),
)


# ---- what the bench sees of the VMs: packets, consoles, QEMU starts ----------------------


class Observer:
    """Everything seen of one lab network's VMs, by MAC, on the host's clock: DHCP,
    TFTP and HTTP packets on the bridge (timestamped by the kernel on receipt), marked
    console lines (as they appear: polled every 0.1 s) and QEMU process starts (from
    /proc, 10 ms)."""

    def __init__(self, namespace: str, consoles: dict[str, Path]) -> None:
        self.consoles = consoles  # MAC -> serial.log
        self.marks: dict[str, Marks] = {mac: [] for mac in consoles}
        self.http_end: dict[tuple[str, int], list[Any]] = {}  # (MAC, port) -> [path, last]
        self._class: dict[str, str] = {}  # MAC -> the DHCP client last heard: pxe/ipxe/udhcp
        self._stop = threading.Event()
        self.began = time.time()
        self._sock = vmnet.Namespace(namespace).inside(self._open)
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._sniff, self._poll)]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _open() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * MIB)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((vmnet.BRIDGE, 0))
        return sock

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._sock.close()
        for (mac, _port), (path, last) in self.http_end.items():
            self.marks[mac].append((last, "http-end", path))
        for marks in self.marks.values():
            marks.sort()

    def _sniff(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._sock], [], [], 0.5)[0]:
                continue
            frame, ancillary, _, _ = self._sock.recvmsg(2048, 64)
            stamp = time.time()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", data[:16])
                    stamp = seconds + nanoseconds / 1e9
            self._frame(stamp, frame)

    def _frame(self, t: float, frame: bytes) -> None:
        if len(frame) < 42 or frame[12:14] != b"\x08\x00":
            return
        dst, src = frame[0:6].hex(":"), frame[6:12].hex(":")
        mac = src if src in self.marks else dst
        ip = frame[14:]
        body = ip[(ip[0] & 15) * 4 :]
        sport, dport = struct.unpack("!HH", body[:4])
        if ip[9] == 17 and {sport, dport} & {67, 68}:
            self._dhcp(t, body[8:])
        elif ip[9] == 17 and mac in self.marks and body[8:10] in (b"\0\1", b"\0\3", b"\0\4"):
            what = body[10:].split(b"\0")[0].decode(errors="replace") if dport == 69 else ""
            self.marks[mac].append((t, "tftp", what))
        elif ip[9] == 6 and mac in self.marks:
            payload = body[(body[12] >> 4) * 4 :]
            if dport == PORT and payload[:4] in (b"GET ", b"POST"):
                method, path = payload.split(b"\r\n")[0].decode(errors="replace").split()[:2]
                self.marks[mac].append((t, method.lower(), path))
                # iPXE reuses its source ports from one boot to the next (and requests
                # on one kept-alive connection): end the previous response first.
                if (ended := self.http_end.get((mac, sport))) is not None:
                    self.marks[mac].append((ended[1], "http-end", ended[0]))
                self.http_end[(mac, sport)] = [path, t]
            elif sport == PORT and (mac, dport) in self.http_end:
                # Data only: a kept-alive connection's FIN comes long after the transfer.
                length = struct.unpack("!H", ip[2:4])[0] - (ip[0] & 15) * 4
                if length > (body[12] >> 4) * 4:
                    self.http_end[(mac, dport)][1] = t

    def _dhcp(self, t: float, payload: bytes) -> None:
        mac = payload[28:34].hex(":")
        if mac not in self.marks or payload[236:240] != b"\x63\x82\x53\x63":
            return
        options, i = {}, 240
        while i + 1 < len(payload) and payload[i] != 255:
            if payload[i] == 0:
                i += 1
                continue
            options[payload[i]] = payload[i + 2 : i + 2 + payload[i + 1]]
            i += 2 + payload[i + 1]
        kind = {1: "discover", 2: "offer", 3: "request", 5: "ack"}.get(options.get(53, b"\0")[0])
        if payload[0] == 1:  # a client's request says who asks
            vendor = options.get(60, b"").decode(errors="replace")
            self._class[mac] = (
                "udhcp" if vendor.startswith("udhcp") else ("ipxe" if 175 in options else "pxe")
            )
        if kind:
            self.marks[mac].append((t, f"dhcp-{kind}", self._class.get(mac, "")))

    def _poll(self) -> None:
        offsets = dict.fromkeys(self.consoles.values(), 0)
        partial = dict.fromkeys(self.consoles.values(), b"")
        seen: set[int] = set()
        boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        ticks = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(0.1):
            t = time.time()
            for mac, log in self.consoles.items():
                try:
                    with log.open("rb") as f:
                        f.seek(offsets[log])
                        data = partial[log] + f.read()
                except OSError:
                    continue
                offsets[log] += len(data) - len(partial[log])
                *lines, partial[log] = data.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace").strip()
                    if any(m in text for m in CONSOLE_MARKS):
                        self.marks[mac].append((t, "console", text))
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) in seen:
                    continue
                try:
                    words = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                    started = int(
                        Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[19]
                    )
                except (OSError, IndexError, ValueError):
                    continue
                if not words[0].endswith(b"qemu-system-x86_64"):
                    # Between fork and exec, or `ip netns exec`, a new process may yet
                    # become QEMU: looked at again until it is 2 s old.
                    if time.clock_gettime(time.CLOCK_BOOTTIME) - started / ticks > 2:
                        seen.add(int(entry))
                    continue
                seen.add(int(entry))
                found = re.search(rb"mac=([0-9a-f:]{17})", b" ".join(words))
                mac, at = found.group(1).decode() if found else "", boot + started / ticks
                # Not a QEMU of an earlier run that outlived it (a killed bench's).
                if mac in self.marks and at > self.began - 1:
                    self.marks[mac].append((at, "qemu", entry))


# ---- milestones and phases -----------------------------------------------------------------


def first(marks: Marks, after: float, kind: str, text: str = "") -> float | None:
    return next((t for t, k, d in marks if t >= after and k == kind and text in d), None)


def boot_milestones(marks: Marks, t0: float, done: float) -> dict[str, float]:
    """The milestones of one network boot from power-on at ``t0`` to its inventory,
    recorded at ``done``."""
    window = [m for m in marks if t0 <= m[0] <= done]
    firmware = [m for m in window if m[1].startswith("dhcp-") and m[2] != "udhcp"]
    got: dict[str, float] = {"power": t0, "inventory": done}
    if not firmware:
        return got
    got["dhcp0"] = firmware[0][0]
    script = first(window, t0, "get")
    acks = [t for t, k, _ in firmware if k == "dhcp-ack" and (script is None or t < script)]
    if acks:
        got["ack0"] = acks[0]
    if len(acks) > 1:  # UEFI through EDK2: the firmware's lease, then iPXE's
        got["ack_ipxe"] = acks[-1]
    tftp = [t for t, k, _ in window if k == "tftp" and (script is None or t < script)]
    if tftp and len(acks) > 1:
        got["tftp_end"] = tftp[-1]
    if ends := [t for t, k, d in window if k == "http-end" and "initrd" in d]:
        got["initrd_end"] = ends[0]
        if (init := first(window, ends[0], "console", "Run /init")) is not None:
            got["init"] = init
            acks = [t for t, k, d in window if k == "dhcp-ack" and d == "udhcp" and t >= init]
            if acks:
                got["agent_ack"] = acks[0]
                posts = [t for t, k, d in window if k == "post" and t >= acks[0]]
                if posts:
                    got["post"] = posts[0]
    return got


def phases(got: dict[str, float], chain: tuple[tuple[str, str], ...]) -> dict[str, float]:
    """Seconds of each phase of ``chain``: from the last milestone seen to the next one
    (a phase whose milestone is missing is left out and its time goes to the next)."""
    out, last = {}, got["power"]
    for name, milestone in chain:
        if milestone in got:
            out[name] = round(got[milestone] - last, 3)
            last = got[milestone]
    return out


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


def node_figures(marks: Marks, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Inspection and provisioning of one node, from what was seen and its timeline."""
    qemu_starts = [t for t, k, _ in marks if k == "qemu"]
    agent = [
        event_time(e) for e in events if e["kind"] == "agent" and "inventory from" in e["message"]
    ]
    provision = next((event_time(e) for e in events if e["kind"] == "provision"), None)
    powers = [event_time(e) for e in events if e["kind"] == "power"]
    out: dict[str, Any] = {"qemu_starts": len(qemu_starts)}
    if not qemu_starts or not agent:
        return out
    got = boot_milestones(marks, qemu_starts[0], agent[0])
    out["inspect"] = {
        "total": round(agent[0] - qemu_starts[0], 3),
        **phases(got, BOOT_PHASES),
    }
    out["inspect_seen"] = seen(marks, got)
    out["power_event_after_qemu_s"] = round(powers[0] - qemu_starts[0], 3) if powers else None
    # The provisioning boot starts a new QEMU (the service powered the VM off after
    # the inspection); else its power event is the closest there is.
    later = [t for t in qemu_starts + powers[1:] if provision is not None and t > provision]
    if not later or len(agent) < 2:
        return out
    t0 = later[0]
    got = boot_milestones(marks, t0, agent[1])

    for name, kind, text in (
        ("command", "agent", "told to write image"),
        ("image_end", "boot-file", "image: HTTP 200"),
        ("result", "agent", "written to"),
        ("callback", "callback-done", ""),
    ):
        times = [event_time(e) for e in events if e["kind"] == kind and text in e["message"]]
        if later := [t for t in times if t >= t0]:
            got[name] = later[0]
    if (
        "result" in got
        and (init := first(marks, got["result"], "console", "Run /init")) is not None
    ):
        got["image_init"] = init
    active = [event_time(e) for e in events if e["to_state"] == "active" and event_time(e) >= t0]
    if active:
        got["active"] = active[0]
        out["provision"] = {
            "total": round(active[0] - t0, 3),
            "to_inventory": round(agent[1] - t0, 3),
            **phases(got, BOOT_PHASES + DEPLOY_PHASES),
        }
    out["provision_seen"] = seen(marks, got)
    return out


def seen(marks: Marks, got: dict[str, float]) -> dict[str, Any]:
    """For the raw JSON: a boot's milestones and HTTP requests, in seconds from power-on."""
    t0, end = got["power"], max(got.values())
    return {
        "milestones": {k: round(v - t0, 3) for k, v in got.items()},
        "http": [
            f"{t - t0:.3f} {k} {d[:60]}" for t, k, d in marks if t0 <= t <= end and k != "tftp"
        ],
    }


# ---- the project: provisioner-lab up --vms ---------------------------------------------------


def project_run(
    firmware: str, count: int, args: argparse.Namespace, work: Path, image: Path
) -> dict[str, Any]:
    manifest = work / "rack.csv"
    argv: list[str | Path] = [
        BIN / "provisioner-lab", "up", "--vms", str(count), "--firmware", firmware,
        "--uefi-pxe", args.uefi_pxe, "--role", "bench", "--manifest", manifest,
        "--control-dir", work / "c", "--workdir", work / "w",
        "--agent-dir", args.data_dir / "agent",
    ]  # fmt: skip
    lab = Process("lab", argv, work / "lab.log", env=clean_env(PYTHONUNBUFFERED="1"))
    out: dict[str, Any] = {"chain": "project", "firmware": firmware, "vms": count, "nodes": {}}
    try:
        lab.start()
        wait_for("lab up", lambda: "lab up: " in lab.output(), [lab], 300)
        text = lab.output()
        url = re.search(r"service: (\S+)", text)
        token = re.search(r"admin token in (\S+?):", text)
        namespace = re.search(r"in namespace (\S+)", text)
        if not (url and token and namespace):
            raise RuntimeError(f"unexpected output of the lab:\n{text}")
        with manifest.open() as f:
            rows = {row["macs"]: row["name"] for row in csv.DictReader(f)}
        observer = Observer(
            namespace.group(1),
            {mac: work / "w" / name / "serial.log" for mac, name in rows.items()},
        )
        headers = {"Authorization": f"Bearer {Path(token.group(1)).read_text().strip()}"}
        api = httpx.Client(base_url=url.group(1), headers=headers, timeout=60)
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        expect(api.post("/api/v1/images", json={
            "name": "bench-64m", "os_family": "other", "version": "1", "deploy": "image",
            "image_url": f"file://{image}", "checksum": f"sha256:{digest}", "format": "raw",
        }), 201)  # fmt: skip
        role = {"name": "bench", "default_image": "bench-64m", "handoff": "immediate"}
        expect(api.post("/api/v1/roles", json=role), 201)
        out["loadavg_start"] = os.getloadavg()[0]
        began = time.monotonic()
        csv_body = {"content": manifest.read_bytes(), "headers": {"Content-Type": "text/csv"}}
        expect(api.post("/api/v1/racks/import", **csv_body), 201)  # type: ignore[arg-type]
        while time.monotonic() - began < args.timeout:
            states = [n["state"] for n in expect(api.get("/api/v1/nodes"), 200)["items"]]
            if all(s in ("active", "failed") for s in states):
                break
            if not lab.alive():
                raise RuntimeError(f"the lab exited:\n{lab.tail()}")
            time.sleep(1)
        out["wall_s"] = round(time.monotonic() - began, 1)
        out["loadavg_end"] = os.getloadavg()[0]
        observer.close()
        for mac, name in rows.items():
            node = expect(api.get(f"/api/v1/nodes/{name}"), 200)
            events = expect(api.get(f"/api/v1/nodes/{name}/events"), 200)
            out["nodes"][name] = {
                "state": node["state"], "last_error": node.get("last_error"),
                **node_figures(observer.marks[mac], events),
            }  # fmt: skip
        api.close()
    finally:
        lab.stop(timeout=120)
    return out


# ---- the raw chain: dnsmasq, its TFTP, http.server, QEMU -------------------------------------


def read_cpio(data: bytes) -> dict[str, ramdisk.Entry]:
    """The members of a ``newc`` archive, as ramdisk.cpio writes them."""
    entries: dict[str, ramdisk.Entry] = {}
    at = 0
    while True:
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name = data[at + 110 : at + 110 + name_size - 1].decode()
        at = (at + 110 + name_size + 3) & ~3
        body = data[at : at + size]
        at = (at + size + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        kind = mode & 0o170000
        target = body.decode() if kind == 0o120000 else None
        entries[name] = ramdisk.Entry(mode, body if kind == 0o100000 else None, target)


def raw_initrd(agent: build.Agent) -> bytes:
    """The agent's initramfs (busybox, drivers, udhcpc script) with the raw /init."""
    entries = read_cpio(gzip.decompress(agent.initrd.read_bytes()))
    entries["init"] = ramdisk.file(INIT.encode(), executable=True)
    return ramdisk.initramfs(entries)


class FactsHandler(SimpleHTTPRequestHandler):
    """http.server's files, and the facts a raw /init posts, noted with their time."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        facts: list[tuple[float, bytes]] = self.server.facts  # type: ignore[attr-defined]
        facts.append((time.time(), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def raw_run(
    firmware: str,
    count: int,
    args: argparse.Namespace,
    work: Path,
    agent: build.Agent,
    initrd: bytes,
) -> dict[str, Any]:
    out: dict[str, Any] = {"chain": "raw", "firmware": firmware, "vms": count, "nodes": {}}
    www, tftp = work / "www", work / "tftp"
    (www / "boot").mkdir(parents=True)
    tftp.mkdir()
    for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi"):
        shutil.copyfile(IPXE / name, tftp / name)
    for path in (work, tftp, *tftp.iterdir()):
        path.chmod(0o755)  # dnsmasq's TFTP runs as nobody
    shutil.copyfile(agent.kernel, www / "vmlinuz")
    (www / "initrd.img").write_bytes(initrd)
    with vmnet.LabNetwork(work / "net") as network:
        base = f"http://{network.address}:{PORT}"
        (www / "boot" / "bootstrap.ipxe").write_text(
            f"#!ipxe\nkernel --name kernel {base}/vmlinuz initrd=initrd raw.url={base} "
            f"BOOTIF=01-${{net0/mac:hexhyp}} console=tty0 console=ttyS0,115200n8\n"
            f"initrd --name initrd {base}/initrd.img\nboot\n"
        )
        conf = work / "net" / "dnsmasq.conf"
        conf.write_text(
            network.dnsmasq_config(base, snponly=args.uefi_pxe == "edk2")
            + f"\nenable-tftp\ntftp-root={tftp}\n"
        )
        dhcp = vmnet.spawn(network.namespace.exec_args([
            "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--pid-file=",
            f"--dhcp-leasefile={work / 'net' / 'leases'}",
            f"--log-facility={work / 'net' / 'dnsmasq.log'}",
        ]), subprocess.DEVNULL)  # fmt: skip
        network.on_close(lambda: vmnet.stop(dhcp))
        handler = functools.partial(FactsHandler, directory=str(www))
        server = network.namespace.inside(
            lambda: ThreadingHTTPServer((network.address, PORT), handler)
        )
        server.facts = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        network.on_close(server.shutdown)
        vms = []
        for i in range(count):
            spec = qemu.VmSpec(
                name=f"raw{i}", uuid=uuid.uuid4(), mac=f"52:54:00:be:0c:{i:02x}",
                tap=network.add_tap(),
                vendor="Provisioner Lab", product="Virtual Server VQ-1", serial=f"RAW{i:07d}",
                firmware=firmware, uefi_pxe=args.uefi_pxe,
            )  # fmt: skip
            vms.append(qemu.Vm(spec, work / f"raw{i}", network.namespace))
            network.on_close(vms[-1].kill)
        observer = Observer(network.namespace.name, {v.spec.mac: v.serial_log for v in vms})
        time.sleep(0.3)  # dnsmasq binds its sockets
        if dhcp.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {(work / 'net' / 'dnsmasq.log').read_text()}")
        out["loadavg_start"] = os.getloadavg()[0]
        for each in vms:
            each.start(qemu.NIC)
        deadline = time.monotonic() + args.timeout
        while len(server.facts) < count and time.monotonic() < deadline:  # type: ignore[attr-defined]
            if not any(each.running for each in vms):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        out["loadavg_end"] = os.getloadavg()[0]
        observer.close()
        posted = {
            mac: t for t, body in server.facts  # type: ignore[attr-defined]
            for mac in json.loads(body)["macs"].split()
        }  # fmt: skip
        for each in vms:
            marks = observer.marks[each.spec.mac]
            starts = [t for t, k, _ in marks if k == "qemu"]
            done = posted.get(each.spec.mac)
            figures: dict[str, Any] = {"qemu_starts": len(starts)}
            if starts and done:
                got = boot_milestones(marks, starts[0], done)
                figures["inspect"] = {
                    "total": round(done - starts[0], 3),
                    **phases(got, BOOT_PHASES),
                }
                figures["inspect_seen"] = seen(marks, got)
            out["nodes"][each.spec.name] = figures
    return out


# ---- figures ----------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration (chain, firmware, VMs): medians over VMs and repetitions."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["chain"], run["firmware"], run["vms"]), []).extend(
            run["nodes"].values()
        )
    rows = []
    for (chain, firmware, vms), nodes in groups.items():
        row: dict[str, Any] = {"chain": chain, "firmware": firmware, "vms": vms}
        for what in ("inspect", "provision"):
            done = [n[what] for n in nodes if what in n]
            if not done:
                continue
            keys = dict.fromkeys(k for d in done for k in d)
            row[what] = {k: median([d[k] for d in done if k in d]) for k in keys}
            row[what]["max"] = round(max(d["total"] for d in done), 2)
            row[what]["count"] = len(done)
        lags = [n["power_event_after_qemu_s"] for n in nodes if n.get("power_event_after_qemu_s")]
        row["power_event_lag"] = median(lags)
        row["failed"] = sum(
            1
            for n in nodes
            if "inspect" not in n or (chain == "project" and n.get("state") != "active")
        )
        rows.append(row)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = {(r["chain"], r["firmware"], r["vms"]): r for r in rows}
    out = []
    for (chain, firmware, vms), row in found.items():
        raw = found.get(("raw", firmware, vms))
        if chain != "project" or raw is None or "inspect" not in row or "inspect" not in raw:
            continue
        ratio = row["inspect"]["total"] / raw["inspect"]["total"]
        out.append({
            "firmware": firmware, "vms": vms, "project_s": row["inspect"]["total"],
            "raw_s": raw["inspect"]["total"], "ratio": round(ratio, 2), "pass": ratio <= TARGET,
        })  # fmt: skip
    return out


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def tables(results: dict[str, Any], markdown: bool) -> list[str]:
    rows = results["summary"]
    lines = [
        "Power-on -> inventory, seconds (medians over VMs and repetitions; max: slowest boot):",
        "",
    ]
    names = [name for name, _ in BOOT_PHASES]
    head = ["chain", "firmware", "VMs", *names, "total", "max", "boots"]
    body = [
        [r["chain"], r["firmware"], str(r["vms"]), *(fmt(r["inspect"].get(n)) for n in names),
         fmt(r["inspect"]["total"]), fmt(r["inspect"]["max"]), str(r["inspect"]["count"])]
        for r in rows if "inspect" in r
    ]  # fmt: skip
    lines += render_table(head, body, markdown, set(range(2, len(head))))
    lines += ["", "Project against the raw chain, power-on -> inventory (target: <= 1.10):", ""]
    body = [
        [r["firmware"], str(r["vms"]), fmt(r["project_s"]), fmt(r["raw_s"]), f"{r['ratio']:.2f}",
         "pass" if r["pass"] else "**FAIL**"]
        for r in results["ratios"]
    ]  # fmt: skip
    lines += render_table(
        ["firmware", "VMs", "project s", "raw s", "ratio", "result"], body, markdown, {1, 2, 3, 4}
    )
    lines += [
        "",
        "Project, power-on -> active with the 64 MiB image (the provisioning boot), seconds:",
        "",
    ]
    names = ["to_inventory", *(name for name, _ in DEPLOY_PHASES)]
    head = ["firmware", "VMs", "to inventory", *names[1:], "total", "max", "boots"]
    body = [
        [r["firmware"], str(r["vms"]), *(fmt(r["provision"].get(n)) for n in names),
         fmt(r["provision"]["total"]), fmt(r["provision"]["max"]), str(r["provision"]["count"])]
        for r in rows if "provision" in r
    ]  # fmt: skip
    lines += render_table(head, body, markdown, set(range(1, len(head))))
    return lines


def results_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    failed = sum(r["failed"] for r in results["summary"])
    lines = [
        *results_head(RESULTS_BEGIN, f"Run of {results['date']}", results),
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"{results['qemu']}; load average when the run began: {m['loadavg_at_start']:.2f}, "
        f"at the end {m['loadavg_at_end']:.2f}. Every VM: TCG, 1 vCPU, 512 MiB.",
        f"- {results['args']['reps']} repetition(s) of each configuration, project and raw chain "
        "alternating which goes first; UEFI VMs network-boot through "
        + (
            "OVMF's own PXE client and TFTP `snponly.efi`"
            if results["args"]["uefi_pxe"] == "edk2"
            else "the iPXE EFI ROM"
        )
        + f"; image {results['image_mib']} MiB raw (the lab image with zeros appended).",
        "- Power-on is QEMU's process start (/proc); DHCP, TFTP and HTTP milestones are packets "
        "on the lab bridge with the kernel's receive time; `kernel` ends at the console's "
        "`Run /init` (polled every 0.1 s); `inventory` ends when the service recorded it "
        "(its timeline) or when http.server received the raw /init's POST. Each phase runs "
        "from the previous milestone seen to its own.",
        "",
        *tables(results, markdown=True),
        "",
    ]
    if failed:
        lines += [f"{failed} VM(s) did not get through (see the raw JSON).", ""]
    for r in results["runs"]:
        if "error" in r:
            lines += [f"- {r['chain']} {r['firmware']} x{r['vms']}: {r['error'][-300:]}", ""]
    lines += [f"Raw figures: `{results['raw']}` (not committed).", "", RESULTS_END]
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--reps", type=int, default=2, help="repetitions of each configuration (default 2)")
    add("--vms", type=int, nargs="+", default=[1, 4], help="VMs per configuration (default 1 4)")
    add("--firmware", nargs="+", choices=qemu.FIRMWARES, default=list(qemu.FIRMWARES))
    add("--uefi-pxe", choices=qemu.UEFI_PXE, default="edk2", help="UEFI network boot")
    add("--image-mib", type=int, default=64, help="size of the deployed raw image (default 64)")
    add("--no-raw", dest="raw", action="store_false", help="skip the raw chain")
    add("--no-project", dest="project", action="store_false", help="skip the project")
    add("--data-dir", type=Path, default=REPO / "var", help="the agent's and lab image's builds")
    add("--timeout", type=float, default=900, help="seconds before a configuration gives up")
    add_output_options(parser, keep="consoles, logs")
    add("--render", type=Path, metavar="JSON", help="run nothing: the block from a raw JSON")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("bench/vm_cycle.py needs root (network namespaces, taps)")
    agent = build.current(args.data_dir / "agent")
    if agent is None:
        raise SystemExit(
            f"no agent built in {args.data_dir / 'agent'}: run `provisioner agent build`"
        )
    results: dict[str, Any] = {
        "date": now_utc(),
        "command": command_line(__file__),
        "machine": machine(("httpx",)),
        "qemu": subprocess.run(
            ["qemu-system-x86_64", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "code": code_state(("provisioner", "pxe", "lab")),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "image_mib": args.image_mib,
        "runs": [],
    }
    with work_dir("vmc-", args.keep) as work:
        work.chmod(0o755)  # the raw chain's TFTP root is in it, and dnsmasq runs as nobody
        image = work / "image.raw"
        lab_image: list[str | Path] = [BIN / "provisioner-lab", "image", "build", "--output", image]
        lab_image += ["--data-dir", args.data_dir]
        subprocess.run(lab_image, check=True, capture_output=True, env=clean_env())
        os.truncate(image, args.image_mib * MIB)
        initrd = raw_initrd(agent)
        for rep in range(args.reps):
            for firmware in args.firmware:
                for count in args.vms:
                    chains = [c for c in ("project", "raw") if getattr(args, c)]
                    for chain in chains if rep % 2 == 0 else chains[::-1]:
                        into = work / f"{chain[0]}{firmware[0]}{count}r{rep}"
                        into.mkdir()
                        load = os.getloadavg()[0]
                        progress(f"rep {rep + 1}: {chain} {firmware} x{count} (load {load:.1f})")
                        try:
                            if chain == "project":
                                done = project_run(firmware, count, args, into, image)
                            else:
                                done = raw_run(firmware, count, args, into, agent, initrd)
                        except Exception as exc:  # one configuration failing keeps the others
                            error = f"{type(exc).__name__}: {exc}"[-2000:]
                            progress(f"  failed: {error}")
                            done = {"chain": chain, "firmware": firmware, "vms": count}
                            done |= {"nodes": {}, "error": error}
                        done["rep"] = rep
                        results["runs"].append(done)
                        totals = [n.get("inspect", {}).get("total") for n in done["nodes"].values()]
                        progress(f"  power-on -> inventory: {totals}")
    results["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        results = run(args)
        results["summary"] = summarise(results["runs"])
        results["ratios"] = ratios(results["summary"])
        print(f"raw figures: {save_raw(results, args.out, 'vm_cycle')}")
    print("\n".join(tables(results, markdown=False)))
    publish(args, lambda: results_markdown(results), RESULTS_BEGIN, RESULTS_END)
    return 0 if all(r["pass"] for r in results["ratios"]) else 1


if __name__ == "__main__":
    sys.exit(main())
