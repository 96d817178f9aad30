"""Boot-storm benchmark: many machines fetching their boot chain at once.

TFTP half: N concurrent clients each fetch the iPXE binary from our server
(`python -m pxe.tftp`, its own process) and, in the same run, from tftpd-hpa's `in.tftpd`,
in paired rounds whose order alternates; the figures are medians over the rounds. The
issue's target: aggregate throughput at least 0.6 x in.tftpd's at 200 clients.

HTTP half: N machines each fetch an 8 MiB kernel and a 32 MiB initrd from `provisioner
serve` (run as an operator runs it) and, in the same paired rounds, from nginx with one
worker (target: at least 0.5 x nginx's throughput); then `GET /boot/ipxe?mac=` under
wrk with 32 connections on the service seeded with 1,020 nodes (target: 3,000 req/s).
bench/README.md says what is measured and how.

Run by hand (not in CI), from the checkout, with the project's venv:

    .venv/bin/python bench/boot_storm.py                      # full run; rewrites its block
    .venv/bin/python bench/boot_storm.py --rounds 3 --no-write-results

The clients are the lab's asyncio TFTP client (lab/tftp_client.py) on uvloop, in client
processes of their own (`--client-processes`) that start together at an agreed instant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from common import (
    IPXE,
    NO_BACKGROUND_WORK,
    REPO,
    WRK,
    Meter,
    Process,
    add_output_options,
    admin_token,
    answers_200,
    api_client,
    clean_env,
    code_state,
    command_line,
    free_port,
    local_mac,
    machine,
    machine_busy_seconds,
    now_utc,
    profile_summary,
    progress,
    provisioner_serve,
    publish,
    py_spy,
    render_table,
    results_head,
    running,
    save_raw,
    tool_version,
    wrk,
    wrk_script,
)

RESULTS_BEGIN = "<!-- bench/boot_storm.py writes from here -->"
RESULTS_END = "<!-- bench/boot_storm.py writes up to here -->"
IN_TFTPD = "/usr/sbin/in.tftpd"
TARGET_RATIO = 0.6  # the issue's: TFTP aggregate throughput >= 0.6 x in.tftpd's
NGINX = "/usr/sbin/nginx"
KERNEL, KERNEL_SIZE = "vmlinuz-storm", 8 * 1024 * 1024
INITRD, INITRD_SIZE = "initrd-storm.img", 32 * 1024 * 1024
HTTP_TARGET_RATIO = 0.5  # the issue's: kernel + initrd storm >= 0.5 x nginx's
IPXE_TARGET = 3000  # the issue's: GET /boot/ipxe >= 3,000 requests/s under wrk -c 32


# ---- servers ----------------------------------------------------------------------------


def answers_tftp(port: int) -> Callable[[], bool]:
    """Whether a TFTP server answers a request on ``port`` (any ERROR will do)."""

    def check() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            s.sendto(b"\0\1bench-probe-missing\0octet\0", ("127.0.0.1", port))
            s.recvfrom(1024)  # TimeoutError (an OSError): not yet
        return True

    return check


def tftp_server(name: str, command: list[str], port: int, log: Path) -> Process:
    ready = answers_tftp(port)
    return Process(name, command, log, cwd=REPO, port=port, ready=ready, ready_timeout=10)


def ours(root: Path, work: Path, loop: str, workers: int) -> Process:
    port = free_port(socket.SOCK_DGRAM)
    command = [
        sys.executable,
        "-m",
        "pxe.tftp",
        "--root",
        str(root),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    if loop == "uvloop":
        command.append("--uvloop")
    return tftp_server("pxe.tftp", command, port, work / "pxe-tftp.log")


def in_tftpd(root: Path, work: Path) -> Process:
    port = free_port(socket.SOCK_DGRAM)
    command = [
        IN_TFTPD,
        "--foreground",
        "--address",
        f"127.0.0.1:{port}",
        "--secure",
        "--blocksize",
        "65464",
        str(root),
    ]
    return tftp_server("in.tftpd", command, port, work / "in-tftpd.log")


# ---- clients ----------------------------------------------------------------------------


def storm_child(args: argparse.Namespace) -> int:
    """One client process: its share of the clients, all started at --start (epoch s);
    prints each fetch's completion time, and failures."""
    import uvloop

    from lab.tftp_client import fetch

    async def one(expected: int) -> float | str:
        try:
            data = await fetch(
                "127.0.0.1",
                args.port,
                args.file,
                blksize=args.blksize or None,
                tsize=True,
                timeout=1.0,
                retries=5,
            )
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        if len(data) != expected:
            return f"got {len(data)} bytes of {expected}"
        return time.time() - float(args.start)

    async def storm() -> list[float | str]:
        await asyncio.sleep(max(args.start - time.time(), 0))
        return await asyncio.gather(*(one(args.size) for _ in range(args.clients)))

    outcomes = uvloop.run(storm())
    done = [o for o in outcomes if isinstance(o, float)]
    failed = [o for o in outcomes if isinstance(o, str)]
    cpu = time.process_time()
    print(json.dumps({"done_s": done, "failures": failed, "cpu_s": cpu}))
    return 0


def storm(args: argparse.Namespace, server: Process, file: Path, clients: int) -> dict[str, Any]:
    """One round: `clients` fetches of `file` at once, split over the client processes."""

    def child(n: int, start: float) -> list[str]:
        return [
            "--storm-child",
            "--port",
            str(server.port),
            "--file",
            file.name,
            "--size",
            str(file.stat().st_size),
            "--clients",
            str(n),
            "--start",
            repr(start),
            "--blksize",
            str(args.blksize),
        ]

    result = client_round(args, server, clients, child, file.stat().st_size, 300)
    return {"file": file.name, **result}


def client_round(
    args: argparse.Namespace,
    server: Process,
    clients: int,
    child: Callable[[int, float], list[str]],
    payload: int,
    timeout: float,
) -> dict[str, Any]:
    """Run `clients` machines against `server`, split over the client processes, which all
    start at one agreed instant (``child(n, start)``: the arguments of a process serving
    n of them); each machine fetches `payload` bytes."""
    processes = max(1, min(args.client_processes, clients))
    start = time.time() + 0.5 + 0.1 * processes  # time for every child to import and wait
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    cpu_before = server.cpu_seconds()
    busy_before = machine_busy_seconds()
    children = [
        subprocess.Popen(
            [sys.executable, __file__, *child(n, start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for n in shares
    ]
    reports = [json.loads(p.communicate(timeout=timeout)[0]) for p in children]
    server_cpu = server.cpu_seconds() - cpu_before
    busy = machine_busy_seconds() - busy_before
    done = sorted(t for r in reports for t in r["done_s"])
    failures = [f for r in reports for f in r["failures"]]
    client_cpu = sum(r["cpu_s"] for r in reports)
    wall = done[-1] if done else float("nan")
    return {
        "server": server.label,
        "clients": clients,
        "ok": len(done),
        "failures": len(failures),
        "failure_examples": failures[:3],
        "wall_s": round(wall, 3),
        "p50_s": round(statistics.median(done), 3) if done else None,
        "throughput_mb_s": round(len(done) * payload / wall / 1e6, 2),
        "server_cpu_s": round(server_cpu, 3),
        "client_cpu_s": round(client_cpu, 3),
        # Everything else the machine did, other engineers' jobs included (client
        # start-up is in it too: those seconds are not in the children's process_time).
        "others_cpu_s": round(max(busy - server_cpu - client_cpu, 0.0), 3),
    }


def tftp_storms(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    root = work / "root"
    root.mkdir()
    for name in args.files:
        shutil.copyfile(IPXE / name, root / name)  # follows ipxe.efi's symlink
        (root / name).chmod(0o644)
    # in.tftpd drops to the user nobody: the root and its path must be readable.
    for directory in (work, root):
        directory.chmod(0o755)
    rows = []
    pxe, hpa = ours(root, work, args.loop, args.workers), in_tftpd(root, work)
    with running(pxe, hpa):
        for name in args.files:
            for clients in args.clients:
                rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
                for index in range(args.rounds):
                    pair = (pxe, hpa) if index % 2 == 0 else (hpa, pxe)
                    measured = {s.label: storm(args, s, root / name, clients) for s in pair}
                    a, b = measured["pxe.tftp"], measured["in.tftpd"]
                    rounds.append((a, b))
                    progress(
                        f"{name} x{clients} round {index + 1}: pxe.tftp {a['wall_s']} s "
                        f"{a['throughput_mb_s']} MB/s, in.tftpd {b['wall_s']} s "
                        f"{b['throughput_mb_s']} MB/s"
                    )
                rows.append(summarize(name, clients, rounds))
    return rows


def summarize(
    name: str, clients: int, rounds: list[tuple[dict[str, Any], dict[str, Any]]]
) -> dict[str, Any]:
    def median(side: int, key: str) -> float:
        return round(float(statistics.median(r[side][key] for r in rounds)), 3)

    ratios = [a["throughput_mb_s"] / b["throughput_mb_s"] for a, b in rounds]
    return {
        "file": name,
        "clients": clients,
        "rounds": [list(pair) for pair in rounds],
        "pxe_tftp": {
            k: median(0, k)
            for k in ("wall_s", "p50_s", "throughput_mb_s", "server_cpu_s", "client_cpu_s")
        },
        "in_tftpd": {
            k: median(1, k)
            for k in ("wall_s", "p50_s", "throughput_mb_s", "server_cpu_s", "client_cpu_s")
        },
        "failures": sum(a["failures"] + b["failures"] for a, b in rounds),
        "ratio_median_of_pairs": round(statistics.median(ratios), 2),
    }


# ---- HTTP: kernel + initrd storm, service beside nginx ---------------------------------


def service(work: Path, images: Path) -> tuple[Process, str]:
    """`provisioner serve` as an operator runs it (its own defaults: uvicorn, one process,
    log level info, no access log); an admin token made beforehand with
    `provisioner token create --scope admin` against the same data directory. Nothing but
    the bench's requests: no reconciler, no power polls of the seeded nodes' (never
    contacted) BMCs, no inspection on import."""
    data_dir = work / "provisioner"
    data_dir.mkdir()
    env = clean_env(
        **NO_BACKGROUND_WORK,
        PROVISIONER_DATA_DIR=str(data_dir),
        PROVISIONER_IMAGES_DIR=str(images),
    )
    token = admin_token(env, work, name="boot-storm")
    return provisioner_serve("provisioner", work / "provisioner.log", env), token


NGINX_CONF = """\
# Generated by bench/boot_storm.py: the same images directory as the service.
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /boot/files/ {{ alias {images}/; }}
    }}
}}
"""


def nginx(work: Path, images: Path, workers: str) -> Process:
    """nginx with a minimal config (Debian's defaults where it matters: sendfile,
    tcp_nopush); `workers` 1 like uvicorn's one process, or auto (one per core)."""
    prefix = work / f"nginx-{workers}"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, prefix=prefix, port=port, images=images))
    command = [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    name = "nginx" if workers == "1" else f"nginx-{workers}"
    ready = answers_200(port, f"/boot/files/{KERNEL}")
    return Process(name, command, prefix / "stderr.log", port=port, ready=ready, ready_timeout=10)


class _Fetch(asyncio.BufferedProtocol):
    """One GET read straight into a per-process buffer: only its bytes are counted."""

    def __init__(self, buffer: bytearray, request: bytes, done: asyncio.Future[str]) -> None:
        self.buffer = memoryview(buffer)
        self.request = request
        self.done = done
        self.head = bytearray()
        self.length = -1  # Content-Length, once the head is in
        self.body = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.length < 0:
            self.head += self.buffer[:nbytes]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
            status = lines[0].split()[1]
            if status != "200":
                self._finish(f"HTTP {status}")
                return
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    self.length = int(value)
            if self.length < 0:
                self._finish("no Content-Length")
                return
            self.body = len(self.head) - end - 4
            self.head.clear()
        else:
            self.body += nbytes
        if self.body >= self.length:
            self._finish("" if self.body == self.length else f"{self.body} bytes")

    def _finish(self, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(f"closed after {self.body} of {self.length} body bytes: {exc}")


def http_child(args: argparse.Namespace) -> int:
    """One HTTP client process: its share of the clients, all started at --start; each
    client fetches the files one after another, a connection each, as a booting machine
    does (kernel, then initrd), and checks status, Content-Length and bytes received."""
    import uvloop

    files = [(name, int(size)) for name, size in (f.split(":") for f in args.file.split(","))]
    buffer = bytearray(1024 * 1024)

    async def fetch(name: str, size: int) -> str:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        request = (
            f"GET /boot/files/{name} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            "User-Agent: iPXE/1.21.1\r\nConnection: close\r\n\r\n"
        ).encode()
        transport, protocol = await loop.create_connection(
            lambda: _Fetch(buffer, request, done), "127.0.0.1", args.port
        )
        try:
            outcome = await asyncio.wait_for(done, 600)
        finally:
            transport.close()
        if not outcome and protocol.length != size:
            outcome = f"Content-Length {protocol.length}, file has {size}"
        return f"{name}: {outcome}" if outcome else ""

    async def one() -> float | str:
        try:
            for name, size in files:
                if failure := await fetch(name, size):
                    return failure
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return time.time() - float(args.start)

    async def storm() -> list[float | str]:
        await asyncio.sleep(max(args.start - time.time(), 0))
        return await asyncio.gather(*(one() for _ in range(args.clients)))

    outcomes = uvloop.run(storm())
    done = [o for o in outcomes if isinstance(o, float)]
    failed = [o for o in outcomes if isinstance(o, str)]
    print(json.dumps({"done_s": done, "failures": failed, "cpu_s": time.process_time()}))
    return 0


def http_storm(
    args: argparse.Namespace, server: Process, files: list[Path], clients: int
) -> dict[str, Any]:
    """One round: `clients` machines each fetching every file, split over the client
    processes, against one server."""
    spec = ",".join(f"{f.name}:{f.stat().st_size}" for f in files)

    def child(n: int, start: float) -> list[str]:
        return [
            "--http-child",
            "--port",
            str(server.port),
            "--file",
            spec,
            "--clients",
            str(n),
            "--start",
            repr(start),
        ]

    per_client = sum(f.stat().st_size for f in files)
    result = client_round(args, server, clients, child, per_client, 900)
    return {**result, "loadavg": round(os.getloadavg()[0], 2)}


def make_images(images: Path) -> list[Path]:
    """The test kernel and initrd: random bytes (nothing compresses them on the way), read
    once so that every server starts from the page cache."""
    images.mkdir()
    files = []
    for name, size in ((KERNEL, KERNEL_SIZE), (INITRD, INITRD_SIZE)):
        path = images / name
        with path.open("wb") as f:
            for _ in range(size // (1024 * 1024)):
                f.write(os.urandom(1024 * 1024))
        path.chmod(0o644)
        path.read_bytes()
        files.append(path)
    return files


HTTP_KEYS = ("wall_s", "p50_s", "throughput_mb_s", "server_cpu_s", "client_cpu_s", "failures")


def summarize_http(clients: int, rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    names = list(rounds[0])
    row: dict[str, Any] = {"clients": clients, "rounds": rounds}
    for name in names:
        row[name] = {
            k: round(float(statistics.median(r[name][k] for r in rounds)), 3) for k in HTTP_KEYS
        }
        row[name]["failures"] = sum(r[name]["failures"] for r in rounds)
    for name in names[1:]:
        ratios = [r["provisioner"]["throughput_mb_s"] / r[name]["throughput_mb_s"] for r in rounds]
        row[f"ratio_vs_{name}"] = round(statistics.median(ratios), 2)
    return row


def http_storms(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The HTTP half: kernel (8 MiB) and initrd (32 MiB) over HTTP from the service beside
    nginx, then `GET /boot/ipxe` under wrk (the service seeded with nodes first)."""
    work.chmod(0o755)  # nginx's worker runs as nobody: the path must be readable
    files = make_images(work / "images")
    out: dict[str, Any] = {"storms": [], "ipxe": None}
    svc, token = service(work, work / "images")
    servers = [svc, nginx(work, work / "images", "1")]
    if args.nginx_auto:
        servers.append(nginx(work, work / "images", "auto"))
    with running(*servers):
        out["memory_start"] = {s.label: s.memory_mib() for s in servers}
        if "http" in args.parts:
            for clients in args.clients:
                rounds: list[dict[str, dict[str, Any]]] = []
                for index in range(args.rounds):
                    order = servers if index % 2 == 0 else servers[::-1]
                    measured = {s.label: http_storm(args, s, files, clients) for s in order}
                    rounds.append({s.label: measured[s.label] for s in servers})
                    progress(
                        f"http x{clients} round {index + 1}: "
                        + ", ".join(
                            f"{n} {m['wall_s']} s {m['throughput_mb_s']} MB/s cpu "
                            f"{m['server_cpu_s']} s fail {m['failures']}"
                            for n, m in rounds[-1].items()
                        )
                        + f" (load {os.getloadavg()[0]:.1f})"
                    )
                out["storms"].append(summarize_http(clients, rounds))
        out["memory_after_storms"] = {s.label: s.memory_mib() for s in servers}
        if "ipxe" in args.parts:
            out["ipxe"] = ipxe_bench(args, work, svc, token)
            out["memory_after_ipxe"] = svc.memory_mib()
    return out


# ---- HTTP: GET /boot/ipxe under wrk ------------------------------------------------------


def seed(server: Process, token: str, local: int, provisioning: int) -> dict[str, list[str]]:
    """`local` nodes in `active` and `provisioning` nodes in `provisioning` (with their
    deployment and one-time token), one PXE MAC each.

    Imported through the API (`POST /api/v1/racks/import`), which enrolls them; no API
    moves a node to ready or active without the reconciler and a BMC, so the bench sets
    those states in the database the way the tests do, then asks for `provision` through
    the API on the `ready` ones."""
    import sqlite3

    names = {
        "active": [f"storm-{i:04d}" for i in range(local)],
        "provisioning": [f"storm-p{i:03d}" for i in range(provisioning)],
    }
    macs = {
        "active": [local_mac(i) for i in range(local)],
        "provisioning": [local_mac(100_000 + i) for i in range(provisioning)],
    }
    rows = ["name,bmc_address,bmc_username,bmc_password,macs"]
    serial = 0
    for kind in ("active", "provisioning"):
        for name, mac in zip(names[kind], macs[kind], strict=True):
            rows.append(f"{name},127.3.{serial >> 8}.{serial & 0xFF},ADMIN,bench-pass,{mac}")
            serial += 1
    base = f"http://127.0.0.1:{server.port}"
    headers = {"Authorization": f"Bearer {token}"}
    with api_client(base, headers) as client:
        client.post("/api/v1/roles", json={"name": "compute"}).raise_for_status()
        client.post(
            "/api/v1/racks/import",
            content="\n".join(rows) + "\n",
            headers={"Content-Type": "text/csv"},
        ).raise_for_status()
        assert server.env is not None
        data_dir = Path(server.env["PROVISIONER_DATA_DIR"])
        db = sqlite3.connect(data_dir / "provisioner.db", timeout=30)
        with db:
            for kind, state in (("active", "active"), ("provisioning", "ready")):
                db.executemany(
                    "UPDATE node SET state = ? WHERE name = ?", [(state, n) for n in names[kind]]
                )
        db.close()
        for name in names["provisioning"]:
            client.post(
                f"/api/v1/nodes/{name}/actions/provision",
                json={"role": "compute", "image": "rocky-9"},
            ).raise_for_status()
    return macs


def branches(server: Process, macs: dict[str, list[str]]) -> dict[str, Any]:
    """Every MAC asked once before the timed runs: status and the branch its script takes.
    (This is also each node's first boot request, which records its boot address.)"""
    seen: dict[str, dict[str, int]] = {}
    with api_client(f"http://127.0.0.1:{server.port}") as client:
        for kind, group in macs.items():
            counts = seen.setdefault(kind, {})
            for mac in group:
                response = client.get("/boot/ipxe", params={"mac": mac})
                if response.status_code != 200:
                    branch = f"HTTP {response.status_code}"
                elif "kernel --name kernel" in response.text:
                    branch = "install (kernel + initrd + answer-file URL)"
                elif "booting from local disk" in response.text:
                    branch = "local disk"
                else:
                    branch = "other"
                counts[branch] = counts.get(branch, 0) + 1
    return seen


def wrk_run(
    args: argparse.Namespace, server: Process, work: Path, paths: Path, profile: Path | None = None
) -> dict[str, Any]:
    script = wrk_script(work / "ipxe.lua", "bench/boot_storm.py")
    spy = None
    if profile is not None:
        duration = str(args.ipxe_seconds)
        spy = py_spy(server.pid, profile, 200, "--nonblocking", "--duration", duration)
        time.sleep(1)
    figures, cpu = wrk(
        f"http://127.0.0.1:{server.port}",
        (paths, script),
        threads=args.wrk_threads,
        connections=args.wrk_connections,
        seconds=args.ipxe_seconds,
        meter=Meter(server=server.cpu_seconds),
    )
    if spy is not None:
        spy.wait(60)
    # The pre-check saw every MAC answer 200: an error is a status wrk counts (above 399).
    return {
        **figures,
        "server_cpu_s": round(cpu["server_s"], 2),
        "wrk_cpu_s": round(cpu["children_s"], 2),
        "others_cpu_s": round(cpu["others_s"], 2),
        "loadavg": round(os.getloadavg()[0], 2),
    }


def ipxe_bench(args: argparse.Namespace, work: Path, server: Process, token: str) -> dict[str, Any]:
    macs = seed(server, token, args.ipxe_nodes, args.ipxe_provisioning)
    branch_counts = branches(server, macs)
    every = [*macs["active"], *macs["provisioning"]]
    random.Random(4).shuffle(every)
    paths = work / "ipxe-paths.txt"
    paths.write_text("".join(f"/boot/ipxe?mac={m}\n" for m in every))
    runs = []
    for index in range(args.ipxe_rounds):
        runs.append(wrk_run(args, server, work, paths))
        r = runs[-1]
        progress(
            f"/boot/ipxe round {index + 1}: {r['requests_per_s']} req/s, p50 "
            f"{r['p50_ms']} ms, p99 {r['p99_ms']} ms, errors {r['http_errors']}/"
            f"{r['socket_errors']}, server cpu {r['server_cpu_s']} s, wrk cpu "
            f"{r['wrk_cpu_s']} s (load {os.getloadavg()[0]:.1f})"
        )
    out: dict[str, Any] = {
        "nodes": {k: len(v) for k, v in macs.items()},
        "branches": branch_counts,
        "runs": runs,
        "median": {
            k: statistics.median(r[k] for r in runs)
            for k in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_s", "wrk_cpu_s")
        },
        "http_errors": sum(r["http_errors"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
    }
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        raw = (args.profile_dir / "ipxe.txt").resolve()
        profiled = wrk_run(args, server, work, paths, profile=raw)
        shown = os.path.relpath(raw, REPO) if raw.is_relative_to(REPO) else str(raw)
        parts = breakdown(raw) if raw.exists() else []
        out["profile"] = {"raw": shown, "run": profiled, **profile_summary(raw), "breakdown": parts}
        progress(f"profiled run: {profiled['requests_per_s']} req/s; raw stacks in {raw}")
    return out


# Where a request's GIL time goes: (label, thread, substrings any of which marks a stack).
# A stack may count under several labels; "worker" means a stack through anyio's
# WorkerThread.run (sync routes and sync dependencies run there), "loop" any other.
PROFILE_PARTS: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "hand-offs to the thread pool (run_in_threadpool)",
        "loop",
        ("run_in_threadpool", "run_sync_in_worker_thread"),
    ),
    (
        "FastAPI solve_dependencies (the sync _boot dependency's hand-off included)",
        "loop",
        ("solve_dependencies",),
    ),
    ("uvicorn send (socket writes)", "loop", ("RequestResponseCycle.send",)),
    ("logging (uvicorn's access log)", "loop", ("logging/__init__", "Logger.")),
    (
        "httptools parsing and callbacks",
        "loop",
        ("data_received", "on_headers_complete", "on_url", "on_message"),
    ),
    ("query validation (normalize_mac)", "loop", ("normalize_mac",)),
    ("Prometheus metrics", "loop", ("prometheus_client",)),
    ("the route body (BootService.ipxe and the Response)", "worker", ("provisioner/api/boot.py",)),
    ("SQLAlchemy, all of it", "worker", ("sqlalchemy/",)),
    ("SQLite itself (cursor.execute)", "worker", ("do_execute",)),
    ("boot hops recorded", "worker", ("HopRecorder",)),
    ("worker wake-up (queue, condition)", "worker", ("Condition.wait", "Queue.get")),
]


def breakdown(raw: Path) -> list[tuple[str, float]]:
    counts = {"event-loop thread": 0, "worker threads": 0}
    parts = dict.fromkeys((label for label, _, _ in PROFILE_PARTS), 0)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        thread = "worker" if "WorkerThread.run" in stack else "loop"
        counts["worker threads" if thread == "worker" else "event-loop thread"] += count
        for label, where, marks in PROFILE_PARTS:
            if where == thread and any(mark in stack for mark in marks):
                parts[label] += count
    if not total:
        return []
    return [(label, round(100 * n / total, 1)) for label, n in (*counts.items(), *parts.items())]


# ---- report -----------------------------------------------------------------------------


def machine_with_tools() -> dict[str, Any]:
    return {
        **machine(("tftpy", "uvloop", "uvicorn", "httptools", "starlette", "fastapi")),
        "in_tftpd": tool_version([IN_TFTPD, "-V"]),
        "nginx": tool_version([NGINX, "-v"], "nginx version: "),
        "wrk": tool_version([WRK, "-v"]),
    }


def table(rows: list[dict[str, Any]], markdown: bool) -> list[str]:
    head = [
        "File",
        "Clients",
        "pxe.tftp s",
        "in.tftpd s",
        "pxe.tftp MB/s",
        "in.tftpd MB/s",
        "ratio",
        "target",
        "pxe.tftp CPU s",
        "failures",
    ]
    body = []
    for row in rows:
        ours_, hpa = row["pxe_tftp"], row["in_tftpd"]
        ratio = row["ratio_median_of_pairs"]
        body.append(
            [
                row["file"],
                str(row["clients"]),
                f"{ours_['wall_s']:.2f}",
                f"{hpa['wall_s']:.2f}",
                f"{ours_['throughput_mb_s']:.1f}",
                f"{hpa['throughput_mb_s']:.1f}",
                f"{ratio:.2f}x",
                "pass" if ratio >= TARGET_RATIO else "FAIL",
                f"{ours_['server_cpu_s']:.2f}",
                str(row["failures"]),
            ]
        )
    return render_table(head, body, markdown, right=set(range(2, len(head))))


def results_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    title = f"Boot storm (TFTP and HTTP): run of {results['date']}"
    lines = [
        *results_head(RESULTS_BEGIN, title, results),
        f"- Machine: {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}; Python "
        f"{m['python']}, tftpy {m['packages']['tftpy']}, uvloop {m['packages']['uvloop']}; "
        f"{m['in_tftpd']}. Load average at the start: {m['loadavg_at_start']:.2f}, at the "
        f"end: {m['loadavg_at_end']:.2f} (the machine is shared: read ratios).",
        f"- Servers on 127.0.0.1: `python -m pxe.tftp --workers {results['workers']}` on "
        f"{results['loop']}, and `in.tftpd "
        "--foreground --secure --blocksize 65464` (a process forked per transfer). Each "
        f"round: N clients fetch the file at once (lab/tftp_client.py on uvloop, blksize "
        f"{results['blksize'] or 512}, tsize, in {results['client_processes']} client "
        f"process(es)); {results['rounds']} paired rounds per row, the order alternating.",
        "- Times: from the agreed start to the last completion; throughput: bytes of all "
        "clients over that time; figures are medians of the rounds, the ratio the median of "
        "the per-round ratios (pxe.tftp / in.tftpd); CPU: pxe.tftp's processes (in.tftpd's "
        "forked children are not accounted anywhere the bench can read).",
        "",
        *(table(results["tftp"], markdown=True) if results["tftp"] else ["(TFTP not run.)"]),
        "",
        *http_markdown(results),
        f"Raw figures: `{results['raw']}` (not committed).",
        "",
        RESULTS_END,
    ]
    return "\n".join(lines)


def http_table(rows: list[dict[str, Any]], markdown: bool) -> list[str]:
    head = [
        "Clients",
        "service s",
        "nginx s",
        "service MB/s",
        "nginx MB/s",
        "ratio",
        "target",
        "service CPU s",
        "nginx CPU s",
        "client CPU s",
        "nginx-auto MB/s",
        "failures",
    ]
    body = []
    for row in rows:
        svc, ngx = row["provisioner"], row["nginx"]
        auto = row.get("nginx-auto")
        ratio = row["ratio_vs_nginx"]
        failures = svc["failures"] + ngx["failures"] + (auto["failures"] if auto else 0)
        body.append(
            [
                str(row["clients"]),
                f"{svc['wall_s']:.2f}",
                f"{ngx['wall_s']:.2f}",
                f"{svc['throughput_mb_s']:.0f}",
                f"{ngx['throughput_mb_s']:.0f}",
                f"{ratio:.2f}x",
                "pass" if ratio >= HTTP_TARGET_RATIO else "FAIL",
                f"{svc['server_cpu_s']:.2f}",
                f"{ngx['server_cpu_s']:.2f}",
                f"{svc['client_cpu_s']:.2f}",
                f"{auto['throughput_mb_s']:.0f}" if auto else "-",
                str(int(failures)),
            ]
        )
    return render_table(head, body, markdown, right=set(range(len(head))))


def ipxe_table(ipxe: dict[str, Any], markdown: bool) -> list[str]:
    head = [
        "Run",
        "requests/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors (HTTP/socket)",
        "service CPU s",
        "wrk CPU s",
        "load",
    ]
    body = [
        [
            str(i + 1),
            f"{r['requests_per_s']:,.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p90_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['http_errors']}/{r['socket_errors']}",
            f"{r['server_cpu_s']:.2f}",
            f"{r['wrk_cpu_s']:.2f}",
            f"{r['loadavg']:.1f}",
        ]
        for i, r in enumerate(ipxe["runs"])
    ]
    m = ipxe["median"]
    rate = m["requests_per_s"]
    body.append(
        [
            "median",
            f"{rate:,.0f} ({'pass' if rate >= IPXE_TARGET else 'FAIL'})",
            f"{m['p50_ms']:.1f}",
            "",
            f"{m['p99_ms']:.1f}",
            f"{ipxe['http_errors']}/{ipxe['socket_errors']}",
            f"{m['server_cpu_s']:.2f}",
            f"{m['wrk_cpu_s']:.2f}",
            "",
        ]
    )
    return render_table(head, body, markdown, right=set(range(1, len(head))))


def http_markdown(results: dict[str, Any]) -> list[str]:
    http = results.get("http")
    if not http:
        return ["(HTTP not run.)", ""]
    m = results["machine"]
    lines = [
        f"HTTP: `provisioner serve` ({m['packages']['uvicorn']} uvicorn, one process, "
        f"uvloop {m['packages']['uvloop']} and uvicorn's httptools "
        f"{m['packages']['httptools']} protocol with the ASGI zero-copy send added "
        "(provisioner/zerocopy.py: boot files in the page cache go out with sendfile); "
        "its defaults: log level info, no "
        "access log) started as an operator does, with `PROVISIONER_DATA_DIR` and "
        "`PROVISIONER_IMAGES_DIR` in the run's temporary directory, "
        "`PROVISIONER_RECONCILER=false`, `PROVISIONER_POWER_SYNC_INTERVAL=0`, "
        f"`PROVISIONER_INSPECT_ON_ENROLL=false`; beside {m['nginx']} with a generated "
        "minimal config serving the same directory (`sendfile on; tcp_nopush on;`, access "
        "log on), `worker_processes 1` like uvicorn's one process, and, as information only, "
        "a second nginx with `worker_processes auto` (one per core).",
        "",
    ]
    storms = http["storms"]
    if storms:
        lines += [
            f"- Kernel + initrd storm: N machines at once, each fetching `{KERNEL}` "
            f"({KERNEL_SIZE // 2**20} MiB) then `{INITRD}` ({INITRD_SIZE // 2**20} MiB), random "
            "bytes in the page cache, a new connection per file, from `/boot/files/`; the "
            f"clients are asyncio protocols on uvloop reading into a 1 MiB buffer in "
            f"{results['client_processes']} client processes started together at an agreed "
            "instant; each checks status 200, Content-Length and the bytes received "
            "(failures: any of those wrong, or a connection cut). "
            f"{results['rounds']} rounds per row, the servers' order alternating; times from "
            "the start to the last completion; throughput: all bytes over that time; medians "
            "of the rounds, the ratio the median of the per-round ratios (service / nginx "
            "with one worker). CPU: the server's processes from /proc (nginx: master and "
            "workers); client CPU is the service's rounds' (the clients cost about the same "
            "against nginx: see the raw figures).",
            "",
            *http_table(storms, markdown=True),
            "",
        ]
    ipxe = http.get("ipxe")
    if ipxe:
        branches = "; ".join(
            f"{kind}: " + ", ".join(f"{n} {branch}" for branch, n in counts.items())
            for kind, counts in ipxe["branches"].items()
        )
        lines += [
            f"- `GET /boot/ipxe?mac=...` under `wrk -t {results['wrk_threads']} -c "
            f"{results['wrk_connections']} -d {results['ipxe_seconds']}s` with a Lua script "
            "cycling over every seeded MAC in a shuffled order, after the storms on the same "
            f"service. Seeded: {ipxe['nodes']['active']} nodes imported with "
            "`POST /api/v1/racks/import` (admin token from `provisioner token create --scope "
            "admin`), set to `active` in the database (no API gets a node there without the "
            f"reconciler), and {ipxe['nodes']['provisioning']} set to `ready` then "
            "`POST .../actions/provision` (role `compute`, image `rocky-9`). Every MAC was "
            f"asked once before the timed runs, which saw {branches}. Errors: wrk's count "
            "of statuses above 399, and its socket errors (connect, read, write, timeout).",
            "",
            *ipxe_table(ipxe, markdown=True),
            "",
        ]
        if "profile" in ipxe:
            profile = ipxe["profile"]
            top = ", ".join(f"`{name}` {share:.1%}" for name, share in profile["own"][:8])
            parts = "; ".join(f"{label} {share}%" for label, share in profile["breakdown"])
            lines += [
                f"- Profile: one more run under py-spy (`--gil`, 200 Hz, {profile['samples']} "
                f"samples, {profile['run']['requests_per_s']:,.0f} requests/s while "
                f"sampled). Share of the GIL-holding samples by thread and by part (a "
                f"stack may count in several parts): {parts}. The functions holding the "
                f"GIL most, by own samples: {top}. Raw stacks: `{profile['raw']}`.",
                "",
            ]
    return lines


# ---- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--clients", type=int, nargs="+", default=[50, 200], help="default: 50 200")
    add(
        "--files",
        nargs="+",
        default=["undionly.kpxe"],
        help="files from /usr/lib/ipxe (default undionly.kpxe; ipxe.efi is 0.8 MiB)",
    )
    add("--rounds", type=int, default=5, help="paired rounds per row (default 5)")
    add(
        "--blksize",
        type=int,
        default=1468,
        help="blksize the clients ask for (default 1468, as PXE ROMs do; 0: none, 512)",
    )
    add("--client-processes", type=int, default=2, help="client processes (default 2)")
    add(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of pxe.tftp (default uvloop)",
    )
    add(
        "--workers",
        type=int,
        default=1,
        help="pxe.tftp processes sharing the port with SO_REUSEPORT (default 1)",
    )
    add(
        "--parts",
        nargs="+",
        choices=["tftp", "http", "ipxe"],
        default=["tftp", "http", "ipxe"],
        help="what to run (default all): the TFTP storm, the HTTP kernel+initrd storm, "
        "GET /boot/ipxe under wrk",
    )
    add(
        "--no-nginx-auto",
        dest="nginx_auto",
        action="store_false",
        help="HTTP storm: leave out the information row of nginx with worker_processes auto",
    )
    add(
        "--ipxe-nodes",
        type=int,
        default=1000,
        help="/boot/ipxe: nodes seeded in state active, local-disk branch (default 1000)",
    )
    add(
        "--ipxe-provisioning",
        type=int,
        default=20,
        help="/boot/ipxe: nodes seeded in state provisioning, install branch (default 20)",
    )
    add("--ipxe-rounds", type=int, default=3, help="/boot/ipxe: wrk runs (default 3)")
    add("--ipxe-seconds", type=int, default=10, help="/boot/ipxe: seconds per wrk run")
    add("--wrk-connections", type=int, default=32, help="wrk connections (default 32)")
    add("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    add(
        "--profile-dir",
        type=Path,
        help="/boot/ipxe: after the timed runs, one more under py-spy (pip install py-spy "
        "into the venv), raw collapsed stacks written here and summed in the JSON",
    )
    add_output_options(parser)
    # A client process: this script started again by itself (see storm, http_storm).
    add("--storm-child", action="store_true", help=argparse.SUPPRESS)
    add("--http-child", action="store_true", help=argparse.SUPPRESS)
    add("--port", type=int, help=argparse.SUPPRESS)
    add("--file", help=argparse.SUPPRESS)
    add("--size", type=int, help=argparse.SUPPRESS)
    add("--start", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.storm_child:
        args.clients = args.clients[0]
        return storm_child(args)
    if args.http_child:
        args.clients = args.clients[0]
        return http_child(args)
    needed = [(IN_TFTPD, "tftp", "tftpd-hpa"), (NGINX, "http", "nginx"), (WRK, "ipxe", "wrk")]
    for tool, part, package in needed:
        if part in args.parts and not os.access(tool, os.X_OK):
            progress(f"{tool} is missing (Debian: apt-get install {package})")
            return 2
    results: dict[str, Any] = {
        "date": now_utc(),
        "command": command_line(__file__),
        "code": code_state(("pxe", "lab", "provisioner")),
        "machine": machine_with_tools(),
        "loop": args.loop,
        "workers": args.workers,
        "blksize": args.blksize,
        "client_processes": args.client_processes,
        "rounds": args.rounds,
        "wrk_threads": args.wrk_threads,
        "wrk_connections": args.wrk_connections,
        "ipxe_seconds": args.ipxe_seconds,
    }
    with tempfile.TemporaryDirectory(prefix="boot-storm-") as work:
        results["tftp"] = tftp_storms(args, Path(work)) if "tftp" in args.parts else []
        if {"http", "ipxe"} & set(args.parts):
            results["http"] = http_storms(args, Path(work))
    results["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    raw = save_raw(results, args.out, "boot-storm")
    if results["tftp"]:
        print("\n".join(table(results["tftp"], markdown=False)))
    http = results.get("http") or {}
    if http.get("storms"):
        print("\nHTTP kernel + initrd storm (service vs nginx, 1 worker each):")
        print("\n".join(http_table(http["storms"], markdown=False)))
    if http.get("ipxe"):
        print(f"\nGET /boot/ipxe under wrk ({http['ipxe']['branches']}):")
        print("\n".join(ipxe_table(http["ipxe"], markdown=False)))
    print(f"\nraw figures: {raw}")
    publish(args, lambda: results_markdown(results), RESULTS_BEGIN, RESULTS_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
