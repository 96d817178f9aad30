"""Power-sync benchmark: one full power-state sync of 1,000 lab BMCs by the service,
beside a command-line tool over the same BMCs in the same run: IPMI BMCs and ipmitool
(the default), or Redfish BMCs and the DMTF's redfishtool (`--protocol redfish`).

Run by hand (not in CI), from the checkout, with the project's venv:

    .venv/bin/python bench/power_sync.py                 # full size; rewrites its block
    .venv/bin/python bench/power_sync.py --protocol redfish          # the Redfish block
    .venv/bin/python bench/power_sync.py --nodes 200 --no-write-results

The lab (`provisioner-lab up`) serves the BMCs from its own processes on 127.0.0.1. The
service enrolls them through its API (`provisioner serve`, then POST /api/v1/racks/import
of the lab's manifest); the sync itself is then run in a separate, fresh Python process
by the service's own code: `create_app()`, its lifespan, and
`app.state.services.power_sync.sync_once()`, as its background loop would call it
(power_sync_child.py). What differs by protocol, the reference tool and the report, is
in power_sync_ipmi.py and power_sync_redfish.py. See bench/README.md for what is
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    NO_BACKGROUND_WORK,
    Meter,
    Process,
    add_output_options,
    add_wait_quiet,
    admin_token,
    api_client,
    busy_warning,
    clean_env,
    code_state,
    command_line,
    contention,
    cpu_seconds,
    expect,
    now_utc,
    progress,
    provisioner_serve,
    publish,
    py_spy,
    save_raw,
    start_lab,
    work_dir,
)
from power_sync_child import spread

USERNAME = "admin"
# One shared lab password: the ipmitool command lines then differ only by port.
PASSWORD = "bench-power-sync"
# The bench starts its processes with clean_env(**SERVICE_ENV): every PROVISIONER_*
# variable of the caller's environment dropped (a stray PROVISIONER_BMC_WORKERS would
# change what is measured), the sync triggered by the bench alone, and no inspection on
# enrollment (1,000 of them would compete for the same BMCs).
SERVICE_ENV = NO_BACKGROUND_WORK


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


# ---- the reference tools --------------------------------------------------------------


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
    # The default row ``--rounds`` times (a fresh process each), then the extra rows.
    configs: list[tuple[int | None, int]] = [(None, n) for n in range(1, args.rounds + 1)]
    configs += [(workers, 1) for workers in args.extra_workers]
    runs: list[dict[str, Any]] = []
    for workers, round_no in configs:
        label = f"default-{round_no}" if workers is None else f"{workers}-{len(runs)}"
        data_dir = copy_data_dir(enrolled, work / f"sync-{label}")
        if args.wait_quiet > 0:
            lab.meter().wait_for_quiet(args.wait_quiet)
        profile = None
        if args.profile_dir is not None and workers is None and round_no == 1:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            profile = args.profile_dir / f"power-sync-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.txt"
        result = sync_process(data_dir, workers, args.warm_syncs, lab, profile)
        if profile is not None:
            result["profile"] = str(profile)
        if args.rounds > 1 and workers is None:
            result["round"] = round_no
        first, warm = result["runs"][0], result["runs"][1:]
        progress(
            f"service, {result['bmc_workers']} workers: first contact {first['wall_s']} s "
            f"(CPU {first['cpu_s']} s, failed {first['failed']}); warm "
            + ", ".join(f"{r['wall_s']} s" for r in warm)
        )
        runs.append(result)
    return runs


def run(args: argparse.Namespace, protocol: Protocol) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": now_utc(),
        "command": command_line(__file__),
        "protocol": args.protocol,
        "machine": protocol.machine_info(),
        "code": code_state(("provisioner", "lab", "migrations")),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    with work_dir("provisioner-bench-power-", args.keep) as work, running_lab(args, work) as lab:
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
        results.update(protocol.reference(args, ports, meter))
    results["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    return results


# ---- reporting ------------------------------------------------------------------------


def default_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The sync processes with the service's default settings (``--rounds`` of them)."""
    return [r for r in results["service"] if r["bmc_workers_is_default"]]


def default_run(results: dict[str, Any]) -> dict[str, Any]:
    return default_runs(results)[0]


def first_contact(results: dict[str, Any]) -> float:
    """The first-contact sync of the default settings: the median over the rounds."""
    return float(statistics.median(r["runs"][0]["wall_s"] for r in default_runs(results)))


def warm_syncs(results: dict[str, Any]) -> list[float]:
    return [w["wall_s"] for r in default_runs(results) for w in r["runs"][1:]]


def warm_median(results: dict[str, Any]) -> float | None:
    """The warm syncs of the default settings: the median over every round's."""
    warm = warm_syncs(results)
    return statistics.median(warm) if warm else None


def rounds_note(results: dict[str, Any]) -> str:
    rounds = len(default_runs(results))
    if rounds == 1:
        return ""
    return (
        f" The default settings ran {rounds} rounds, each a fresh process on a fresh copy "
        "of the database; the targets take the median of their first contacts and of all "
        "their warm syncs."
    )


def per_1000(seconds: float, bmcs: int) -> str:
    return f"{seconds * 1000 / bmcs:.2f}"


def measured_figures(results: dict[str, Any], reference: str, ratio: str) -> dict[str, Any]:
    """The figures the targets check, both protocols alike: first contact, warm, the
    reference tool's ``reference`` run over the first contact as ``ratio``, failures. The
    ratio is taken on the same BMCs: a reference run on fewer is scaled to the lab's
    count first (it is not by default)."""
    first = first_contact(results)
    ref = results[reference]
    scale = results["lab"]["nodes"] / ref["bmcs"]
    return {
        "first_contact_s": first,
        "warm_s": warm_median(results),
        ratio: round(ref["wall_s"] * scale / first, 1),
        "failures": sum(r["failed"] for s in results["service"] for r in s["runs"]),
    }


def service_rows(
    results: dict[str, Any],
    reference_s: float,
    extra: Callable[[dict[str, Any]], list[str]] = lambda r: [],
) -> list[list[str]]:
    """The figures table's row of each service sync: work, BMCs, wall, per 1,000, CPU,
    failed, ``extra``'s cells, and how many times faster than ``reference_s``."""
    from power_sync_child import service_label

    rows = []
    for service in results["service"]:
        label = service_label(service)
        for index, r in enumerate(service["runs"]):
            kind = "first contact" if index == 0 else f"warm #{index}"
            rows.append(
                [
                    f"service sync, {label}, {kind}",
                    f"{r['polled']:,}",
                    f"{r['wall_s']:.2f}",
                    per_1000(r["wall_s"], results["lab"]["nodes"]),
                    f"{r['cpu_s']:.2f}",
                    str(r["failed"]),
                    *extra(r),
                    f"{reference_s / r['wall_s']:.1f}x",
                ]
            )
    return rows


def target_labels(results: dict[str, Any], first: str, ratio: str, vs: str) -> dict[str, str]:
    """The targets table's goals: ``first`` names the BMCs of the first-contact sync,
    ``vs`` the reference tool of the ``ratio`` key."""
    rounds = len(default_runs(results))
    first_of = f"median of {rounds} rounds, " if rounds > 1 else ""
    workers = default_run(results)["bmc_workers"]
    return {
        "first_contact_s": (
            f"full sync of {results['lab']['nodes']:,} {first}, first contact ({first_of}"
            f"{workers} workers)"
        ),
        "warm_s": f"full sync, warm (median of {len(warm_syncs(results))})",
        ratio: f"first-contact sync vs {vs}, 16 parallel processes",
        "failures": "failed polls, every service sync of the run",
    }


def sync_phases(results: dict[str, Any], references: dict[str, str]) -> list[str]:
    """Phases during which processes other than the bench, the service, the reference
    tool and the lab took more than a tenth of the machine: their figures are
    pessimistic. ``references``: the reference runs' keys and names."""
    from power_sync_child import service_label

    phases: dict[str, tuple[float, float]] = {}
    for service in results["service"]:
        for index, r in enumerate(service["runs"]):
            phases[f"sync {service_label(service)} #{index}"] = (r["others_cpu_s"], r["wall_s"])
    for key, name in references.items():
        cpu = results[key]["cpu"]
        phases[name] = (cpu["others_s"], cpu["wall_s"])
    return contention(phases, results["machine"]["cores"])


def machine_line(results: dict[str, Any], python: str, tools: str) -> str:
    """RESULTS.md's machine line; ``python``: what follows Python's version, ``tools``:
    the reference tool's version."""
    m = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return (
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}; Python {m['python']}{python}, {packages}, {tools}. "
        f"Load average when the run began: {m['loadavg_at_start']:.2f}, at its end: "
        f"{m['loadavg_at_end']:.2f}."
    )


def lab_serving(results: dict[str, Any]) -> str:
    """The lab's process tree: one serving process, or serving workers and a supervisor."""
    workers = results["lab"]["processes"] - 1
    return f"{workers} serving processes and a supervisor" if workers else "one process"


def power_states(results: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in default_run(results)["power_states_after"].items())


def report_tail(
    results: dict[str, Any], tables: list[list[str]], breakdown_of: str, end: str
) -> list[str]:
    """The end of a RESULTS.md block: the figures and targets tables, the breakdown
    (``tables``' last) after its explanation, whose middle part ``breakdown_of`` is the
    protocol's, the raw figures' file and the block's ``end`` marker."""
    *shown, breakdown = tables
    lines = [line for table in shown for line in ("", *table)]
    return [
        *lines,
        "",
        "Where each sync's time went (`_due` loads the rows, the polls are the gather over "
        "`BmcPool.call`, `_record` writes the results; per BMC is a worker thread's time "
        f"for one BMC, login included; {breakdown_of}retries are pool attempts that failed "
        "and were repeated; lab and others are the CPU seconds of the lab's processes and "
        "of the rest of the machine during the sync):",
        "",
        *breakdown,
        "",
        f"Raw figures: `{results['raw']}` (not committed).",
        "",
        end,
    ]


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
        "--rounds",
        type=int,
        default=1,
        help="sync processes with the default settings, each from first contact on; the "
        "targets take the median of their first contacts and of all their warm syncs "
        "(default 1)",
    )
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
    add_wait_quiet(parser)
    add(
        "--profile-dir",
        type=Path,
        help="sample the default sync process with py-spy (raw collapsed stacks) into here",
    )
    add_output_options(parser, keep="lab log, databases")
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
class Protocol:
    """What differs between the IPMI and the Redfish run: the reference tool, the
    targets, the tables and the RESULTS.md block (power_sync_ipmi.py,
    power_sync_redfish.py). The lab, the enrollment and the service's sync are shared."""

    machine_info: Callable[[], dict[str, Any]]
    missing_tool: Callable[[], str | None]
    reference: Callable[[argparse.Namespace, list[int], Meter], dict[str, Any]]
    measured: Callable[[dict[str, Any]], dict[str, float | None]]
    tables: Callable[[dict[str, Any], bool], list[list[str]]]
    busy: Callable[[dict[str, Any]], list[str]]
    markdown: Callable[[dict[str, Any]], str]
    begin: str
    end: str


def protocol_of(name: str) -> Protocol:
    # Imported here: both import this module, for what the runs share.
    import power_sync_ipmi
    import power_sync_redfish

    return power_sync_redfish.PROTOCOL if name == "redfish" else power_sync_ipmi.PROTOCOL


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sync_child:
        from power_sync_child import sync_child

        return sync_child(args)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        raw = args.from_json.resolve()
        # Raw figures of runs before --protocol existed are IPMI ones.
        report = protocol_of(results.get("protocol", "ipmi"))
    else:
        report = protocol_of(args.protocol)
        if missing := report.missing_tool():
            progress(missing)
            return 2
        results = run(args, report)
        results["targets"] = report.measured(results)
        raw = save_raw(results, args.out, f"power-sync-{args.protocol}")
    print("\n\n".join("\n".join(table) for table in report.tables(results, False)))
    if noisy := report.busy(results):
        print(busy_warning(noisy))
    print(f"\nraw figures: {raw}")
    publish(args, lambda: report.markdown(results), report.begin, report.end)
    return 0


if __name__ == "__main__":
    # One module, not two: power_sync_ipmi and power_sync_redfish import it by name.
    sys.modules.setdefault("power_sync", sys.modules[__name__])
    sys.exit(main())
