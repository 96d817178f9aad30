"""Boot-storm benchmark: many machines fetching their boot chain at once.

TFTP half: N concurrent clients each fetch the iPXE binary from our server
(`python -m pxe.tftp`, its own process) and, in the same run, from tftpd-hpa's `in.tftpd`,
in paired rounds whose order alternates; the figures are medians over the rounds. The
issue's target: aggregate throughput at least 0.6 x in.tftpd's at 200 clients.

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
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from common import TICKS, git, machine_busy_seconds, progress, stat_fields, write_results

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_BEGIN = "<!-- bench/boot_storm.py writes from here -->"
RESULTS_END = "<!-- bench/boot_storm.py writes up to here -->"
IPXE = Path("/usr/lib/ipxe")
IN_TFTPD = "/usr/sbin/in.tftpd"
TARGET_RATIO = 0.6  # the issue's: TFTP aggregate throughput >= 0.6 x in.tftpd's


# ---- servers ----------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_answering(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Until the server answers a request (any ERROR will do)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            s.sendto(b"\0\1bench-probe-missing\0octet\0", ("127.0.0.1", port))
            try:
                s.recvfrom(1024)
                return
            except TimeoutError:
                continue
    raise RuntimeError(f"no TFTP answer on port {port} within {timeout} s")


class Server:
    def __init__(self, name: str, command: list[str], port: int, log: Path) -> None:
        self.name = name
        self.command = command
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        wait_answering(self.port, self.process)

    def cpu_seconds(self) -> float:
        """The server's process and its live children (pxe.tftp's workers). in.tftpd's
        children, one per transfer, exit unreaped into its figures: its CPU is not known."""
        assert self.process is not None
        root = self.process.pid
        total = sum(int(v) for v in stat_fields(root)[11:13])
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == root:
                continue
            try:
                fields = stat_fields(int(entry))
            except OSError:
                continue  # gone since listed
            if int(fields[1]) == root:
                total += int(fields[11]) + int(fields[12])
        return total / TICKS

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def ours(root: Path, work: Path, loop: str, workers: int) -> Server:
    port = free_udp_port()
    command = [sys.executable, "-m", "pxe.tftp", "--root", str(root), "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    if loop == "uvloop":
        command.append("--uvloop")
    return Server("pxe.tftp", command, port, work / "pxe-tftp.log")


def in_tftpd(root: Path, work: Path) -> Server:
    port = free_udp_port()
    command = [IN_TFTPD, "--foreground", "--address", f"127.0.0.1:{port}", "--secure",
               "--blocksize", "65464", str(root)]
    return Server("in.tftpd", command, port, work / "in-tftpd.log")


@contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        yield
    finally:
        for server in servers:
            server.stop()


# ---- clients ----------------------------------------------------------------------------


def storm_child(args: argparse.Namespace) -> int:
    """One client process: its share of the clients, all started at --start (epoch s);
    prints each fetch's completion time, and failures."""
    import uvloop

    from lab.tftp_client import fetch

    async def one(expected: int) -> float | str:
        try:
            data = await fetch("127.0.0.1", args.port, args.file, blksize=args.blksize or None,
                               tsize=True, timeout=1.0, retries=5)
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


def storm(args: argparse.Namespace, server: Server, file: Path, clients: int) -> dict[str, Any]:
    """One round: `clients` fetches of `file` at once, split over the client processes."""
    processes = max(1, min(args.client_processes, clients))
    start = time.time() + 0.5 + 0.1 * processes  # time for every child to import and wait
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    cpu_before = server.cpu_seconds()
    busy_before = machine_busy_seconds()
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--storm-child", "--port", str(server.port),
             "--file", file.name, "--size", str(file.stat().st_size), "--clients", str(n),
             "--start", repr(start), "--blksize", str(args.blksize)],
            cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for n in shares
    ]
    reports = [json.loads(child.communicate(timeout=300)[0]) for child in children]
    server_cpu = server.cpu_seconds() - cpu_before
    busy = machine_busy_seconds() - busy_before
    done = sorted(t for r in reports for t in r["done_s"])
    failures = [f for r in reports for f in r["failures"]]
    client_cpu = sum(r["cpu_s"] for r in reports)
    wall = done[-1] if done else float("nan")
    return {
        "server": server.name,
        "clients": clients,
        "file": file.name,
        "ok": len(done),
        "failures": len(failures),
        "failure_examples": failures[:3],
        "wall_s": round(wall, 3),
        "p50_s": round(statistics.median(done), 3) if done else None,
        "throughput_mb_s": round(len(done) * file.stat().st_size / wall / 1e6, 2),
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
                    measured = {s.name: storm(args, s, root / name, clients) for s in pair}
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
        "pxe_tftp": {k: median(0, k) for k in ("wall_s", "p50_s", "throughput_mb_s",
                                                "server_cpu_s", "client_cpu_s")},
        "in_tftpd": {k: median(1, k) for k in ("wall_s", "p50_s", "throughput_mb_s",
                                                "server_cpu_s", "client_cpu_s")},
        "failures": sum(a["failures"] + b["failures"] for a, b in rounds),
        "ratio_median_of_pairs": round(statistics.median(ratios), 2),
    }


def http_storms(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The HTTP half of the storm: kernel (8 MiB) and initrd (32 MiB) over HTTP from the
    service beside nginx, and `GET /boot/ipxe` under wrk. Written separately; until then
    a run has TFTP rows only."""
    return []


# ---- report -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    hpa = subprocess.run([IN_TFTPD, "-V"], capture_output=True, text=True)
    packages = {}
    for name in ("tftpy", "uvloop"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "absent"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "in_tftpd": (hpa.stdout + hpa.stderr).strip().splitlines()[0],
        "packages": packages,
        "loadavg_at_start": os.getloadavg()[0],
    }


def command_line() -> str:
    python = Path(sys.executable)
    shown = os.path.relpath(python, REPO) if python.is_relative_to(REPO) else python.name
    return shlex.join([shown, os.path.relpath(Path(__file__).resolve(), REPO), *sys.argv[1:]])


def table(rows: list[dict[str, Any]], markdown: bool) -> list[str]:
    head = ["File", "Clients", "pxe.tftp s", "in.tftpd s", "pxe.tftp MB/s", "in.tftpd MB/s",
            "ratio", "target", "pxe.tftp CPU s", "failures"]
    body = []
    for row in rows:
        ours_, hpa = row["pxe_tftp"], row["in_tftpd"]
        ratio = row["ratio_median_of_pairs"]
        body.append([
            row["file"], str(row["clients"]), f"{ours_['wall_s']:.2f}", f"{hpa['wall_s']:.2f}",
            f"{ours_['throughput_mb_s']:.1f}", f"{hpa['throughput_mb_s']:.1f}", f"{ratio:.2f}x",
            "pass" if ratio >= TARGET_RATIO else "FAIL", f"{ours_['server_cpu_s']:.2f}",
            str(row["failures"]),
        ])
    if markdown:
        return [
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|",
            *("| " + " | ".join(cells) + " |" for cells in body),
        ]
    widths = [max(len(c) for c in column) for column in zip(head, *body, strict=True)]
    return ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
            for cells in (head, *body)]


def results_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    code = results["code"]
    code_note = f"working tree at commit {code['commit'][:12]}"
    if code["uncommitted_files"]:
        code_note += f" with uncommitted changes to {', '.join(code['uncommitted_files'])}"
    lines = [
        RESULTS_BEGIN,
        "",
        f"## Boot storm (TFTP): run of {results['date']}",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"- Code: {code_note}.",
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
        *table(results["tftp"], markdown=True),
        "",
        f"Raw figures: `{results['raw']}` (not committed).",
        "",
        RESULTS_END,
    ]
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--clients", type=int, nargs="+", default=[50, 200], help="default: 50 200")
    add("--files", nargs="+", default=["undionly.kpxe"],
        help="files from /usr/lib/ipxe (default undionly.kpxe; ipxe.efi is 0.8 MiB)")
    add("--rounds", type=int, default=5, help="paired rounds per row (default 5)")
    add("--blksize", type=int, default=1468,
        help="blksize the clients ask for (default 1468, as PXE ROMs do; 0: none, 512)")
    add("--client-processes", type=int, default=2, help="client processes (default 2)")
    add("--loop", choices=["uvloop", "asyncio"], default="uvloop",
        help="event loop of pxe.tftp (default uvloop)")
    add("--workers", type=int, default=1,
        help="pxe.tftp processes sharing the port with SO_REUSEPORT (default 1)")
    add("--out", type=Path, default=BENCH_DIR / "out", help="raw JSON directory")
    add("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    add("--no-write-results", dest="write_results", action="store_false",
        help="leave bench/RESULTS.md alone (trial runs)")
    # A client process: this script started again by itself (see storm).
    add("--storm-child", action="store_true", help=argparse.SUPPRESS)
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
    if not os.access(IN_TFTPD, os.X_OK):
        progress(f"{IN_TFTPD} is missing (Debian: apt-get install tftpd-hpa)")
        return 2
    changed = git("status", "--porcelain", "--", "pxe", "lab")
    results: dict[str, Any] = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "command": command_line(),
        "code": {
            "commit": git("rev-parse", "HEAD").strip(),
            "uncommitted_files": [line[3:] for line in changed.splitlines()],
        },
        "machine": machine(),
        "loop": args.loop,
        "workers": args.workers,
        "blksize": args.blksize,
        "client_processes": args.client_processes,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="boot-storm-") as work:
        results["tftp"] = tftp_storms(args, Path(work))
        results["http"] = http_storms(args, Path(work))
    results["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    raw = (args.out / f"boot-storm-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json").resolve()
    results["raw"] = os.path.relpath(raw, REPO) if raw.is_relative_to(REPO) else str(raw)
    raw.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table(results["tftp"], markdown=False)))
    print(f"\nraw figures: {raw}")
    if args.write_results:
        write_results(args.results, results_markdown(results), RESULTS_BEGIN, RESULTS_END)
        print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
