"""Power-sync benchmark: one full power-state sync of 1,000 lab BMCs by the service,
beside ipmitool over the same BMCs in the same run.

Run by hand (not in CI), from the checkout, with the project's venv:

    .venv/bin/python bench/power_sync.py                 # full size; rewrites its block
    .venv/bin/python bench/power_sync.py --nodes 200 --no-write-results

The lab (`provisioner-lab up`) serves the BMCs from its own processes on 127.0.0.1. The
service enrolls them through its API (`provisioner serve`, then POST /api/v1/racks/import
of the lab's manifest); the sync itself is then run in a separate, fresh Python process
by the service's own code: `create_app()`, its lifespan, and
`app.state.services.power_sync.sync_once()`, as its background loop would call it. See
bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    NO_BACKGROUND_WORK,
    QUIET_CORES,
    TICKS,
    Meter,
    Process,
    admin_token,
    api_client,
    clean_env,
    code_state,
    command_line,
    contention,
    cpu_seconds,
    expect,
    judge,
    latency,
    machine,
    machine_busy_seconds,
    now_utc,
    progress,
    provisioner_serve,
    py_spy,
    render_table,
    results_head,
    save_raw,
    start_lab,
    tool_version,
    write_results,
)

RESULTS_BEGIN = "<!-- bench/power_sync.py writes from here -->"
RESULTS_END = "<!-- bench/power_sync.py writes up to here -->"
USERNAME = "admin"
# One shared lab password: the ipmitool command lines then differ only by port.
PASSWORD = "bench-power-sync"
# The bench starts its processes with clean_env(**SERVICE_ENV): every PROVISIONER_*
# variable of the caller's environment dropped (a stray PROVISIONER_BMC_WORKERS would
# change what is measured), the sync triggered by the bench alone, and no inspection on
# enrollment (1,000 of them would compete for the same BMCs).
SERVICE_ENV = NO_BACKGROUND_WORK

# The targets, each checked against one measured figure.
TARGETS: dict[str, tuple[str, float, str]] = {
    "first_contact_s": ("<=", 3.0, "s"),
    "warm_s": ("<=", 2.0, "s"),
    "x_faster_than_ipmitool_16": (">=", 10.0, "x"),
    "failures": ("<=", 0, ""),
}


# ---- the lab --------------------------------------------------------------------------


def ports_free(address: str, first: int, count: int, kind: socket.SocketKind) -> bool:
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def free_base_port(count: int, wanted: int | None, protocol: str) -> int:
    """A range of ``count`` free ports below the kernel's ephemeral range, UDP for IPMI
    BMCs and TCP for Redfish ones: the clients' own sockets (pyghmi's, ipmitool's, the
    HTTPS connections) take ephemeral ports, and one of them could otherwise land inside
    the range between this check and the lab's start."""
    kind, name = (
        (socket.SOCK_STREAM, "TCP") if protocol == "redfish" else (socket.SOCK_DGRAM, "UDP")
    )
    if wanted is not None:
        if not ports_free("127.0.0.1", wanted, count, kind):
            raise RuntimeError(f"{name} ports {wanted}..{wanted + count - 1} are not all free")
        return wanted
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    # 6230+ is the lab's default, where other people's labs run: start well above it.
    for first in range(20000, low - count, 1000):
        if ports_free("127.0.0.1", first, count, kind):
            return first
    raise RuntimeError(f"no {count} free {name} ports in a row between 20000 and {low}")


@dataclass(frozen=True)
class Lab:
    """`provisioner-lab up`, every BMC answering."""

    process: Process
    manifest: Path
    nodes: int
    base_port: int
    up_line: str

    def pids(self) -> list[int]:
        return self.process.pids()

    def port(self, index: int) -> int:
        return self.base_port + index

    def meter(self) -> Meter:
        """A meter of the phases that also counts the lab's CPU (its processes as now)."""
        pids = self.pids()
        return Meter(lab=lambda: cpu_seconds(pids))


# ---- enrolling the lab in the service -------------------------------------------------


def enroll(lab: Lab, data_dir: Path) -> dict[str, Any]:
    """The way an operator would: an offline admin token, `provisioner serve`, and the
    lab's manifest to POST /api/v1/racks/import. The service is stopped afterwards."""
    env = clean_env(**SERVICE_ENV, PROVISIONER_DATA_DIR=str(data_dir))
    token = admin_token(env, data_dir)
    server = provisioner_serve(
        "provisioner serve", data_dir / "serve.log", {**env, "PROVISIONER_LOG_LEVEL": "warning"}
    )
    headers = {"Authorization": f"Bearer {token}"}
    try:
        server.start()
        with api_client(f"http://127.0.0.1:{server.port}", headers) as c:
            t0 = time.perf_counter()
            response = c.post(
                "/api/v1/racks/import",
                content=lab.manifest.read_bytes(),
                headers={"Content-Type": "text/csv"},
            )
            seconds = time.perf_counter() - t0
            created = expect(response, 201)["created"]
            if created != lab.nodes:
                raise RuntimeError(f"import created {created} nodes, expected {lab.nodes}")
    finally:
        server.stop()
    return {"nodes": created, "import_s": round(seconds, 2)}


def copy_data_dir(source: Path, into: Path) -> Path:
    """A pristine copy of the freshly enrolled database for each sync process: every one
    then starts from the same state (power unknown), so its first sync records the same
    1,000 changes."""
    into.mkdir(parents=True)
    for path in source.iterdir():
        if path.name.startswith("provisioner.db") or path.name == "secret.key":
            shutil.copy2(path, into / path.name)
    return into


# ---- the service's sync, in a fresh process -------------------------------------------


def sync_process(
    data_dir: Path,
    workers: int | None,
    warm_syncs: int,
    lab: Lab,
    profile: Path | None,
) -> dict[str, Any]:
    """Run `--sync-child` in a new Python process: first contact is then really the
    service's first contact (no pyghmi state, no session), and the CPU it reports is the
    service's alone. With ``profile``, py-spy samples it during the syncs only."""
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--sync-child",
        str(data_dir),
        "--warm-syncs",
        str(warm_syncs),
        "--lab-pids",
        ",".join(map(str, lab.pids())),
    ]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if profile is not None:
        argv.append("--wait-go")
    child = subprocess.Popen(
        argv,
        env=clean_env(**SERVICE_ENV),
        cwd=data_dir,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    spy: subprocess.Popen[bytes] | None = None
    if profile is not None:
        if child.stdout.readline().strip() != "ready":
            child.kill()
            raise RuntimeError(f"sync process failed to start:\n{child.communicate()[1]}")
        # Blocking mode (py-spy's default) pauses the process for each sample, which gives
        # exact stacks and slows it: the figures of a profiled run are not the ones to
        # report. Only GIL-holding samples: the process is GIL-bound, so these say where
        # its time goes.
        spy = py_spy(child.pid, profile, 250, "--threads")
        time.sleep(1.5)  # py-spy attaches
        child.stdin.write("go\n")
        child.stdin.flush()
    out, err = child.communicate(timeout=600)
    if spy is not None:
        spy.wait(timeout=60)  # it stops when the process exits
    if child.returncode:
        raise RuntimeError(f"sync process failed ({child.returncode}):\n{err[-4000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


class _RetryCount(logging.Handler):
    """Counts the pool's "attempt N of M failed; retrying" lines: a retried poll counts
    as a success in the SyncReport, but it cost at least one timeout."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.count += 1


def _wrap(owner: object, name: str, wrapper: Callable[[Any], Any]) -> bool:
    """Replace ``owner.name`` by ``wrapper(original)`` on the instance, for the timing
    breakdown. The service looks these methods up on ``self`` at call time, so the
    instance attribute is what it calls; without the attribute (the code changed), the
    breakdown is skipped and the sync is measured all the same."""
    original = getattr(owner, name, None)
    if original is None:
        return False
    setattr(owner, name, wrapper(original))
    return True


class Breakdown:
    """Where one sync's wall time goes: loading the due nodes (`_due`), the polls (the
    gather over `BmcPool.call`), recording (`_record`, the DB writes), and per BMC the
    time a worker thread spent on it (`BmcPool._run`: login if needed, then Get Chassis
    Status) and on logins alone (the driver factory)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.per_bmc: list[float] = []
        self.logins: list[float] = []
        self.lock = threading.Lock()

    def reset(self) -> None:
        self.marks.clear()
        self.cpu.clear()
        # In place: the wrappers hold these very lists.
        self.per_bmc.clear()
        self.logins.clear()

    def phase(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
            def timed(*args: Any) -> Any:
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    return fn(*args)
                finally:
                    self.marks[name] = time.perf_counter() - t0
                    self.cpu[name] = time.process_time() - c0

            return timed

        return wrapper

    def samples(self, into: list[float]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
            def timed(*args: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    with self.lock:
                        into.append(time.perf_counter() - t0)

            return timed

        return wrapper

    def summary(self, wall: float, cpu: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        load, record = self.marks.get("load"), self.marks.get("record")
        if load is not None and record is not None:
            out["load_s"] = round(load, 3)
            out["polls_s"] = round(wall - load - record, 3)
            out["record_s"] = round(record, 3)
            out["load_cpu_s"] = round(self.cpu["load"], 3)
            out["polls_cpu_s"] = round(cpu - self.cpu["load"] - self.cpu["record"], 3)
            out["record_cpu_s"] = round(self.cpu["record"], 3)
        for key, values in (("per_bmc", self.per_bmc), ("login", self.logins)):
            if values:
                out[key] = spread(values)
        return out


THREAD_KINDS = ("BMC workers", "DB threads (AnyIO)", "event loop (main)", "pyghmi I/O")
# The breakdown's column of each kind of thread.
THREAD_COLUMNS = {
    "BMC workers": "BMC workers",
    "DB threads (AnyIO)": "DB",
    "event loop (main)": "event loop",
    "pyghmi I/O": "pyghmi I/O",
}


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, by kind of thread: the event loop
    (MainThread), the pool's BMC workers, the AnyIO threads that run the DB work, pyghmi's
    I/O thread, the keepalive thread. From /proc, by each thread's native id."""
    groups: dict[str, float] = {}
    for thread in threading.enumerate():
        name = thread.name
        kind = (
            "BMC workers"
            if name.startswith("bmc")
            else "DB threads (AnyIO)"
            if name.startswith("AnyIO")
            else "event loop (main)"
            if thread is threading.main_thread()
            else "pyghmi I/O"
            if type(thread).__name__ == "_IOWorker"
            else name
        )
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        groups[kind] = groups.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return groups


def spread(values: list[float]) -> dict[str, float]:
    return {
        **latency(values),
        "sum_s": round(sum(values), 2),
        "over_500ms": sum(1 for v in values if v > 0.5),
    }


def sync_child(args: argparse.Namespace) -> int:
    """In the sync process: the service's app on the enrolled database, one first-contact
    sync and ``--warm-syncs`` warm ones; the figures as one JSON line on stdout."""
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from provisioner.app import create_app
    from provisioner.models import Node
    from provisioner.settings import Settings

    overrides: dict[str, Any] = {
        "data_dir": Path(args.sync_child),
        "reconciler": False,
        "inspect_on_enroll": False,
        "power_sync_interval": 0,
    }
    if args.workers is not None:
        overrides["bmc_workers"] = args.workers
    settings = Settings(**overrides)
    retries = _RetryCount()
    pool_log = logging.getLogger("provisioner.bmc.pool")
    pool_log.setLevel(logging.INFO)
    pool_log.addHandler(retries)
    pool_log.propagate = False
    lab_pids = [int(p) for p in args.lab_pids.split(",") if p]
    app = create_app(settings)

    breakdown = Breakdown()
    sync = app.state.services.power_sync
    pool = app.state.services.bmc_pool
    instrumented = all(
        [
            _wrap(sync, "_due", breakdown.phase("load")),
            _wrap(sync, "_record", breakdown.phase("record")),
            _wrap(pool, "_run", breakdown.samples(breakdown.per_bmc)),
            _wrap(pool, "_factory", breakdown.samples(breakdown.logins)),
        ]
    )

    # uvicorn's default (loop="auto") runs the service on uvloop when it is installed,
    # as in the project's venv: do the same, so the event loop is the service's.
    runner: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]]
    try:
        import uvloop

        runner, loop_name = uvloop.run, f"uvloop {metadata.version('uvloop')}"
    except ImportError:
        runner, loop_name = asyncio.run, "asyncio"

    async def main() -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        async with app.router.lifespan_context(app):
            if args.wait_go:
                print("ready", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            for index in range(1 + args.warm_syncs):
                breakdown.reset()
                retries.count = 0
                lab0, busy0 = cpu_seconds(lab_pids), machine_busy_seconds()
                threads0 = thread_cpu()
                t0, c0 = time.perf_counter(), time.process_time()
                report = await sync.sync_once()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu().items()}
                lab = cpu_seconds(lab_pids) - lab0
                others = machine_busy_seconds() - busy0 - cpu - lab
                runs.append(
                    {
                        "kind": "first contact" if index == 0 else "warm",
                        "wall_s": round(wall, 3),
                        "cpu_s": round(cpu, 3),
                        "lab_cpu_s": round(lab, 3),
                        "others_cpu_s": round(max(others, 0.0), 3),
                        "polled": report.polled,
                        "changed": report.changed,
                        "failed": report.failed,
                        "flagged": len(report.flagged),
                        "retried_attempts": retries.count,
                        "cpu_by_thread_s": {
                            k: round(v, 2) for k, v in sorted(threads.items(), key=lambda i: -i[1])
                        },
                        **breakdown.summary(wall, cpu),
                    }
                )
                # Warm syncs a little apart, as the service's loop would run them (it
                # waits its interval): pyghmi's keepalive thread then gets its turn.
                await asyncio.sleep(0.5)
            with Session(app.state.services.engine) as session:
                query = select(Node.power_state, func.count()).group_by(col(Node.power_state))
                power = dict(session.exec(query).all())
        return {
            "bmc_workers": settings.bmc_workers,
            "bmc_workers_is_default": args.workers is None,
            "bmc_timeout_s": settings.bmc_timeout,
            "bmc_retries": settings.bmc_retries,
            "event_loop": loop_name,
            "instrumented": instrumented,
            "runs": runs,
            "power_states_after": power,
        }

    result = runner(main())
    print(json.dumps(result), flush=True)
    return 0


# ---- ipmitool -------------------------------------------------------------------------


def ipmitool_status(port: int) -> tuple[bool, float, str]:
    argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port)]
    argv += ["-U", USERNAME, "-P", PASSWORD, "power", "status"]
    t0 = time.perf_counter()
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - t0, "no exit within 60 s"
    seconds = time.perf_counter() - t0
    if run.returncode == 0 and run.stdout.startswith("Chassis Power is "):
        return True, seconds, ""
    return False, seconds, (run.stderr or run.stdout).strip()[-200:]


StatusCall = Callable[[int], tuple[bool, float, str]]
"""A reference tool's power-state read of the BMC on one port: success, seconds, why not."""


def tool_run(
    status: StatusCall, ports: list[int], parallel: int, meter: Meter, quiet: float
) -> dict[str, Any]:
    """``status`` (a command-line tool's run) once per port, ``parallel`` processes at a
    time: one thread each that forks the tool and waits for it."""
    out: dict[str, Any] = {"bmcs": len(ports), "parallel": parallel}
    if quiet > 0:
        out["quiet"] = meter.wait_for_quiet(quiet)
    start = meter.snapshot()
    executor = ThreadPoolExecutor(parallel)
    try:
        results = list(executor.map(status, ports))
    finally:
        # On Ctrl-C, do not wait for the calls not yet started.
        executor.shutdown(wait=True, cancel_futures=True)
    out["cpu"] = meter.since(start)
    failures = [(port, why) for port, (ok, _, why) in zip(ports, results, strict=True) if not ok]
    out.update(
        wall_s=out["cpu"]["wall_s"],
        per_1000_s=round(out["cpu"]["wall_s"] * 1000 / len(ports), 2),
        failed=len(failures),
        failure_examples=[f"port {p}: {why}" for p, why in failures[:5]],
        per_call=spread([seconds for _, seconds, _ in results]),
        cpu_s=out["cpu"]["children_s"],
    )
    return out


# ---- the run --------------------------------------------------------------------------


@contextmanager
def running_lab(args: argparse.Namespace, work: Path) -> Iterator[Lab]:
    base = free_base_port(args.nodes, args.base_port, args.protocol)
    progress(f"lab: {args.nodes} {args.protocol} BMCs on 127.0.0.1:{base}-{base + args.nodes - 1}")
    options = ["--password", PASSWORD, "--per-process", str(args.per_process)]
    options += ["--protocol", args.protocol]
    process, manifest, line = start_lab(args.nodes, work, clean_env(**SERVICE_ENV), base, options)
    try:
        progress(f"  {line}")
        yield Lab(process, manifest, args.nodes, base, line)
    finally:
        process.stop()


def service_runs(args: argparse.Namespace, lab: Lab, enrolled: Path, work: Path) -> list[Any]:
    configs: list[int | None] = [None, *args.extra_workers]
    runs = []
    for workers in configs:
        label = "default" if workers is None else str(workers)
        data_dir = copy_data_dir(enrolled, work / f"sync-{label}")
        if args.wait_quiet > 0:
            lab.meter().wait_for_quiet(args.wait_quiet)
        profile = None
        if args.profile_dir is not None and workers is None:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            profile = args.profile_dir / f"power-sync-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.txt"
        result = sync_process(data_dir, workers, args.warm_syncs, lab, profile)
        if profile is not None:
            result["profile"] = str(profile)
        first, warm = result["runs"][0], result["runs"][1:]
        progress(
            f"service, {result['bmc_workers']} workers: first contact {first['wall_s']} s "
            f"(CPU {first['cpu_s']} s, failed {first['failed']}); warm "
            + ", ".join(f"{r['wall_s']} s" for r in warm)
        )
        runs.append(result)
    return runs


def ipmitool_runs(args: argparse.Namespace, ports: list[int], meter: Meter) -> dict[str, Any]:
    """The IPMI run's reference: ipmitool over every BMC, 16 at a time, then one after
    another over ``--sequential-bmcs`` of them."""
    progress(f"ipmitool: {len(ports)} BMCs, {args.reference_parallel} in parallel")
    parallel = tool_run(ipmitool_status, ports, args.reference_parallel, meter, args.wait_quiet)
    progress(f"  {parallel['wall_s']} s, {parallel['failed']} failed")
    sequential_ports = ports[: args.sequential_bmcs]
    progress(f"ipmitool: {len(sequential_ports)} BMCs, one after another")
    sequential = tool_run(ipmitool_status, sequential_ports, 1, meter, args.wait_quiet)
    progress(f"  {sequential['wall_s']} s, {sequential['failed']} failed")
    return {"ipmitool_parallel": parallel, "ipmitool_sequential": sequential}


def run(args: argparse.Namespace) -> dict[str, Any]:
    # The Redfish run shares the lab, the enrollment and the service's sync; its
    # reference tool and its report are power_sync_redfish.py's.
    import power_sync_redfish as redfish

    work = Path(tempfile.mkdtemp(prefix="provisioner-bench-power-"))
    results: dict[str, Any] = {
        "date": now_utc(),
        "command": command_line(__file__),
        "protocol": args.protocol,
        "machine": (
            redfish.machine_info()
            if args.protocol == "redfish"
            else {
                **machine(("pyghmi", "sqlalchemy", "uvloop")),
                "ipmitool": tool_version(["ipmitool", "-V"], "ipmitool version "),
            }
        ),
        "code": code_state(("provisioner", "lab", "migrations")),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        with running_lab(args, work) as lab:
            results["lab"] = {
                "nodes": args.nodes,
                "base_port": lab.base_port,
                "per_process": args.per_process,
                "processes": len(lab.pids()),
                "up": lab.up_line,
            }
            enrolled = work / "enrolled"
            enrolled.mkdir()
            progress("service: enrolling the lab's manifest through the API")
            results["enroll"] = enroll(lab, enrolled)
            results["service"] = service_runs(args, lab, enrolled, work)
            meter = lab.meter()
            ports = [lab.port(i) for i in range(args.nodes)]
            reference = redfish.redfishtool_runs if args.protocol == "redfish" else ipmitool_runs
            results.update(reference(args, ports, meter))
    finally:
        if args.keep:
            progress(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    return results


# ---- reporting ------------------------------------------------------------------------


def warm_median(result: dict[str, Any]) -> float | None:
    warm = [r["wall_s"] for r in result["runs"][1:]]
    return statistics.median(warm) if warm else None


def default_run(results: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in results["service"] if r["bmc_workers_is_default"])


def measured(results: dict[str, Any]) -> dict[str, float | None]:
    service = default_run(results)
    first = service["runs"][0]["wall_s"]
    reference = results["ipmitool_parallel"]
    # The ratio is taken on the same BMCs; were the reference run on fewer, it would be
    # scaled to 1,000 first (it is not by default).
    scale = results["lab"]["nodes"] / reference["bmcs"]
    return {
        "first_contact_s": first,
        "warm_s": warm_median(service),
        "x_faster_than_ipmitool_16": round(reference["wall_s"] * scale / first, 1),
        "failures": sum(r["failed"] for s in results["service"] for r in s["runs"]),
    }


def verdict(key: str, value: float | None) -> tuple[str, str]:
    op, limit, unit = TARGETS[key]
    text = f"{op} {limit:g}{' ' + unit if unit and unit != 'x' else unit}"
    return text, judge(op, limit, value)


def per_1000(seconds: float, bmcs: int) -> str:
    return f"{seconds * 1000 / bmcs:.2f}"


def figures_table(results: dict[str, Any], markdown: bool) -> list[str]:
    nodes = results["lab"]["nodes"]
    par, seq = results["ipmitool_parallel"], results["ipmitool_sequential"]
    reference = par["wall_s"] * nodes / par["bmcs"]
    head = ["Work", "BMCs", "Wall s", "s per 1,000", "CPU s", "Failed", "x ipmitool -P16"]
    body = []
    for service in results["service"]:
        workers = service["bmc_workers"]
        label = f"{workers} workers{' (default)' if service['bmc_workers_is_default'] else ''}"
        for index, r in enumerate(service["runs"]):
            kind = "first contact" if index == 0 else f"warm #{index}"
            body.append(
                [
                    f"service sync, {label}, {kind}",
                    f"{r['polled']:,}",
                    f"{r['wall_s']:.2f}",
                    per_1000(r["wall_s"], nodes),
                    f"{r['cpu_s']:.2f}",
                    str(r["failed"]),
                    f"{reference / r['wall_s']:.1f}x",
                ]
            )
    for name, ref in (
        (f"ipmitool, {par['parallel']} parallel processes", par),
        ("ipmitool, sequential", seq),
    ):
        body.append(
            [
                name,
                f"{ref['bmcs']:,}",
                f"{ref['wall_s']:.2f}",
                per_1000(ref["wall_s"], ref["bmcs"])
                + ("" if ref["bmcs"] == nodes else " (extrapolated)"),
                f"{ref['cpu_s']:.2f}",
                str(ref["failed"]),
                f"{reference / (ref['wall_s'] * nodes / ref['bmcs']):.2f}x",
            ]
        )
    return render_table(head, body, markdown, right={1, 2, 3, 4, 5, 6})


def targets_table(results: dict[str, Any], markdown: bool) -> list[str]:
    values = measured(results)
    workers = default_run(results)["bmc_workers"]
    labels = {
        "first_contact_s": (
            f"full sync of {results['lab']['nodes']:,} BMCs, first contact ({workers} workers)"
        ),
        "warm_s": f"full sync, warm (median of {len(default_run(results)['runs']) - 1})",
        "x_faster_than_ipmitool_16": "first-contact sync vs ipmitool, 16 parallel processes",
        "failures": "failed polls, every service sync of the run",
    }
    body = []
    for key, label in labels.items():
        target, result = verdict(key, values[key])
        value = values[key]
        shown = "n/a" if value is None else f"{value:g}{'x' if key.startswith('x_') else ''}"
        body.append([label, shown, target, result])
    return render_table(["Goal", "Measured", "Target", "Result"], body, markdown, right={1})


def breakdown_table(
    results: dict[str, Any], markdown: bool, kinds: tuple[str, ...] = THREAD_KINDS
) -> list[str]:
    head = [
        "Sync",
        "load rows s",
        "polls s",
        "record s",
        "CPU load/polls/record s",
        f"CPU {'/'.join(THREAD_COLUMNS[k] for k in kinds)} s",
        "per BMC p50/p99/max ms",
        "logins",
        "retries",
        "lab CPU s",
        "others CPU s",
    ]
    body = []
    for service in results["service"]:
        for index, r in enumerate(service["runs"]):
            if "load_s" not in r:
                continue
            per = r.get("per_bmc", {})
            threads = {k.lower(): v for k, v in r.get("cpu_by_thread_s", {}).items()}
            kind = "first contact" if index == 0 else f"warm #{index}"
            spread_ms = "/".join(f"{per.get(k, 0):.0f}" for k in ("p50_ms", "p99_ms", "max_ms"))
            body.append(
                [
                    f"{service['bmc_workers']} workers, {kind}",
                    f"{r['load_s']:.2f}",
                    f"{r['polls_s']:.2f}",
                    f"{r['record_s']:.2f}",
                    f"{r['load_cpu_s']:.2f} / {r['polls_cpu_s']:.2f} / {r['record_cpu_s']:.2f}",
                    " / ".join(f"{threads.get(k.lower(), 0):.2f}" for k in kinds),
                    spread_ms,
                    str(r.get("login", {}).get("count", 0)),
                    str(r["retried_attempts"]),
                    f"{r['lab_cpu_s']:.2f}",
                    f"{r['others_cpu_s']:.2f}",
                ]
            )
    return render_table(head, body, markdown, right=set(range(1, len(head))))


def busy_phases(results: dict[str, Any]) -> list[str]:
    """Phases during which processes other than the bench, the service, ipmitool and the
    lab took more than a tenth of the machine: their figures are pessimistic."""
    phases: dict[str, tuple[float, float]] = {}
    for service in results["service"]:
        for index, r in enumerate(service["runs"]):
            name = f"sync {service['bmc_workers']} workers #{index}"
            phases[name] = (r["others_cpu_s"], r["wall_s"])
    for key, name in (
        ("ipmitool_parallel", "ipmitool parallel"),
        ("ipmitool_sequential", "ipmitool sequential"),
    ):
        cpu = results[key]["cpu"]
        phases[name] = (cpu["others_s"], cpu["wall_s"])
    return contention(phases, results["machine"]["cores"])


def results_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lab = results["lab"]
    par, seq = results["ipmitool_parallel"], results["ipmitool_sequential"]
    service = default_run(results)
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    # The lab's process tree: one serving process, or serving workers and a supervisor.
    workers = lab["processes"] - 1
    serving = f"{workers} serving processes and a supervisor" if workers else "one process"
    states = ", ".join(f"{k}: {v}" for k, v in service["power_states_after"].items())
    lines = [
        *results_head(RESULTS_BEGIN, f"Power sync: run of {results['date']}", results),
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}; Python {m['python']}, {packages}, ipmitool {m['ipmitool']}. "
        f"Load average when the run began: {m['loadavg_at_start']:.2f}, at its end: "
        f"{m['loadavg_at_end']:.2f}.",
        f"- Lab: `provisioner-lab up --nodes {lab['nodes']} --base-port {lab['base_port']} "
        f"--password ... --per-process {lab['per_process']}` ({serving}) "
        f'on 127.0.0.1, on the same cores as everything else; "{lab["up"]}".',
        f"- Enrollment: the lab's manifest to `POST /api/v1/racks/import` of `provisioner "
        f"serve` ({results['enroll']['import_s']} s), with inspection on enrollment, the "
        "reconciler and the periodic power sync switched off.",
        f"- Service sync: a fresh Python process per row group runs `create_app()` on a copy "
        f"of that database, enters its lifespan and awaits "
        f"`app.state.services.power_sync.sync_once()` "
        f"once on first contact (no session yet: a login per BMC) and "
        f"{len(service['runs']) - 1} times warm (cached sessions), on {service['event_loop']} "
        "as uvicorn would. BMC workers: the service's default of "
        f"{service['bmc_workers']} (PROVISIONER_BMC_WORKERS unset), plus any extra rows as "
        f"labelled; timeout {service['bmc_timeout_s']:g} s, {service['bmc_retries']} retries. "
        "Wall time and the process's CPU seconds (`time.process_time()`, all its threads) "
        f"are taken around each `sync_once()`. Power states in the database after: {states}.",
        f"- ipmitool: `ipmitool -I lanplus -H 127.0.0.1 -p PORT -U admin -P ... power status`, "
        f"one process per BMC: {par['bmcs']:,} BMCs with {par['parallel']} at a time "
        f"(threads forking ipmitool), and {seq['bmcs']:,} one after another"
        + ("" if seq["bmcs"] == lab["nodes"] else ", scaled to 1,000 in the table")
        + ". CPU is the ipmitool processes' (RUSAGE_CHILDREN).",
        "- x ipmitool -P16: the time of ipmitool with 16 parallel processes over the same "
        "BMCs divided by the row's time.",
    ]
    if noisy := busy_phases(results):
        lines.append(
            "- **Warning: other processes were busy during this run** (their share of the "
            f"machine: {', '.join(noisy)}); times are pessimistic. Rerun on a quiet machine."
        )
    failures = par["failure_examples"] + seq["failure_examples"]
    if failures:
        lines.append(f"- ipmitool failures, first few: {'; '.join(failures)}.")
    lines += [
        "",
        *figures_table(results, markdown=True),
        "",
        *targets_table(results, markdown=True),
        "",
        "Where each sync's time went (`_due` loads the rows, the polls are the gather over "
        "`BmcPool.call`, `_record` writes the results; per BMC is a worker thread's time "
        "for one BMC, login included; retries are pool attempts that failed and were "
        "repeated; lab and others are the CPU seconds of the lab's processes and of the "
        "rest of the machine during the sync):",
        "",
        *breakdown_table(results, markdown=True),
        "",
        f"Raw figures: `{results['raw']}` (not committed).",
        "",
        RESULTS_END,
    ]
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--protocol",
        choices=("ipmi", "redfish"),
        default="ipmi",
        help="the lab's BMCs and the reference tool: IPMI and ipmitool (default), or "
        "Redfish over HTTPS and the DMTF's redfishtool; each has its own RESULTS.md block",
    )
    add("--nodes", type=int, default=1000, help="lab BMCs (default 1,000)")
    add("--base-port", type=int, help="first UDP port (default: a free range from 20000)")
    add("--per-process", type=int, default=250, help="BMCs per lab process (default 250)")
    add("--warm-syncs", type=int, default=3, help="warm syncs after the first (default 3)")
    add(
        "--extra-workers",
        type=int,
        nargs="*",
        default=[128],
        metavar="N",
        help="extra rows with PROVISIONER_BMC_WORKERS=N (default: 128; none: no extra rows)",
    )
    add(
        "--reference-parallel",
        "--ipmitool-parallel",
        type=int,
        default=16,
        help="processes of the reference tool (ipmitool, redfishtool) at a time (default 16)",
    )
    add(
        "--redfishtool-auth",
        choices=("Basic", "Session"),
        default="Basic",
        help="redfishtool's -A: Basic (its default: no login request) or Session",
    )
    add(
        "--sequential-bmcs",
        type=int,
        help="BMCs for the sequential ipmitool run (default: all; fewer are scaled to 1,000)",
    )
    add(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each timed phase, wait up to this long for other processes to go "
        f"quiet (under {QUIET_CORES} cores busy); default 0: do not wait",
    )
    add(
        "--profile-dir",
        type=Path,
        help="sample the default sync process with py-spy (raw collapsed stacks) into here",
    )
    add("--out", type=Path, default=BENCH_DIR / "out", help="raw JSON directory")
    add("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    add(
        "--no-write-results",
        dest="write_results",
        action="store_false",
        help="leave bench/RESULTS.md alone (trial runs)",
    )
    add("--keep", action="store_true", help="keep the work directory (lab log, databases)")
    add(
        "--from-json",
        type=Path,
        metavar="RAW",
        help="measure nothing: print the tables of an earlier run's raw JSON and, unless "
        "--no-write-results, write its block into RESULTS.md again",
    )
    # The sync process: this script started again by itself (see sync_process).
    add("--sync-child", help=argparse.SUPPRESS)
    add("--workers", type=int, help=argparse.SUPPRESS)
    add("--lab-pids", default="", help=argparse.SUPPRESS)
    add("--wait-go", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sequential_bmcs is None or args.sequential_bmcs > args.nodes:
        args.sequential_bmcs = args.nodes
    if args.nodes < 1 or args.sequential_bmcs < 1:
        parser.error("--nodes and --sequential-bmcs must be at least 1")
    return args


@dataclass(frozen=True)
class Report:
    """One protocol's figures: its targets, its tables, its RESULTS.md block."""

    measured: Callable[[dict[str, Any]], dict[str, float | None]]
    tables: Callable[[dict[str, Any], bool], list[list[str]]]
    busy: Callable[[dict[str, Any]], list[str]]
    markdown: Callable[[dict[str, Any]], str]
    begin: str
    end: str


IPMI_REPORT = Report(
    measured,
    lambda r, md: [figures_table(r, md), targets_table(r, md), breakdown_table(r, md)],
    busy_phases,
    results_markdown,
    RESULTS_BEGIN,
    RESULTS_END,
)


def main(argv: list[str] | None = None) -> int:
    import power_sync_redfish as redfish

    args = parse_args(argv)
    if args.sync_child:
        return sync_child(args)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        raw = args.from_json.resolve()
    else:
        missing = redfish.missing_tool() if args.protocol == "redfish" else None
        if args.protocol == "ipmi" and shutil.which("ipmitool") is None:
            missing = "ipmitool is not installed (Debian: apt-get install ipmitool)"
        if missing:
            progress(missing)
            return 2
        results = run(args)
    # Raw figures of runs before --protocol existed are IPMI ones.
    report = redfish.REPORT if results.get("protocol") == "redfish" else IPMI_REPORT
    if not args.from_json:
        results["targets"] = report.measured(results)
        raw = save_raw(results, args.out, f"power-sync-{args.protocol}")
    print("\n\n".join("\n".join(table) for table in report.tables(results, False)))
    if noisy := report.busy(results):
        print(f"\nwarning: other processes were busy ({', '.join(noisy)}): rerun when quiet")
    print(f"\nraw figures: {raw}")
    if args.write_results:
        write_results(args.results, report.markdown(results), report.begin, report.end)
        print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    # One module, not two: power_sync_redfish imports this one by name.
    sys.modules.setdefault("power_sync", sys.modules[__name__])
    sys.exit(main())
