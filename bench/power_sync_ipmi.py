"""The IPMI run of the power-sync benchmark (`bench/power_sync.py`, the default
`--protocol ipmi`): ipmitool as the reference, and the run's targets, tables and
RESULTS.md block. The lab, the enrollment and the service's sync are power_sync.py's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from typing import Any

import power_sync as ps
import power_sync_child as child
from common import (
    Meter,
    contention,
    judge,
    machine,
    progress,
    render_table,
    results_head,
    tool_version,
)

RESULTS_BEGIN = "<!-- bench/power_sync.py writes from here -->"
RESULTS_END = "<!-- bench/power_sync.py writes up to here -->"

# The targets, each checked against one measured figure.
TARGETS: dict[str, tuple[str, float, str]] = {
    "first_contact_s": ("<=", 3.0, "s"),
    "warm_s": ("<=", 2.0, "s"),
    "x_faster_than_ipmitool_16": (">=", 10.0, "x"),
    "failures": ("<=", 0, ""),
}


def missing_tool() -> str | None:
    if shutil.which("ipmitool") is not None:
        return None
    return "ipmitool is not installed (Debian: apt-get install ipmitool)"


def machine_info() -> dict[str, Any]:
    return {
        **machine(("pyghmi", "sqlalchemy", "uvloop")),
        "ipmitool": tool_version(["ipmitool", "-V"], "ipmitool version "),
    }


# ---- ipmitool -------------------------------------------------------------------------


def ipmitool_status(port: int) -> tuple[bool, float, str]:
    argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port)]
    argv += ["-U", ps.USERNAME, "-P", ps.PASSWORD, "power", "status"]
    t0 = time.perf_counter()
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - t0, "no exit within 60 s"
    seconds = time.perf_counter() - t0
    if run.returncode == 0 and run.stdout.startswith("Chassis Power is "):
        return True, seconds, ""
    return False, seconds, (run.stderr or run.stdout).strip()[-200:]


def ipmitool_runs(args: argparse.Namespace, ports: list[int], meter: Meter) -> dict[str, Any]:
    """The IPMI run's reference: ipmitool over every BMC, 16 at a time, then one after
    another over ``--sequential-bmcs`` of them."""
    progress(f"ipmitool: {len(ports)} BMCs, {args.reference_parallel} in parallel")
    parallel = ps.tool_run(ipmitool_status, ports, args.reference_parallel, meter, args.wait_quiet)
    progress(f"  {parallel['wall_s']} s, {parallel['failed']} failed")
    sequential_ports = ports[: args.sequential_bmcs]
    progress(f"ipmitool: {len(sequential_ports)} BMCs, one after another")
    sequential = ps.tool_run(ipmitool_status, sequential_ports, 1, meter, args.wait_quiet)
    progress(f"  {sequential['wall_s']} s, {sequential['failed']} failed")
    return {"ipmitool_parallel": parallel, "ipmitool_sequential": sequential}


# ---- reporting ------------------------------------------------------------------------


def measured(results: dict[str, Any]) -> dict[str, float | None]:
    first = ps.first_contact(results)
    reference = results["ipmitool_parallel"]
    # The ratio is taken on the same BMCs; were the reference run on fewer, it would be
    # scaled to 1,000 first (it is not by default).
    scale = results["lab"]["nodes"] / reference["bmcs"]
    return {
        "first_contact_s": first,
        "warm_s": ps.warm_median(results),
        "x_faster_than_ipmitool_16": round(reference["wall_s"] * scale / first, 1),
        "failures": sum(r["failed"] for s in results["service"] for r in s["runs"]),
    }


def verdict(key: str, value: float | None) -> tuple[str, str]:
    op, limit, unit = TARGETS[key]
    text = f"{op} {limit:g}{' ' + unit if unit and unit != 'x' else unit}"
    return text, judge(op, limit, value)


def figures_table(results: dict[str, Any], markdown: bool) -> list[str]:
    nodes = results["lab"]["nodes"]
    par, seq = results["ipmitool_parallel"], results["ipmitool_sequential"]
    reference = par["wall_s"] * nodes / par["bmcs"]
    head = ["Work", "BMCs", "Wall s", "s per 1,000", "CPU s", "Failed", "x ipmitool -P16"]
    body = []
    for service in results["service"]:
        label = child.service_label(service)
        for index, r in enumerate(service["runs"]):
            kind = "first contact" if index == 0 else f"warm #{index}"
            body.append(
                [
                    f"service sync, {label}, {kind}",
                    f"{r['polled']:,}",
                    f"{r['wall_s']:.2f}",
                    ps.per_1000(r["wall_s"], nodes),
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
                ps.per_1000(ref["wall_s"], ref["bmcs"])
                + ("" if ref["bmcs"] == nodes else " (extrapolated)"),
                f"{ref['cpu_s']:.2f}",
                str(ref["failed"]),
                f"{reference / (ref['wall_s'] * nodes / ref['bmcs']):.2f}x",
            ]
        )
    return render_table(head, body, markdown, right={1, 2, 3, 4, 5, 6})


def targets_table(results: dict[str, Any], markdown: bool) -> list[str]:
    values = measured(results)
    workers = ps.default_run(results)["bmc_workers"]
    rounds = len(ps.default_runs(results))
    first_of = f"median of {rounds} rounds, " if rounds > 1 else ""
    labels = {
        "first_contact_s": (
            f"full sync of {results['lab']['nodes']:,} BMCs, first contact ({first_of}"
            f"{workers} workers)"
        ),
        "warm_s": f"full sync, warm (median of {len(ps.warm_syncs(results))})",
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


def busy_phases(results: dict[str, Any]) -> list[str]:
    """Phases during which processes other than the bench, the service, ipmitool and the
    lab took more than a tenth of the machine: their figures are pessimistic."""
    phases: dict[str, tuple[float, float]] = {}
    for service in results["service"]:
        for index, r in enumerate(service["runs"]):
            name = f"sync {child.service_label(service)} #{index}"
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
    service = ps.default_run(results)
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
        f"are taken around each `sync_once()`. Power states in the database after: {states}."
        + ps.rounds_note(results),
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
        *child.breakdown_table(results, markdown=True),
        "",
        f"Raw figures: `{results['raw']}` (not committed).",
        "",
        RESULTS_END,
    ]
    return "\n".join(lines)


PROTOCOL = ps.Protocol(
    machine_info,
    missing_tool,
    ipmitool_runs,
    measured,
    lambda r, md: [figures_table(r, md), targets_table(r, md), child.breakdown_table(r, md)],
    busy_phases,
    results_markdown,
    RESULTS_BEGIN,
    RESULTS_END,
)
