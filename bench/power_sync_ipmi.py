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
    busy_note,
    machine,
    progress,
    render_table,
    results_head,
    tool_version,
    verdict_table,
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
    return ps.measured_figures(results, "ipmitool_parallel", "x_faster_than_ipmitool_16")


def figures_table(results: dict[str, Any], markdown: bool) -> list[str]:
    nodes = results["lab"]["nodes"]
    par, seq = results["ipmitool_parallel"], results["ipmitool_sequential"]
    reference = par["wall_s"] * nodes / par["bmcs"]
    head = ["Work", "BMCs", "Wall s", "s per 1,000", "CPU s", "Failed", "x ipmitool -P16"]
    body = ps.service_rows(results, reference)
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
    labels = ps.target_labels(results, "BMCs", "x_faster_than_ipmitool_16", "ipmitool")
    return verdict_table(TARGETS, measured(results), labels, markdown)


def tables(results: dict[str, Any], markdown: bool) -> list[list[str]]:
    return [
        figures_table(results, markdown),
        targets_table(results, markdown),
        child.breakdown_table(results, markdown),
    ]


def busy_phases(results: dict[str, Any]) -> list[str]:
    references = {
        "ipmitool_parallel": "ipmitool parallel",
        "ipmitool_sequential": "ipmitool sequential",
    }
    return ps.sync_phases(results, references)


def results_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lab = results["lab"]
    par, seq = results["ipmitool_parallel"], results["ipmitool_sequential"]
    service = ps.default_run(results)
    lines = [
        *results_head(RESULTS_BEGIN, f"Power sync: run of {results['date']}", results),
        ps.machine_line(results, "", f"ipmitool {m['ipmitool']}"),
        f"- Lab: `provisioner-lab up --nodes {lab['nodes']} --base-port {lab['base_port']} "
        f"--password ... --per-process {lab['per_process']}` ({ps.lab_serving(results)}) "
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
        f"are taken around each `sync_once()`. Power states in the database after: "
        f"{ps.power_states(results)}." + ps.rounds_note(results),
        f"- ipmitool: `ipmitool -I lanplus -H 127.0.0.1 -p PORT -U admin -P ... power status`, "
        f"one process per BMC: {par['bmcs']:,} BMCs with {par['parallel']} at a time "
        f"(threads forking ipmitool), and {seq['bmcs']:,} one after another"
        + ("" if seq["bmcs"] == lab["nodes"] else ", scaled to 1,000 in the table")
        + ". CPU is the ipmitool processes' (RUSAGE_CHILDREN).",
        "- x ipmitool -P16: the time of ipmitool with 16 parallel processes over the same "
        "BMCs divided by the row's time.",
    ]
    if noisy := busy_phases(results):
        lines.append(busy_note(noisy))
    failures = par["failure_examples"] + seq["failure_examples"]
    if failures:
        lines.append(f"- ipmitool failures, first few: {'; '.join(failures)}.")
    lines += ps.report_tail(results, tables(results, markdown=True), "", RESULTS_END)
    return "\n".join(lines)


PROTOCOL = ps.Protocol(
    machine_info,
    missing_tool,
    ipmitool_runs,
    measured,
    tables,
    busy_phases,
    results_markdown,
    RESULTS_BEGIN,
    RESULTS_END,
)
