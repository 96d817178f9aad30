"""What the benchmarks share: the processes they start and measure (the service, the lab,
the reference servers), CPU accounting from /proc, the figures they compute, the machine
and code they ran on, and the tables and RESULTS.md blocks they write."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import pwd
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    # Imported where used: the boot storm's client processes import this module too, and
    # must be ready by the instant agreed for their start.
    import httpx

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
BIN = Path(sys.executable).parent  # the venv's: provisioner, provisioner-lab, py-spy
TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
IPXE = Path("/usr/lib/ipxe")
IRONIC_DIR = BENCH_DIR / "ironic"
IRONIC_VENV = IRONIC_DIR / ".venv"
IRONIC_HEADERS = {"X-OpenStack-Ironic-API-Version": "latest"}
# The service's background work (reconciler, inspection on enrollment, power polling)
# would compete for the same cores and call the BMCs: a bench switches it off unless the
# work is what it measures.
NO_BACKGROUND_WORK = {
    "PYTHONUNBUFFERED": "1",
    "PROVISIONER_RECONCILER": "false",
    "PROVISIONER_INSPECT_ON_ENROLL": "false",
    "PROVISIONER_POWER_SYNC_INTERVAL": "0",
}
QUIET_CORES = 0.15  # other processes' use of the machine, in cores, that counts as quiet
WRK = "/usr/bin/wrk"

T = TypeVar("T")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- command line and work directory ---------------------------------------------------


def add_output_options(parser: argparse.ArgumentParser, keep: str | None = None) -> None:
    """The options of every bench: where its raw JSON and its RESULTS.md block go, a trial
    run that leaves RESULTS.md alone and, with ``keep`` (what the work directory holds),
    keeping the work directory."""
    add = parser.add_argument
    add("--out", type=Path, default=BENCH_DIR / "out", help="raw JSON directory")
    add("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    add(
        "--no-write-results",
        dest="write_results",
        action="store_false",
        help="leave bench/RESULTS.md alone (trial runs)",
    )
    if keep is not None:
        add("--keep", action="store_true", help=f"keep the work directory ({keep})")


def add_wait_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each timed phase, wait up to this long for other processes to go "
        f"quiet (under {QUIET_CORES} cores busy); default 0: do not wait",
    )


@contextmanager
def work_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A scratch directory for one run, removed at the end unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            progress(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# ---- CPU and memory from /proc ----------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (steal excluded), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / TICKS


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces or parentheses: split after the last ')'.
        return f.read().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (Ironic forks its service, the lab its BMC
    processes, pxe.tftp and nginx their workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError, IndexError):
                parents[int(entry)] = int(stat_fields(int(entry))[1])
    tree = [root]
    for pid in tree:
        tree.extend(child for child, parent in parents.items() if parent == pid)
    return tree


def cpu_seconds(pids: Iterable[int], reaped: bool = False) -> float:
    """User and system seconds of ``pids``; with ``reaped``, also of the children each
    has waited for (Ironic's ipmitool runs). A process gone since listed is left out,
    which only understates it."""
    last = 15 if reaped else 13  # utime, stime[, cutime, cstime]
    total = 0
    for pid in pids:
        with suppress(OSError):
            total += sum(int(v) for v in stat_fields(pid)[11:last])
    return total / TICKS


def children_cpu() -> float:
    """CPU seconds of this process's children it has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _kib(value: str) -> int:
    return int(value.split()[0])


def memory_mib(pids: Sequence[int], pss: bool = False) -> dict[str, float]:
    """VmRSS and peak VmHWM summed over ``pids``, in MiB; with ``pss``, PSS too, which
    splits the pages a fork shares between parent and child instead of counting them
    twice (reading it costs the kernel a walk of every mapping: not for sampling)."""
    rss = hwm = proportional = 0
    for pid in pids:
        with suppress(OSError):
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += _kib(line.split(":")[1])
                    elif line.startswith("VmHWM:"):
                        hwm += _kib(line.split(":")[1])
            if pss:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    proportional += sum(_kib(ln.split(":")[1]) for ln in f if ln.startswith("Pss:"))
    out = {"rss_mib": round(rss / 1024, 1), "hwm_mib": round(hwm / 1024, 1)}
    if pss:
        out["pss_mib"] = round(proportional / 1024, 1)
    out["processes"] = len(pids)
    return out


class Meter:
    """Wall time and CPU seconds over one timed phase: of the named processes measured,
    of this script (``own``) and the children it has waited for, and of everything else
    on the machine, which shares the same cores and skews every figure."""

    def __init__(self, own: str = "bench", **measured: Callable[[], float]) -> None:
        self.own = own
        self.measured = measured

    def snapshot(self) -> dict[str, float]:
        return {
            "wall": time.perf_counter(),
            self.own: time.process_time(),
            "children": children_cpu(),
            **{name: seconds() for name, seconds in self.measured.items()},
            "busy": machine_busy_seconds(),
        }

    def since(self, start: Mapping[str, float]) -> dict[str, float]:
        now = self.snapshot()
        used = {name: now[name] - start[name] for name in now}
        accounted = sum(v for name, v in used.items() if name not in ("wall", "busy"))
        out = {f"{name}_s": round(v, 3) for name, v in used.items() if name != "busy"}
        out["others_s"] = round(max(used["busy"] - accounted, 0.0), 3)
        return out

    def wait_for_quiet(self, seconds: float) -> dict[str, float]:
        """Wait, up to ``seconds``, until the rest of the machine has used less than
        QUIET_CORES over three seconds: on a shared machine, another job's burst would
        land in the figures, the tails most of all."""
        began = time.monotonic()
        while True:
            start = self.snapshot()
            time.sleep(3)
            others = self.since(start)["others_s"] / 3
            waited = time.monotonic() - began
            if others < QUIET_CORES or waited >= seconds:
                return {"waited_s": round(waited, 1), "others_cores_at_start": round(others, 2)}


def contention(phases: Mapping[str, tuple[float, float]], cores: int) -> list[str]:
    """Of ``phases`` (name: other processes' CPU seconds, wall seconds), those in which
    other processes took more than a tenth of the machine: their figures are pessimistic,
    the rates and tails most of all."""
    noisy = []
    for name, (others, wall) in phases.items():
        share = others / max(wall * (cores or 1), 1e-9)
        if share > 0.1:
            noisy.append(f"{name} {share:.0%}")
    return noisy


# ---- processes --------------------------------------------------------------------------


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(**settings: str) -> dict[str, str]:
    """The caller's environment without its PROVISIONER_* variables (a stray one would
    change what is measured), plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    return {**env, **settings}


class Process:
    """A process the bench starts, in its own session, so that stopping it takes its whole
    group and nothing else; its output goes to ``log``. ``ready`` is asked until true
    after the start (the process exiting first is an error)."""

    def __init__(
        self,
        label: str,
        argv: Sequence[str | Path],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        port: int = 0,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float = 60,
    ) -> None:
        self.label = label
        self.argv = [str(a) for a in argv]
        self.log = log
        self.env = dict(env) if env is not None else None
        self.cwd = cwd or log.parent
        self.port = port
        self.ready = ready
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, f"{self.label} was not started"
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        if self.ready is not None:
            wait_for(f"{self.label} ready", self.ready, [self], self.ready_timeout)

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def cpu_seconds(self, reaped: bool = False) -> float:
        return cpu_seconds(self.pids(), reaped)

    def memory_mib(self, pss: bool = False) -> dict[str, float]:
        return memory_mib(self.pids(), pss)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=timeout)
        # Whatever is left of its group (its own session) goes too, and nothing else.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)


def wait_for(
    what: str, check: Callable[[], bool], procs: Sequence[Process], timeout: float
) -> None:
    """Ask ``check`` until true; an exception of the network (not answering yet) counts
    as false, one of ``procs`` exiting as a failure."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.label} exited ({p.proc.returncode}):\n{p.tail()}")
        with suppress(httpx.TransportError, OSError):
            if check():
                return
        time.sleep(0.2)
    tails = "".join(f"\n{p.label}:\n{p.tail()}" for p in procs)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s{tails}")


@contextmanager
def running(*procs: Process) -> Iterator[list[Process]]:
    """Start ``procs`` in order; stop them, and any the caller adds to the list, in
    reverse order at the end."""
    started: list[Process] = []
    try:
        for proc in procs:
            started.append(proc)  # before start(): one that fails to get ready is stopped
            proc.start()
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET on 127.0.0.1 (Connection: close): status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(None, 2)[1]), body


def answers_200(port: int, path: str) -> Callable[[], bool]:
    return lambda: http_get(port, path)[0] == 200


def provisioner_serve(
    label: str, log: Path, env: Mapping[str, str], port: int | None = None
) -> Process:
    """`provisioner serve` on ``port`` (default: a free one) of 127.0.0.1, as an operator
    runs it, ready once /readyz answers."""
    port = port or free_port()
    argv: list[str | Path] = [BIN / "provisioner", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port)]
    return Process(label, argv, log, env=env, port=port, ready=answers_200(port, "/readyz"))


def admin_token(
    env: Mapping[str, str], cwd: Path, name: str = "bench", scope: str = "admin"
) -> str:
    """A token (admin unless ``scope`` says otherwise) made offline (`provisioner token
    create`) in the database that ``env`` names, before the service starts."""
    made = subprocess.run(
        [str(BIN / "provisioner"), "token", "create", "--scope", scope, "--name", name],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if made.returncode:
        raise RuntimeError(f"provisioner token create failed:\n{made.stderr[-2000:]}")
    return made.stdout.strip().splitlines()[-1]


def start_lab(
    nodes: int,
    work: Path,
    env: Mapping[str, str],
    base_port: int,
    options: Sequence[str] = (),
    timeout: float = 120,
) -> tuple[Process, Path, str]:
    """`provisioner-lab up` with ``nodes`` BMCs from ``base_port`` on; once it says every
    BMC answers: the process, the lab's manifest, and the line it said so with."""
    manifest = work / "lab.csv"
    argv: list[str | Path] = [
        BIN / "provisioner-lab",
        "up",
        "--nodes",
        str(nodes),
        "--manifest",
        manifest,
        "--base-port",
        str(base_port),
        "--control-dir",
        work / "lab-control",
        *options,
    ]
    lab = Process("lab", argv, work / "lab.log", env=env)
    try:
        lab.start()
        wait_for("lab up", lambda: "lab up: " in lab.output(), [lab], timeout)
        line = next(x for x in lab.output().splitlines() if x.startswith("lab up: "))
        if not line.startswith(f"lab up: {nodes}/{nodes} "):
            raise RuntimeError(f"the lab did not start every BMC: {line}")
    except BaseException:
        lab.stop()
        raise
    return lab, manifest, line


# ---- a private PostgreSQL ---------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's programs (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """A throwaway PostgreSQL server of the bench's own: ``initdb`` into a fresh directory,
    ``pg_ctl start`` on a free port of 127.0.0.1, one database owned by a user with a
    random password (:attr:`url` is the service's URL for it). No durability (fsync off):
    nothing in it outlives the run. As root, the server runs as the ``postgres`` user,
    since PostgreSQL refuses root. The same kind of server as tests/replicas/postgres.py's."""

    USER = DATABASE = "provisioner"

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="provisioner-bench-pg-"))
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.url = (
            f"postgresql+psycopg://{self.USER}:{self.password}@127.0.0.1:{self.port}/"
            f"{self.DATABASE}"
        )
        try:
            (self.dir / "pwfile").write_text(self.password + "\n")
            if os.geteuid() == 0:
                server = pwd.getpwnam("postgres")
                for path in (self.dir, self.dir / "pwfile"):
                    os.chown(path, server.pw_uid, server.pw_gid)
            pwfile = f"--pwfile={self.dir}/pwfile"
            auth = ("--auth=scram-sha-256", "--encoding=UTF8", "--no-sync")
            self._run("initdb", "-D", self.data, "-U", self.USER, pwfile, *auth)
            options = (
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c max_connections=300 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off"
            )
            self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")
            self._run(
                "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER, self.DATABASE
            )
        except BaseException:
            self.close()
            raise

    def _run(self, program: str, *args: str | Path) -> None:
        argv = [str(self.bin / program), *map(str, args)]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        # From /: the server's user may not enter the current directory.
        env = {**os.environ, "PGPASSWORD": self.password}
        done = subprocess.run(argv, cwd="/", env=env, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{program} failed:\n{done.stdout}{done.stderr}{self.tail()}")

    def pid(self) -> int:
        """The postmaster's (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        """The server's CPU: the postmaster and its live backends, and the backends it has
        reaped (a connection closed since)."""
        return cpu_seconds(process_tree(self.pid()), reaped=True)

    def tail(self, lines: int = 20) -> str:
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---- HTTP clients -----------------------------------------------------------------------


def api_client(base_url: str, headers: Mapping[str, str] | None = None) -> httpx.Client:
    import httpx

    # The synchronous client: on this machine httpx's AsyncClient spent 2-3 ms more per
    # request than the server did, which would bury the latencies under client time.
    return httpx.Client(base_url=base_url, headers=headers, timeout=120)


def expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} -> {response.status_code}, "
            f"expected {status}: {response.text[:500]}"
        )
    return response.json() if response.content else None


def fan_out(
    items: Iterable[T],
    concurrency: int,
    make_client: Callable[[], httpx.Client],
    call: Callable[[httpx.Client, T], None],
) -> None:
    """``call`` over ``items`` with ``concurrency`` requests in flight: one thread and one
    keep-alive connection each, so connection setup is not what we measure."""
    shared = iter(items)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        with make_client() as client:
            while not errors:
                with lock:
                    item = next(shared, None)
                if item is None:
                    return
                try:
                    call(client, item)
                except BaseException as exc:  # Reported below, in the caller's thread.
                    errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


# wrk's Lua: GET each path of the file named by $BENCH_WRK_PATHS in turn, each thread
# from its own offset, and print the figures as one JSON line (wrk's own summary has no
# machine-readable form).
_WRK_LUA = """\
local paths = {}
for line in io.lines(os.getenv("BENCH_WRK_PATHS")) do paths[#paths + 1] = line end
local threads = 0
local i = 0
function setup(thread)
  thread:set("offset", threads * 131)
  threads = threads + 1
end
function init(args) i = offset end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


def wrk_script(path: Path, generated_by: str) -> Path:
    """Write the Lua script of :func:`wrk` to ``path``."""
    path.write_text(f"-- Generated by {generated_by}: GET a list of paths in turn.\n{_WRK_LUA}")
    return path


def wrk(
    url: str,
    files: tuple[Path, Path],
    *,
    threads: int,
    connections: int,
    seconds: int,
    meter: Meter,
    headers: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, float]]:
    """One wrk run against ``url`` over ``files`` (the paths, one a line, and the script of
    :func:`wrk_script`): its figures, and ``meter``'s CPU accounting around it (wrk is the
    child this process waits for: ``children_s``)."""
    paths, script = files
    argv = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"]
    argv += ["--timeout", "5s", "-s", str(script)]
    for header in headers:
        argv += ["-H", header]
    env = {**os.environ, "BENCH_WRK_PATHS": str(paths)}
    start = meter.snapshot()
    run = subprocess.run([*argv, url], capture_output=True, text=True, env=env, timeout=300)
    cpu = meter.since(start)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk said:\n{run.stdout}\n{run.stderr}")
    w = json.loads(line.split(" ", 1)[1])
    wall = w["duration_us"] / 1e6
    figures = {
        "requests": w["requests"],
        "seconds": round(wall, 2),
        "requests_per_s": round(w["requests"] / wall, 1),
        "p50_ms": w["p50_us"] / 1000,
        "p90_ms": w["p90_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        # wrk counts statuses above 399 as errors; 1xx/3xx are not counted.
        "http_errors": w["status"],
        "socket_errors": w["connect"] + w["read"] + w["write"] + w["timeout"],
    }
    return figures, cpu


def ironic_config(data_dir: Path, port: int) -> Path:
    """bench/ironic's configuration rendered for a run in ``data_dir`` serving ``port``,
    and the schema of its SQLite database created; the configuration file."""
    (data_dir / "locks").mkdir(parents=True)
    template = (IRONIC_DIR / "ironic.conf.template").read_text()
    conf = data_dir / "ironic.conf"
    conf.write_text(template.replace("@DATA_DIR@", str(data_dir)).replace("@PORT@", str(port)))
    dbsync = IRONIC_VENV / "bin" / "ironic-dbsync"
    subprocess.run(
        [str(dbsync), "--config-file", str(conf), "create_schema"], check=True, capture_output=True
    )
    return conf


def has_fake_driver(client: httpx.Client) -> bool:
    """Whether Ironic's conductor has registered its drivers, which it does just after
    the API answers: no node can be created before."""
    drivers = client.get("/v1/drivers").json().get("drivers", [])
    return any(d["name"] == "fake-hardware" for d in drivers)


def local_mac(serial: int) -> str:
    """A locally administered unicast MAC (02:...): never a real vendor's address."""
    octets = [0x02, 0x00] + [(serial >> shift) & 0xFF for shift in (24, 16, 8, 0)]
    return ":".join(f"{o:02x}" for o in octets)


def ironic_version() -> str:
    code = "from importlib.metadata import version; print(version('ironic'))"
    python = IRONIC_VENV / "bin" / "python"
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return run.stdout.strip()


# ---- figures ----------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def latency(samples: Sequence[float]) -> dict[str, float]:
    """Seconds in, milliseconds out."""
    ms = [s * 1000 for s in samples]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def judge(op: str, limit: float, value: float | None) -> str:
    """A measured figure against a target (``op`` is ">=" or "<=")."""
    if value is None:
        return "not measured"
    ok = value >= limit if op == ">=" else value <= limit
    return "pass" if ok else "**FAIL**"


def verdict_table(
    targets: Mapping[str, tuple[str, float, str]],
    values: Mapping[str, float | None],
    labels: Mapping[str, str],
    markdown: bool,
) -> list[str]:
    """Goal, measured, target and verdict for each of ``labels``: ``targets`` holds the
    operator, limit and unit of each key; a key beginning with ``x_`` is a ratio."""
    body = []
    for key, label in labels.items():
        op, limit, unit = targets[key]
        target = f"{op} {limit:g}{' ' + unit if unit and unit != 'x' else unit}"
        value = values[key]
        shown = "n/a" if value is None else f"{value:g}{'x' if key.startswith('x_') else ''}"
        body.append([label, shown, target, judge(op, limit, value)])
    return render_table(["Goal", "Measured", "Target", "Result"], body, markdown, right={1})


def busy_warning(noisy: Sequence[str]) -> str:
    """The terminal's line for :func:`contention`'s phases."""
    return f"\nwarning: other processes were busy ({', '.join(noisy)}): rerun when quiet"


def busy_note(noisy: Sequence[str], pessimistic: str = "times are pessimistic") -> str:
    """The RESULTS.md line for :func:`contention`'s phases."""
    return (
        "- **Warning: other processes were busy during this run** (their share of the "
        f"machine: {', '.join(noisy)}); {pessimistic}. Rerun on a quiet machine."
    )


# ---- profiles ---------------------------------------------------------------------------


def py_spy(pid: int, out: Path, rate_hz: int, *options: str) -> subprocess.Popen[bytes] | None:
    """py-spy recording the GIL-holding samples of ``pid`` as raw collapsed stacks (pip
    install py-spy into the venv); None without it."""
    spy = BIN / "py-spy"
    if not spy.exists():
        progress(f"no {spy}: not profiling")
        return None
    argv = [str(spy), "record", "--pid", str(pid), "--rate", str(rate_hz), "--format", "raw"]
    return subprocess.Popen(
        [*argv, "--gil", "--output", str(out), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# py-spy's raw frames: "function (path/to/file.py:line)", shown as "function (file.py)".
_FRAME = re.compile(r"^(.*) \((?:.*/)?(.*?):\d+\)$")


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Shares of the samples by function: own (the leaf frame) and inclusive (anywhere on
    the stack)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"samples": 0, "own": [], "inclusive": []}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_FRAME.sub(r"\1 (\2)", f) for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def shares(table: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(n / total, 3)) for f, n in table.most_common(top)] if total else []

    return {"samples": total, "own": shares(own), "inclusive": shares(inclusive)}


# ---- the machine and the code -----------------------------------------------------------


def tool_version(argv: Sequence[str], prefix: str = "") -> str:
    """The first line a tool prints about its version, ``prefix`` taken off."""
    try:
        run = subprocess.run(list(argv), capture_output=True, text=True)
    except OSError:
        return f"{argv[0]}: absent"
    text = (run.stdout + run.stderr).strip()
    return text.splitlines()[0].removeprefix(prefix).strip() if text else argv[0]


def machine(packages: Iterable[str]) -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = _kib(f.readline().split(":", 1)[1])
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "loadavg_at_start": os.getloadavg()[0],
    }


def git(*args: str) -> str:
    run = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    # Not strip(): `status --porcelain` lines begin with a meaningful space.
    return run.stdout.rstrip() if run.returncode == 0 else ""


def export_revision(rev: str, into: Path) -> str:
    """``rev`` exported with git archive into ``into`` (the checkout is left alone), to
    run the service from there ahead of the editable install; the full commit id."""
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


def code_state(
    paths: Sequence[str], rev: str | None = None, commit: str | None = None
) -> dict[str, Any]:
    """The code a run measured: a revision's export, or the working tree with its
    uncommitted changes under ``paths``."""
    if rev:
        return {"source": f"git archive of {rev}", "commit": commit, "uncommitted_files": []}
    changed = git("status", "--porcelain", "--", *paths)
    return {
        "source": "working tree",
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_files": [line[3:] for line in changed.splitlines()],
    }


def code_note(code: Mapping[str, Any]) -> str:
    note = f"{code.get('source', 'working tree')}, commit {code['commit'][:12]}"
    if code["uncommitted_files"]:
        note += f" with uncommitted changes to {', '.join(code['uncommitted_files'])}"
    return note


def command_line(script: str) -> str:
    """How ``script`` was run, paths relative to the checkout."""
    python = Path(sys.executable)
    shown = os.path.relpath(python, REPO) if python.is_relative_to(REPO) else python.name
    return shlex.join([shown, os.path.relpath(Path(script).resolve(), REPO), *sys.argv[1:]])


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


# ---- results ----------------------------------------------------------------------------


def render_table(
    head: Sequence[str], body: Sequence[Sequence[str]], markdown: bool, right: set[int]
) -> list[str]:
    """A Markdown table, or aligned plain text for the terminal; ``right``: the columns
    of figures, aligned right."""
    if markdown:
        rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|"
        return ["| " + " | ".join(head) + " |", rule] + ["| " + " | ".join(r) + " |" for r in body]
    plain = [[cell.replace("**", "").replace("`", "") for cell in r] for r in [head, *body]]
    widths = [max(len(r[i]) for r in plain) for i in range(len(head))]
    lines = [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in plain
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def results_head(begin: str, title: str, results: Mapping[str, Any]) -> list[str]:
    """The opening of a bench's RESULTS.md block: its marker, title, command and code."""
    return [
        begin,
        "",
        f"## {title}",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"- Code: {code_note(results['code'])}.",
    ]


def save_raw(results: dict[str, Any], out: Path, bench: str) -> Path:
    """Write a run's raw figures as JSON under ``out``, naming the file in ``results``
    (relative to the checkout when inside it) so that the RESULTS.md block can cite it."""
    out.mkdir(parents=True, exist_ok=True)
    raw = (out / f"{bench}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json").resolve()
    results["raw"] = os.path.relpath(raw, REPO) if raw.is_relative_to(REPO) else str(raw)
    raw.write_text(json.dumps(results, indent=2) + "\n")
    return raw


def write_results(path: Path, generated: str, begin: str, end: str) -> None:
    """Replace the block between ``begin`` and ``end`` (or append it) and keep the rest:
    the other benches' blocks and the analysis written by hand."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + generated + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + generated + "\n"
    path.write_text(text)


def publish(args: argparse.Namespace, markdown: Callable[[], str], begin: str, end: str) -> None:
    """Unless ``--no-write-results``: write the run's block (made by ``markdown``) into
    ``--results`` and say where."""
    if args.write_results:
        write_results(args.results, markdown(), begin, end)
        print(f"results: {args.results}")
