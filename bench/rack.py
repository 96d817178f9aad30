"""Rack benchmark: lab machines from manifest import to `active`, end to end.

For each size (default 100, then 500): `provisioner serve` with its embedded TFTP server
(run as an operator runs it), a lab rack (`provisioner-lab up --tftp --ipxe-url`) whose
machines really network-boot (TFTP loader, iPXE scripts, small kernel and initrd, answer
file, installer callbacks), an image and two roles, then the lab's manifest with a role
per row to `POST /api/v1/racks/import`; the clock runs from that request until every node
is `active`. Reported: wall time (and when the last node was inspected, provisioning and
active, from the nodes' timelines), the service's CPU seconds and average cores, its peak
resident memory, the lab's CPU, and failures. The issue's targets (issue 5, point 8), on
this 2-core machine with the lab on it too: 100 machines in <= 60 s, 500 in <= 240 s,
no failure, the service averaging <= 1 core and peaking <= 300 MiB resident.

Reference (when bench/ironic/.venv exists): OpenStack Ironic, same run, its BMC
verification (`manage`: enroll -> verifying -> manageable) and `power on` through its API
with the `ipmitool` power and management interfaces, over 100 fresh lab BMCs.

Run by hand (not in CI), from the checkout, with the project's venv:

    .venv/bin/python bench/rack.py                       # 100 and 500; rewrites its block
    .venv/bin/python bench/rack.py --nodes 100 --no-reference --no-write-results

bench/README.md says what is measured and how.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from common import (
    TICKS,
    git,
    machine_busy_seconds,
    progress,
    save_raw,
    stat_fields,
    write_results,
)

from provisioner.cli.demo import free_udp_block

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BIN = Path(sys.executable).parent
IRONIC_DIR = BENCH_DIR / "ironic"
IRONIC_VENV = IRONIC_DIR / ".venv"
IRONIC_HEADERS = {"X-OpenStack-Ironic-API-Version": "latest"}
RESULTS_BEGIN = "<!-- bench/rack.py writes from here -->"
RESULTS_END = "<!-- bench/rack.py writes up to here -->"
IPXE = Path("/usr/lib/ipxe")
IMAGE = "bench-tiny"
ROLES = ("compute", "storage")
MIB = 1024 * 1024

# The issue's targets: wall seconds by size, and for every size the service's average
# cores and peak resident memory.
WALL_TARGETS = {100: 60.0, 500: 240.0}
CORES_TARGET = 1.0
RSS_TARGET_MIB = 300.0
# The issue's Ironic figures, quoted when Ironic is not run.
ISSUE_IRONIC = {"version": "39", "nodes": 100, "verify_s": 13.0, "power_on_s": 19.0}


# ---- processes --------------------------------------------------------------------------


class Proc:
    """A process the bench started, in its own session; CPU and memory of its tree from
    /proc."""

    def __init__(self, label: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.label = label
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log.parent,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with suppress(OSError, IndexError):
                    parents[int(entry)] = int(stat_fields(int(entry))[1])
        tree = [self.proc.pid]
        for pid in tree:
            tree.extend(child for child, parent in parents.items() if parent == pid)
        return tree

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with suppress(OSError):
                fields = stat_fields(pid)
                # utime, stime, and the children it has reaped (Ironic's ipmitool runs)
                total += sum(int(v) for v in fields[11:15])
        return total / TICKS

    def memory_mib(self) -> dict[str, float]:
        """VmRSS and VmHWM (peak) summed over the tree."""
        rss = hwm = 0
        for pid in self.pids():
            with suppress(OSError), open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        return {"rss_mib": round(rss / 1024, 1), "hwm_mib": round(hwm / 1024, 1)}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        # Its own session: whatever is left of its group goes, and nothing else.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@contextmanager
def started(procs: list[Proc]) -> Iterator[list[Proc]]:
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop()


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], bool], procs: list[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.label} exited ({p.proc.returncode}):\n{p.tail()}")
        with suppress(httpx.TransportError, OSError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def start_lab(
    nodes: int,
    work: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    boot: tuple[int, str] | None,
) -> tuple[Proc, Path]:
    manifest = work / "lab.csv"
    argv = [
        str(BIN / "provisioner-lab"),
        "up",
        "--nodes",
        str(nodes),
        "--manifest",
        str(manifest),
        "--base-port",
        str(free_udp_block(nodes)),
        "--control-dir",
        str(work / "lab-control"),
        "--per-process",
        str(args.per_process),
        "--install-time",
        str(args.install_time),
        "--reboot-delay",
        str(args.reboot_delay),
    ]
    if boot:
        argv += ["--tftp", f"127.0.0.1:{boot[0]}", "--ipxe-url", boot[1]]
    lab = Proc("lab", argv, work / "lab.log", env)
    wait_for("lab up", lambda: "lab up:" in lab.tail(100_000), [lab], 120)
    line = next(x for x in lab.tail(100_000).splitlines() if "lab up:" in x)
    if f"{nodes}/{nodes}" not in line:
        raise RuntimeError(f"the lab did not start every BMC: {line}")
    return lab, manifest


# ---- the service ------------------------------------------------------------------------


def export_revision(rev: str, into: Path) -> str:
    """``rev`` exported with git archive (the checkout is left alone); the service and the
    lab are imported from there, ahead of the editable install."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    if not commit:
        raise RuntimeError(f"no such revision: {rev}")
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        capture_output=True,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit


def code_state(rev: str | None, commit: str | None) -> dict[str, Any]:
    if rev:
        return {"source": f"git archive of {rev}", "commit": commit, "uncommitted_files": []}
    changed = git(
        "status", "--porcelain", "--", "provisioner", "pxe", "lab", "migrations", "pyproject.toml"
    )
    return {
        "source": "working tree",
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_files": [line[3:] for line in changed.splitlines()],
    }


def service_settings(args: argparse.Namespace) -> dict[str, str]:
    """The PROVISIONER_* settings a big rack's operator would set; the rest are defaults."""
    chosen = {
        "PROVISIONER_RECONCILE_INTERVAL": args.reconcile_interval,
        "PROVISIONER_POWER_ON_RATE": args.power_on_rate,
        "PROVISIONER_MAX_DEPLOYING": args.max_deploying,
        "PROVISIONER_MAX_DEPLOYING_PER_RACK": args.max_deploying_per_rack,
        "PROVISIONER_BMC_WORKERS": args.bmc_workers,
        "PROVISIONER_POWER_SYNC_INTERVAL": args.power_sync_interval,
    }
    return {k: str(v) for k, v in chosen.items() if v is not None}


def prepare(work: Path, args: argparse.Namespace, pythonpath: str | None) -> dict[str, Any]:
    port, tftp_port = free_port(), free_port(socket.SOCK_DGRAM)
    tftp_root = work / "tftp"
    tftp_root.mkdir()
    for name in ("undionly.kpxe", "ipxe.efi"):
        if (IPXE / name).is_file():
            shutil.copyfile(IPXE / name, tftp_root / name)
        else:  # lab machines fetch the loader but do not run it
            (tftp_root / name).write_bytes(os.urandom(70_000))
    images = work / "images" / "tiny"
    images.mkdir(parents=True)
    (images / "vmlinuz").write_bytes(os.urandom(args.kernel_kib * 1024))
    (images / "initrd.img").write_bytes(os.urandom(args.initrd_kib * 1024))
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env.update(
        HOME=str(work),
        PYTHONUNBUFFERED="1",
        PROVISIONER_DATA_DIR=str(work / "data"),
        PROVISIONER_IMAGES_DIR=str(work / "images"),
        PROVISIONER_BOOT_URL=url,
        PROVISIONER_URL=url,
        PROVISIONER_TFTP_ENABLED="1",
        PROVISIONER_TFTP_ADDRESS="127.0.0.1",
        PROVISIONER_TFTP_PORT=str(tftp_port),
        PROVISIONER_TFTP_ROOT=str(tftp_root),
        **service_settings(args),
    )
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return {"url": url, "port": port, "tftp_port": tftp_port, "env": env}


def offline_token(env: dict[str, str]) -> str:
    made = subprocess.run(
        [str(BIN / "provisioner"), "token", "create", "--scope", "admin", "--name", "bench"],
        env=env,
        capture_output=True,
        text=True,
    )
    if made.returncode:
        raise RuntimeError(f"token create failed: {made.stderr[-2000:]}")
    return made.stdout.strip().splitlines()[-1]


def expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} -> {response.status_code}: "
            f"{response.text[:500]}"
        )
    return response.json() if response.content else None


def catalogue(api: httpx.Client) -> None:
    image = {
        "name": IMAGE,
        "os_family": "rhel",
        "version": "9",
        "kernel_url": "tiny/vmlinuz",
        "initrd_url": "tiny/initrd.img",
        "repo_url": "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/",
        "answer_template": "kickstart",
    }
    expect(api.post("/api/v1/images", json=image), 201)
    for role in ROLES:
        expect(api.post("/api/v1/roles", json={"name": role, "default_image": IMAGE}), 201)


def with_roles(manifest: Path) -> bytes:
    """The manifest with a role per row: the first half computes, the rest stores."""
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for index, row in enumerate(rows):
        row["role"] = ROLES[0] if index < len(rows) / 2 else ROLES[1]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


STATE_LINE = re.compile(r'^provisioner_nodes\{state="([a-z]+)"\} ([0-9.e+]+)$', re.M)


def states(api: httpx.Client) -> dict[str, int]:
    """Nodes by state from /metrics: one COUNT query, far cheaper than listing them."""
    text = api.get("/metrics").text
    return {s: int(float(n)) for s, n in STATE_LINE.findall(text) if float(n)}


class Sampler(threading.Thread):
    """Peak resident memory of the service, sampled, beside its VmHWM."""

    def __init__(self, proc: Proc, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.proc, self.interval = proc, interval
        self.peak_rss = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self.proc.memory_mib()["rss_mib"])


def all_nodes(api: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = expect(api.get("/api/v1/nodes", params=params), 200)
        items += page["items"]
        if not (cursor := page.get("next_cursor")):
            return items


def timelines(api: httpx.Client, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    def one(name: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = expect(api.get(f"/api/v1/nodes/{name}/events"), 200)
        return events

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def breakdown(events: dict[str, list[dict[str, Any]]], t0: float) -> dict[str, Any]:
    """Seconds from the import until the last node first reached each state (and the
    median node), from the service's own timestamps."""
    out: dict[str, Any] = {}
    for state in ("ready", "provisioning", "provisioned", "active"):
        firsts = []
        for timeline in events.values():
            at = next((e["time"] for e in timeline if e["to_state"] == state), None)
            if at is not None:
                firsts.append(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() - t0)
        if firsts:
            firsts.sort()
            out[state] = {
                "nodes": len(firsts),
                "first_s": round(firsts[0], 1),
                "median_s": round(firsts[len(firsts) // 2], 1),
                "last_s": round(firsts[-1], 1),
            }
    out["went_failed"] = sorted(
        name for name, tl in events.items() if any(e["to_state"] == "failed" for e in tl)
    )
    return out


def start_profile(pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    spy = BIN / "py-spy"
    if not spy.exists():
        progress("no .venv/bin/py-spy: not profiling")
        return None
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "-p",
            str(pid),
            "-r",
            "100",
            "--nonblocking",
            "--gil",
            "-f",
            "raw",
            "-o",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


FRAME = re.compile(r"^(.*) \((.*?):\d+\)$")


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Samples by function: own (the leaf frame) and inclusive (anywhere on the stack)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        # py-spy's raw frames: "function (path/to/file.py:line)"
        frames = [FRAME.sub(r"\1 (\2)", f) for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return {
        "samples": total,
        "own": [(f, round(n / total, 3)) for f, n in own.most_common(top)] if total else [],
        "inclusive": [(f, round(n / total, 3)) for f, n in inclusive.most_common(top)]
        if total
        else [],
    }


def rack_run(
    nodes: int, args: argparse.Namespace, work: Path, pythonpath: str | None
) -> dict[str, Any]:
    work.mkdir(parents=True)
    run = prepare(work, args, pythonpath)
    env, url = run["env"], run["url"]
    token = offline_token(env)
    out: dict[str, Any] = {"nodes": nodes, "settings": service_settings(args)}
    with started([]) as procs:
        svc = Proc(
            "service",
            [str(BIN / "provisioner"), "serve", "--host", "127.0.0.1", "--port", str(run["port"])],
            work / "service.log",
            env,
        )
        procs.append(svc)
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        wait_for("service ready", lambda: api.get("/readyz").status_code == 200, procs, 60)
        catalogue(api)
        lab, manifest = start_lab(
            nodes, work, env, args, (run["tftp_port"], f"{url}/boot/bootstrap.ipxe")
        )
        procs.append(lab)
        body = with_roles(manifest)
        out["memory_before"] = svc.memory_mib()
        time.sleep(1)  # let the lab's start-up CPU settle out of the figures
        sampler = Sampler(svc)
        sampler.start()
        profile = args.profile_dir / f"rack-{nodes}.txt" if args.profile_dir else None
        spy = start_profile(svc.pid, profile) if profile else None
        svc0, lab0, busy0, me0 = (
            svc.cpu_seconds(),
            lab.cpu_seconds(),
            machine_busy_seconds(),
            time.process_time(),
        )
        load0 = os.getloadavg()[0]
        t0 = time.time()
        start = time.monotonic()
        expect(
            api.post("/api/v1/racks/import", content=body, headers={"Content-Type": "text/csv"}),
            201,
        )
        out["import_s"] = round(time.monotonic() - start, 2)
        last: dict[str, int] = {}
        deadline = start + args.timeout
        while True:
            now = states(api)
            elapsed = time.monotonic() - start
            if now != last:
                progress(
                    f"  {nodes} machines {elapsed:6.1f} s {now} service "
                    f"{svc.cpu_seconds() - svc0:.1f} CPU-s, lab {lab.cpu_seconds() - lab0:.1f}"
                )
                last = now
            if now.get("active", 0) >= nodes or time.monotonic() > deadline:
                break
            if (
                now.get("failed", 0)
                and sum(v for k, v in now.items() if k in ("active", "failed")) >= nodes
            ):
                break
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"{p.label} exited during the run:\n{p.tail()}")
            time.sleep(args.poll)
        wall = time.monotonic() - start
        svc_cpu, lab_cpu = svc.cpu_seconds() - svc0, lab.cpu_seconds() - lab0
        bench_cpu = time.process_time() - me0
        busy = machine_busy_seconds() - busy0
        if spy:
            spy.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        sampler.done.set()
        sampler.join()
        memory = svc.memory_mib()
        out.update(
            wall_s=round(wall, 1),
            all_active=now.get("active", 0) >= nodes,
            final_states=now,
            service_cpu_s=round(svc_cpu, 1),
            service_cores=round(svc_cpu / wall, 2),
            lab_cpu_s=round(lab_cpu, 1),
            lab_cores=round(lab_cpu / wall, 2),
            bench_cpu_s=round(bench_cpu, 1),
            others_cpu_s=round(max(busy - svc_cpu - lab_cpu - bench_cpu, 0.0), 1),
            loadavg_start=round(load0, 2),
            loadavg_end=round(os.getloadavg()[0], 2),
            peak_rss_sampled_mib=sampler.peak_rss,
            vmhwm_mib=memory["hwm_mib"],
            rss_end_mib=memory["rss_mib"],
            peak_rss_mib=max(sampler.peak_rss, memory["hwm_mib"]),
        )
        listed = all_nodes(api)
        out["not_active"] = [
            {"name": n["name"], "state": n["state"], "last_error": n.get("last_error")}
            for n in listed
            if n["state"] != "active"
        ]
        out["breakdown"] = breakdown(timelines(api, [n["name"] for n in listed]), t0)
        if profile:
            out["profile"] = {"file": str(profile), **summarize_profile(profile)}
        api.close()
    return out


# ---- OpenStack Ironic: BMC verification and power-on of the same kind of BMCs ---------------

IRONIC_IPMI_CONF = """\
# Added by bench/rack.py over ironic.conf.template: the ipmitool power and management
# interfaces, so that Ironic talks IPMI to the lab's BMCs (nodes use fake-hardware with
# those two interfaces; boot and deploy stay fake).
[DEFAULT]
enabled_power_interfaces = fake,ipmitool
enabled_management_interfaces = fake,ipmitool
"""


def ironic_version() -> str:
    code = "from importlib.metadata import version; print(version('ironic'))"
    run = subprocess.run(
        [str(IRONIC_VENV / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout.strip()


def ironic_wait(
    client: httpx.Client, done: Callable[[dict[str, Any]], bool | None], timeout: float
) -> tuple[float, list[dict[str, Any]]]:
    """Poll the node list until ``done`` is not None for every node (True: succeeded)."""
    start = time.monotonic()
    fields = "uuid,name,provision_state,power_state,target_power_state,last_error"
    while True:
        listed = expect(client.get("/v1/nodes", params={"fields": fields, "limit": 1000}), 200)
        nodes = listed["nodes"]
        if all(done(n) is not None for n in nodes) or time.monotonic() - start > timeout:
            return time.monotonic(), nodes
        time.sleep(0.25)


def ironic_run(nodes: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    (work / "locks").mkdir()
    port = free_port()
    conf = work / "ironic.conf"
    template = (IRONIC_DIR / "ironic.conf.template").read_text()
    conf.write_text(template.replace("@DATA_DIR@", str(work)).replace("@PORT@", str(port)))
    extra = work / "ironic-ipmi.conf"
    extra.write_text(IRONIC_IPMI_CONF)
    bin_dir = IRONIC_VENV / "bin"
    subprocess.run(
        [str(bin_dir / "ironic-dbsync"), "--config-file", str(conf), "create_schema"],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    out: dict[str, Any] = {"version": ironic_version(), "nodes": nodes}
    with started([]) as procs:
        lab, manifest = start_lab(nodes, work, env, args, None)
        procs.append(lab)
        ironic = Proc(
            "ironic",
            [str(bin_dir / "ironic"), "--config-file", str(conf), "--config-file", str(extra)],
            work / "ironic.out",
            env,
        )
        procs.append(ironic)
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=IRONIC_HEADERS, timeout=120
        )

        def has_fake_driver() -> bool:
            drivers = client.get("/v1/drivers").json().get("drivers", [])
            return any(d["name"] == "fake-hardware" for d in drivers)

        wait_for("ironic ready", has_fake_driver, procs, 180)
        with manifest.open(newline="") as f:
            rows = list(csv.DictReader(f))

        def create(row: dict[str, str]) -> str:
            body = {
                "name": row["name"],
                "driver": "fake-hardware",
                "power_interface": "ipmitool",
                "management_interface": "ipmitool",
                "driver_info": {
                    "ipmi_address": row["bmc_address"],
                    "ipmi_port": int(row["bmc_port"]),
                    "ipmi_username": row["bmc_username"],
                    "ipmi_password": row["bmc_password"],
                },
            }
            uuid: str = expect(client.post("/v1/nodes", json=body), 201)["uuid"]
            return uuid

        with ThreadPoolExecutor(8) as pool:
            uuids = list(pool.map(create, rows))

        def phase(
            name: str, path: str, target: str, done: Callable[[dict[str, Any]], bool | None]
        ) -> None:
            cpu0, lab0 = ironic.cpu_seconds(), lab.cpu_seconds()
            busy0, me0, load0 = machine_busy_seconds(), time.process_time(), os.getloadavg()[0]
            start = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda u: expect(
                            client.put(f"/v1/nodes/{u}/states/{path}", json={"target": target}), 202
                        ),
                        uuids,
                    )
                )
            sent = time.monotonic() - start
            end, listed = ironic_wait(client, done, args.timeout)
            failed = [
                {
                    "name": n["name"],
                    "provision_state": n["provision_state"],
                    "power_state": n["power_state"],
                    "last_error": n["last_error"],
                }
                for n in listed
                if not done(n)
            ]
            ironic_cpu, lab_cpu = ironic.cpu_seconds() - cpu0, lab.cpu_seconds() - lab0
            others = machine_busy_seconds() - busy0 - ironic_cpu - lab_cpu
            out[name] = {
                "wall_s": round(end - start, 1),
                "requests_s": round(sent, 1),
                "ironic_cpu_s": round(ironic_cpu, 1),
                "lab_cpu_s": round(lab_cpu, 1),
                "others_cpu_s": round(max(others - (time.process_time() - me0), 0.0), 1),
                "loadavg_start": round(load0, 2),
                "loadavg_end": round(os.getloadavg()[0], 2),
                "failed": failed,
            }
            progress(f"  ironic {name}: {out[name]['wall_s']} s, {len(failed)} failed")

        def verified(n: dict[str, Any]) -> bool | None:
            if n["provision_state"] == "manageable":
                return True
            if n["provision_state"] == "enroll" and n["last_error"]:
                return False
            return None

        def powered(n: dict[str, Any]) -> bool | None:
            if n["target_power_state"]:
                return None
            if n["power_state"] == "power on":
                return True
            return False if n["last_error"] else None

        phase("verify", "provision", "manage", verified)
        phase("power_on", "power", "power on", powered)
        out["memory"] = ironic.memory_mib()
        client.close()
    return out


# ---- reporting --------------------------------------------------------------------------


def verdicts(row: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, measured, target, passed) for one size."""
    checks = []
    wall_target = WALL_TARGETS.get(row["nodes"])
    if wall_target is not None:
        checks.append(
            (
                "wall time, import to all active",
                f"{row['wall_s']:.1f} s",
                f"<= {wall_target:.0f} s",
                row["all_active"] and row["wall_s"] <= wall_target,
            )
        )
    failures = len(row["not_active"]) + len(row["breakdown"].get("went_failed", []))
    checks.append(("failures", str(failures), "0", failures == 0 and row["all_active"]))
    checks.append(
        (
            "service CPU, average cores",
            f"{row['service_cores']:.2f}",
            f"<= {CORES_TARGET:.0f}",
            row["service_cores"] <= CORES_TARGET,
        )
    )
    checks.append(
        (
            "service peak resident memory",
            f"{row['peak_rss_mib']:.0f} MiB",
            f"<= {RSS_TARGET_MIB:.0f} MiB",
            row["peak_rss_mib"] <= RSS_TARGET_MIB,
        )
    )
    return checks


def stage(row: dict[str, Any], state: str) -> str:
    b = row["breakdown"].get(state)
    return f"{b['last_s']:.1f} s" if b else "-"


def tables(results: dict[str, Any], markdown: bool) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |" if markdown else "  ".join(f"{c:<20}" for c in cells)

    lines: list[str] = []
    head = [
        "machines",
        "import → all active",
        "all ready (inspected)",
        "all provisioning",
        "all provisioned",
        "service CPU",
        "service avg cores",
        "service peak RSS",
        "lab CPU",
        "others' CPU",
        "load avg (start/end)",
        "failures",
    ]
    lines.append(line(head))
    if markdown:
        lines.append("|" + "---|" * len(head))
    for r in results["runs"]:
        failures = len(r["not_active"]) + len(r["breakdown"].get("went_failed", []))
        lines.append(
            line(
                [
                    f"{r['nodes']:,}",
                    f"{r['wall_s']:.1f} s",
                    stage(r, "ready"),
                    stage(r, "provisioning"),
                    stage(r, "provisioned"),
                    f"{r['service_cpu_s']:.1f} s",
                    f"{r['service_cores']:.2f}",
                    f"{r['peak_rss_mib']:.0f} MiB",
                    f"{r['lab_cpu_s']:.1f} s",
                    f"{r['others_cpu_s']:.1f} s",
                    f"{r['loadavg_start']:.1f} / {r['loadavg_end']:.1f}",
                    str(failures),
                ]
            )
        )
    lines.append("")
    head = ["machines", "target", "measured", "limit", "verdict"]
    lines.append(line(head))
    if markdown:
        lines.append("|" + "---|" * len(head))
    for r in results["runs"]:
        for what, measured, limit, ok in verdicts(r):
            lines.append(
                line(
                    [
                        f"{r['nodes']:,}",
                        what,
                        measured,
                        limit,
                        "pass" if ok else "**FAIL**" if markdown else "FAIL",
                    ]
                )
            )
    lines.append("")
    ir = results.get("ironic")
    head = [
        "reference",
        "BMCs",
        "verify (enroll → manageable)",
        "power on",
        "Ironic CPU (verify / on)",
        "others' CPU (verify / on)",
        "load avg (start/end)",
    ]
    lines.append(line(head))
    if markdown:
        lines.append("|" + "---|" * len(head))
    if ir:
        v, p = ir["verify"], ir["power_on"]
        fails = len(v["failed"]) + len(p["failed"])
        lines.append(
            line(
                [
                    f"Ironic {ir['version']}, measured in this run",
                    str(ir["nodes"]),
                    f"{v['wall_s']:.1f} s",
                    f"{p['wall_s']:.1f} s",
                    f"{v['ironic_cpu_s']:.1f} s / {p['ironic_cpu_s']:.1f} s"
                    + (f" ({fails} failed)" if fails else ""),
                    f"{v.get('others_cpu_s', '-')} s / {p.get('others_cpu_s', '-')} s",
                    f"{v.get('loadavg_start', '-')} / {p.get('loadavg_end', '-')}",
                ]
            )
        )
    q = ISSUE_IRONIC
    lines.append(
        line(
            [
                f"Ironic {q['version']}, the issue's figures, not measured in this run",
                str(q["nodes"]),
                f"{q['verify_s']:.0f} s",
                f"{q['power_on_s']:.0f} s",
                "-",
                "-",
                "-",
            ]
        )
    )
    ours = next((r for r in results["runs"] if r["nodes"] == q["nodes"]), None)
    if ours and ours["breakdown"].get("ready"):
        lines.append("")
        lines.append(
            f"For comparison, the provisioner's {ours['nodes']}-machine run had every node "
            f"inspected (BMC verified, inventory read, profile matched: `ready`) "
            f"{ours['breakdown']['ready']['last_s']:.1f} s after the import, every node "
            f"`provisioning` (deployment made, then powered on at the set rate) after "
            f"{stage(ours, 'provisioning')}, and every node `active` after "
            f"{ours['wall_s']:.1f} s."
        )
    return lines


def failures_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for r in results["runs"]:
        bad = r["not_active"]
        went = r["breakdown"].get("went_failed", [])
        if bad or went:
            shown = "; ".join(f"{n['name']} {n['state']}: {n['last_error']}" for n in bad[:10])
            lines.append(
                f"- {r['nodes']} machines: {len(bad)} not active ({shown}); "
                f"{len(went)} went through `failed`."
            )
    return lines


def settings_note(results: dict[str, Any]) -> str:
    s = results["runs"][0]["settings"] if results["runs"] else {}
    a = results["args"]
    shown = ", ".join(f"`{k}={v}`" for k, v in s.items())
    return (
        f"- Service settings (an operator's for a big rack; the rest default): {shown}. "
        f"Lab: `--per-process {a['per_process']} --install-time {a['install_time']} "
        f"--reboot-delay {a['reboot_delay']}`; boot files: the iPXE loader from "
        f"{IPXE} over TFTP, a {a['kernel_kib']} KiB kernel and a {a['initrd_kib']} KiB "
        "initrd over HTTP."
    )


def results_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    code = results["code"]
    note = f"{code['source']}, commit {code['commit'][:12]}"
    if code["uncommitted_files"]:
        note += f" with uncommitted changes to {', '.join(code['uncommitted_files'])}"
    ir = results.get("ironic")
    lines = [
        RESULTS_BEGIN,
        "",
        f"## Rack, manifest import to active: run of {results['date']}",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"- Code: {note}.",
        f"- Machine: {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}; Python "
        f"{m['python']}. Load average at the start: {m['loadavg_at_start']:.2f}, at the end: "
        f"{m['loadavg_at_end']:.2f} (the machine is shared; each row has its own).",
        "- Per size, fresh: `provisioner serve` with its embedded TFTP server on 127.0.0.1 "
        "(SQLite in a temporary data directory), an image and two roles, a lab of that many "
        "machines (`provisioner-lab up --tftp --ipxe-url`, same machine, same two cores), "
        "then the lab's manifest, half `compute` and half `storage`, in one `POST "
        "/api/v1/racks/import`. The clock runs from that request until /metrics counts every "
        "node `active`; nothing else is asked of the service (progress from /metrics every "
        f"{results['args']['poll']} s). The stage columns are when the last node first "
        "reached that state, from the nodes' timelines.",
        settings_note(results),
        "- CPU: user+system seconds of the service's process (and the lab's processes) from "
        "/proc over that time; average cores = CPU seconds / wall seconds; others' CPU is "
        "the rest of the machine but this script (other engineers' work). Peak RSS: the "
        "larger of VmRSS sampled every 0.2 s and VmHWM at the end.",
    ]
    if ir:
        lines.append(
            f"- Reference: OpenStack Ironic {ir['version']} (bench/ironic, `ironic` "
            "all-in-one, SQLite, noauth) with the `ipmitool` power and management interfaces "
            f"(fake-hardware otherwise), over {ir['nodes']} fresh lab BMCs, in the same run: "
            "`manage` (enroll → verifying → manageable: validation and a power-state read "
            "over IPMI) for every node, then `power on`, each timed from the first request "
            "until every node got there (polling the node list every 0.25 s); Ironic's own "
            "defaults for ipmitool (retries, minimum interval between commands to one BMC). "
            "It does not deploy anything: there is no equivalent of the provisioner's "
            "run to compare with, only these first steps."
        )
    else:
        lines.append(
            "- Reference: Ironic not run here "
            f"({results.get('ironic_status', 'skipped')}); the issue's figures for Ironic "
            f"{ISSUE_IRONIC['version']} are quoted, not measured in this run."
        )
    lines += ["", *tables(results, markdown=True), ""]
    lines += failures_lines(results)
    lines += [f"Raw figures: `{results['raw']}` (not committed).", "", RESULTS_END]
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("uvicorn", "fastapi", "sqlalchemy", "pyghmi", "httpx"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "loadavg_at_start": os.getloadavg()[0],
    }


def command_line() -> str:
    python = Path(sys.executable)
    shown = os.path.relpath(python, REPO) if python.is_relative_to(REPO) else python.name
    return shlex.join([shown, os.path.relpath(Path(__file__).resolve(), REPO), *sys.argv[1:]])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--nodes",
        type=int,
        nargs="*",
        default=[100, 500],
        help="rack sizes, one run each, in this order (default: 100 500; none: only the reference)",
    )
    add("--timeout", type=float, default=600, help="seconds before a run gives up (default 600)")
    add("--poll", type=float, default=0.5, help="seconds between /metrics polls (default 0.5)")
    svc = parser.add_argument_group("service settings (PROVISIONER_*; 'default' leaves one unset)")

    def opt(value: str) -> str | None:
        return None if value == "default" else value

    svc.add_argument("--reconcile-interval", type=opt, default="0.5")
    svc.add_argument("--power-on-rate", type=opt, default="50", help="machines powered on per s")
    svc.add_argument("--max-deploying", type=opt, default="500")
    svc.add_argument("--max-deploying-per-rack", type=opt, default="default")
    svc.add_argument("--bmc-workers", type=opt, default="default")
    svc.add_argument(
        "--power-sync-interval",
        type=opt,
        default="default",
        help="seconds between power syncs; 0 stops them",
    )
    lab = parser.add_argument_group("the lab")
    lab.add_argument("--per-process", type=int, default=250, help="BMCs per lab process")
    lab.add_argument("--install-time", type=float, default=1.0)
    lab.add_argument("--reboot-delay", type=float, default=1.0)
    lab.add_argument("--kernel-kib", type=int, default=64)
    lab.add_argument("--initrd-kib", type=int, default=128)
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument(
        "--reference",
        choices=["ironic"],
        default="ironic" if IRONIC_VENV.exists() else None,
        help="measure Ironic's BMC verification and power-on too (the default "
        "when bench/ironic/.venv exists; bench/ironic/setup.sh makes it)",
    )
    ref.add_argument("--no-reference", dest="reference", action="store_const", const=None)
    add("--ironic-nodes", type=int, default=100, help="BMCs for Ironic (default 100)")
    add(
        "--rev",
        help="run the service and the lab from this git revision (git archive to a "
        "scratch directory) instead of the working tree",
    )
    add(
        "--profile-dir",
        type=Path,
        help="sample the service with py-spy during each run "
        "(raw collapsed stacks of GIL-holding samples; the figures of such a run are skewed)",
    )
    add("--out", type=Path, default=BENCH_DIR / "out", help="raw JSON directory")
    add("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    add(
        "--no-write-results",
        dest="write_results",
        action="store_false",
        help="leave bench/RESULTS.md alone (trial runs)",
    )
    add("--keep", action="store_true", help="keep the work directory (logs, databases)")
    add(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: print and write the block from an earlier run's raw JSON",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="provisioner-rack-"))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": [],
    }
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    try:
        commit = export_revision(args.rev, work / "source") if args.rev else None
        results["code"] = code_state(args.rev, commit)
        pythonpath = str(work / "source") if args.rev else None
        for nodes in args.nodes:
            progress(f"{nodes} machines (load average {os.getloadavg()[0]:.1f})")
            results["runs"].append(rack_run(nodes, args, work / f"rack-{nodes}", pythonpath))
        if args.reference == "ironic":
            progress(f"Ironic: {args.ironic_nodes} BMCs")
            try:
                results["ironic"] = ironic_run(args.ironic_nodes, args, work / "ironic")
            except Exception as exc:  # the reference failing must not lose our figures
                results["ironic_status"] = f"failed: {type(exc).__name__}: {exc}"[:500]
                progress(results["ironic_status"])
        else:
            results["ironic_status"] = "--no-reference, or no bench/ironic/.venv"
    finally:
        if args.keep:
            progress(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        results = run(args)
        raw = save_raw(results, args.out, "rack")
        print(f"raw figures: {raw}")
    print("\n".join(tables(results, markdown=False)))
    for line in failures_lines(results):
        print(line)
    for r in results["runs"]:
        if prof := r.get("profile"):
            print(
                f"\nprofile of the {r['nodes']}-machine run ({prof.get('samples', 0)} "
                f"GIL samples, {prof['file']}), own time:"
            )
            for frame, share in prof.get("own", [])[:15]:
                print(f"  {share:6.1%}  {frame}")
    if args.write_results:
        write_results(args.results, results_markdown(results), RESULTS_BEGIN, RESULTS_END)
        print(f"results: {args.results}")
    ok = all(passed for r in results["runs"] for *_, passed in verdicts(r))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
