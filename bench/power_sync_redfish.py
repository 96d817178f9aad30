"""The Redfish run of the power-sync benchmark, `bench/power_sync.py --protocol redfish`:
the DMTF's redfishtool as the reference, and the run's targets, tables and RESULTS.md
block. The lab (with `--protocol redfish`), the enrollment and the service's sync in a
fresh process are power_sync.py's, the same for both protocols.

Not run on its own: `.venv/bin/python bench/power_sync.py --protocol redfish`.
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import time
from typing import Any

import power_sync as ps
import power_sync_child as child
from common import (
    BIN,
    Meter,
    busy_note,
    machine,
    progress,
    render_table,
    results_head,
    tool_version,
    verdict_table,
)

RESULTS_BEGIN = "<!-- bench/power_sync.py --protocol redfish writes from here -->"
RESULTS_END = "<!-- bench/power_sync.py --protocol redfish writes up to here -->"
REDFISHTOOL = BIN / "redfishtool"
# The service's storage and event loop, and the lab's HTTP; TLS on both sides is the
# standard library's ssl (its OpenSSL is recorded too), the driver's HTTP http.client.
PACKAGES = ("sqlalchemy", "uvloop", "h11")

# The targets (issue 14, part 3), each checked against one measured figure.
TARGETS: dict[str, tuple[str, float, str]] = {
    "first_contact_s": ("<=", 5.0, "s"),
    "warm_s": ("<=", 2.0, "s"),
    "x_faster_than_redfishtool_16": (">=", 10.0, "x"),
    "failures": ("<=", 0, ""),
}
POWER_STATES = ("On", "Off")


def missing_tool() -> str | None:
    if REDFISHTOOL.exists():
        return None
    return f"no {REDFISHTOOL}: install the test extra (.venv/bin/pip install -e '.[test]')"


def machine_info() -> dict[str, Any]:
    return {
        **machine(PACKAGES),
        "openssl": ssl.OPENSSL_VERSION,
        "redfishtool": tool_version([str(REDFISHTOOL), "-V"], "redfishtool Version: "),
    }


# ---- redfishtool ----------------------------------------------------------------------


def redfishtool_argv(port: int, auth: str) -> list[str]:
    """Read the one System's PowerState, as an operator would: `-S Always` for HTTPS
    (redfishtool never verifies a certificate: it passes ``verify=False`` to requests),
    `-1` for the collection's single member, `-P PowerState` for that property alone."""
    argv = [str(REDFISHTOOL), "-r", f"127.0.0.1:{port}", "-u", ps.USERNAME, "-p", ps.PASSWORD]
    return [*argv, "-S", "Always", "-A", auth, "Systems", "-1", "get", "-P", "PowerState"]


def redfishtool_status(auth: str) -> ps.StatusCall:
    def status(port: int) -> tuple[bool, float, str]:
        t0 = time.perf_counter()
        try:
            run = subprocess.run(
                redfishtool_argv(port, auth), capture_output=True, text=True, timeout=60
            )
        except subprocess.TimeoutExpired:
            return False, time.perf_counter() - t0, "no exit within 60 s"
        seconds = time.perf_counter() - t0
        try:
            state = json.loads(run.stdout).get("PowerState") if run.returncode == 0 else None
        except ValueError:
            state = None
        if state in POWER_STATES:
            return True, seconds, ""
        why = (run.stderr or run.stdout).strip()[-200:] or f"exit status {run.returncode}"
        return False, seconds, why

    return status


def redfishtool_runs(args: argparse.Namespace, ports: list[int], meter: Meter) -> dict[str, Any]:
    """The Redfish run's reference: redfishtool over every BMC, ``--reference-parallel``
    processes at a time (one process per BMC, as a script looping over a rack would)."""
    parallel = args.reference_parallel
    progress(f"redfishtool: {len(ports)} BMCs, {parallel} in parallel, -A {args.redfishtool_auth}")
    status = redfishtool_status(args.redfishtool_auth)
    out = ps.tool_run(status, ports, parallel, meter, args.wait_quiet)
    out["auth"] = args.redfishtool_auth
    progress(f"  {out['wall_s']} s, {out['failed']} failed")
    return {"redfishtool_parallel": out}


# ---- reporting ------------------------------------------------------------------------


def measured(results: dict[str, Any]) -> dict[str, float | None]:
    # Every redfishtool process opens its own TLS connection and authenticates: the
    # ratio is taken on the service's first contact, which does the same once per BMC.
    return ps.measured_figures(results, "redfishtool_parallel", "x_faster_than_redfishtool_16")


def figures_table(results: dict[str, Any], markdown: bool) -> list[str]:
    nodes = results["lab"]["nodes"]
    par = results["redfishtool_parallel"]
    reference = par["wall_s"] * nodes / par["bmcs"]
    head = ["Work", "BMCs", "Wall s", "s per 1,000", "CPU s", "Failed", "Pinned after"]
    head.append("x redfishtool -P16")

    def pinned(r: dict[str, Any]) -> list[str]:
        return ["" if r.get("tls_pinned_after") is None else f"{r['tls_pinned_after']:,}"]

    body = ps.service_rows(results, reference, pinned)
    body.append(
        [
            f"redfishtool -A {par['auth']}, {par['parallel']} parallel processes",
            f"{par['bmcs']:,}",
            f"{par['wall_s']:.2f}",
            ps.per_1000(par["wall_s"], par["bmcs"]),
            f"{par['cpu_s']:.2f}",
            str(par["failed"]),
            "",
            "1.00x",
        ]
    )
    return render_table(head, body, markdown, right={1, 2, 3, 4, 5, 6, 7})


def targets_table(results: dict[str, Any], markdown: bool) -> list[str]:
    labels = ps.target_labels(
        results, "Redfish BMCs", "x_faster_than_redfishtool_16", "redfishtool"
    )
    return verdict_table(TARGETS, measured(results), labels, markdown)


def breakdown_table(results: dict[str, Any], markdown: bool) -> list[str]:
    # No pyghmi I/O thread: every Redfish call runs in the BMC worker that made it.
    kinds = ("BMC workers", "DB threads (AnyIO)", "event loop (main)")
    return child.breakdown_table(results, markdown, kinds)


def tables(results: dict[str, Any], markdown: bool) -> list[list[str]]:
    return [
        figures_table(results, markdown),
        targets_table(results, markdown),
        breakdown_table(results, markdown),
    ]


def busy_phases(results: dict[str, Any]) -> list[str]:
    return ps.sync_phases(results, {"redfishtool_parallel": "redfishtool parallel"})


def results_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lab = results["lab"]
    par = results["redfishtool_parallel"]
    service = ps.default_run(results)
    serving = ps.lab_serving(results)
    pins = service["runs"][0].get("tls_pinned_after")
    pinned = (
        ""
        if pins is None
        else f" Certificates pinned in the database right after the first-contact sync: "
        f"{pins:,} of {lab['nodes']:,}."
    )
    lines = [
        *results_head(RESULTS_BEGIN, f"Power sync, Redfish: run of {results['date']}", results),
        ps.machine_line(results, f" ({m['openssl']})", f"redfishtool {m['redfishtool']}"),
        f"- Lab: `provisioner-lab up --nodes {lab['nodes']} --protocol redfish --base-port "
        f"{lab['base_port']} --password ... --per-process {lab['per_process']}` ({serving}) "
        "on 127.0.0.1, Redfish over HTTPS with the lab's self-signed certificate, generic "
        f'dialect, on the same cores as everything else; "{lab["up"]}".',
        f"- Enrollment: the lab's manifest (`bmc_driver: redfish` on every row) to `POST "
        f"/api/v1/racks/import` of `provisioner serve` ({results['enroll']['import_s']} s), "
        "with inspection on enrollment, the reconciler and the periodic power sync switched "
        "off.",
        "- Service sync: a fresh Python process per row group runs `create_app()` on a copy "
        "of that database, enters its lifespan and awaits "
        "`app.state.services.power_sync.sync_once()` once on first contact (no connection, "
        "no session, no certificate pinned yet: per BMC a TLS handshake, a session login, "
        "the System's read, and its certificate's fingerprint recorded on the node) and "
        f"{len(service['runs']) - 1} times warm (cached sessions), on "
        f"{service['event_loop']} as uvicorn would. BMC workers: the service's default of "
        f"{service['bmc_workers']} (PROVISIONER_BMC_WORKERS unset), plus any extra rows as "
        f"labelled; timeout {service['bmc_timeout_s']:g} s, {service['bmc_retries']} retries. "
        "Wall time and the process's CPU seconds (`time.process_time()`, all its threads) "
        f"are taken around each `sync_once()`. Power states in the database after: "
        f"{ps.power_states(results)}.{pinned}" + ps.rounds_note(results),
        f"- redfishtool: `redfishtool -r 127.0.0.1:PORT -u admin -p ... -S Always -A "
        f"{par['auth']} Systems -1 get -P PowerState`, one process per BMC (which reads "
        "the service root, the Systems collection and the System, and never verifies the "
        f"certificate): {par['bmcs']:,} BMCs with {par['parallel']} at a time (threads "
        "forking redfishtool). A call fails unless it exits 0 with a PowerState of On or "
        "Off. CPU is the redfishtool processes' (RUSAGE_CHILDREN).",
        "- Pinned after: the BMC rows with a certificate fingerprint in the database right "
        "after that sync (counted outside its timing). x redfishtool -P16: the time of "
        "redfishtool with 16 parallel processes over the same BMCs divided by the row's "
        "time.",
    ]
    if noisy := busy_phases(results):
        lines.append(busy_note(noisy))
    relogins = [
        f"{child.service_label(run)} warm #{index} ({r['login']['count']:,})"
        for run in ps.default_runs(results)
        for index, r in enumerate(run["runs"][1:], start=1)
        if r.get("login", {}).get("count")
    ]
    if relogins:
        lines.append(
            "- Not every warm sync was warm: the driver factory logged in again (logins in "
            f"brackets) during {'; '.join(relogins)}. Those syncs did not run over cached "
            "sessions only, and count among the warm ones all the same."
        )
    if par["failure_examples"]:
        lines.append(f"- redfishtool failures, first few: {'; '.join(par['failure_examples'])}.")
    logins = "logins are the driver factory's calls (TLS handshake and session); "
    lines += ps.report_tail(results, tables(results, markdown=True), logins, RESULTS_END)
    return "\n".join(lines)


PROTOCOL = ps.Protocol(
    machine_info,
    missing_tool,
    redfishtool_runs,
    measured,
    tables,
    busy_phases,
    results_markdown,
    RESULTS_BEGIN,
    RESULTS_END,
)
