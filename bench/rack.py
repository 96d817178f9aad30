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
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from common import (
    IPXE,
    IRONIC_HEADERS,
    IRONIC_VENV,
    Meter,
    Process,
    add_output_options,
    admin_token,
    api_client,
    clean_env,
    code_state,
    command_line,
    expect,
    export_revision,
    free_port,
    has_fake_driver,
    ironic_config,
    ironic_version,
    machine,
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
    start_lab,
    wait_for,
    work_dir,
)

from provisioner.cli.demo import free_udp_block

RESULTS_BEGIN = "<!-- bench/rack.py writes from here -->"
RESULTS_END = "<!-- bench/rack.py writes up to here -->"
IMAGE = "bench-tiny"
ROLES = ("compute", "storage")

# The issue's targets: wall seconds by size, and for every size the service's average
# cores and peak resident memory.
WALL_TARGETS = {100: 60.0, 500: 240.0}
CORES_TARGET = 1.0
RSS_TARGET_MIB = 300.0
# The issue's Ironic figures, quoted when Ironic is not run.
ISSUE_IRONIC = {"version": "39", "nodes": 100, "verify_s": 13.0, "power_on_s": 19.0}


# ---- the lab ----------------------------------------------------------------------------


def lab_options(args: argparse.Namespace, boot: tuple[int, str] | None) -> list[str]:
    options = ["--per-process", str(args.per_process), "--install-time", str(args.install_time)]
    options += ["--reboot-delay", str(args.reboot_delay)]
    if boot:
        options += ["--tftp", f"127.0.0.1:{boot[0]}", "--ipxe-url", boot[1]]
    return options


# ---- the service ------------------------------------------------------------------------


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
    env = clean_env(
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

    def __init__(self, proc: Process, interval: float = 0.2) -> None:
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


def rack_run(
    nodes: int, args: argparse.Namespace, work: Path, pythonpath: str | None
) -> dict[str, Any]:
    work.mkdir(parents=True)
    run = prepare(work, args, pythonpath)
    env, url = run["env"], run["url"]
    token = admin_token(env, work)
    out: dict[str, Any] = {"nodes": nodes, "settings": service_settings(args)}
    svc = provisioner_serve("service", work / "service.log", env, run["port"])
    with running(svc) as procs:
        api = api_client(url, {"Authorization": f"Bearer {token}"})
        catalogue(api)
        boot = (run["tftp_port"], f"{url}/boot/bootstrap.ipxe")
        lab, manifest, _ = start_lab(
            nodes, work, env, free_udp_block(nodes), lab_options(args, boot)
        )
        procs.append(lab)
        body = with_roles(manifest)
        out["memory_before"] = svc.memory_mib()
        time.sleep(1)  # let the lab's start-up CPU settle out of the figures
        sampler = Sampler(svc)
        sampler.start()
        profile = args.profile_dir / f"rack-{nodes}.txt" if args.profile_dir else None
        spy = py_spy(svc.pid, profile, 100, "--nonblocking") if profile else None
        # The service's and the lab's CPU with that of the children they reaped.
        meter = Meter(
            service=lambda: svc.cpu_seconds(reaped=True), lab=lambda: lab.cpu_seconds(reaped=True)
        )
        start_cpu = meter.snapshot()
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
                    f"{svc.cpu_seconds(reaped=True) - start_cpu['service']:.1f} CPU-s, "
                    f"lab {lab.cpu_seconds(reaped=True) - start_cpu['lab']:.1f}"
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
        cpu = meter.since(start_cpu)
        svc_cpu, lab_cpu = cpu["service_s"], cpu["lab_s"]
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
            bench_cpu_s=round(cpu["bench_s"], 1),
            others_cpu_s=round(cpu["others_s"], 1),
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
            out["profile"] = {"file": str(profile), **profile_summary(profile)}
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
    port = free_port()
    conf = ironic_config(work, port)
    extra = work / "ironic-ipmi.conf"
    extra.write_text(IRONIC_IPMI_CONF)
    bin_dir = IRONIC_VENV / "bin"
    env = clean_env()
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    out: dict[str, Any] = {"version": ironic_version(), "nodes": nodes}
    with running() as procs:
        options = lab_options(args, None)
        lab, manifest, _ = start_lab(nodes, work, env, free_udp_block(nodes), options)
        procs.append(lab)
        argv: list[str | Path] = [bin_dir / "ironic", "--config-file", conf, "--config-file", extra]
        ironic = Process("ironic", argv, work / "ironic.out", env=env)
        procs.append(ironic)
        ironic.start()
        client = api_client(f"http://127.0.0.1:{port}", IRONIC_HEADERS)
        wait_for("ironic ready", lambda: has_fake_driver(client), procs, 180)
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
            meter = Meter(
                ironic=lambda: ironic.cpu_seconds(reaped=True),
                lab=lambda: lab.cpu_seconds(reaped=True),
            )
            start_cpu, load0 = meter.snapshot(), os.getloadavg()[0]
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
            cpu = meter.since(start_cpu)
            out[name] = {
                "wall_s": round(end - start, 1),
                "requests_s": round(sent, 1),
                "ironic_cpu_s": round(cpu["ironic_s"], 1),
                "lab_cpu_s": round(cpu["lab_s"], 1),
                "others_cpu_s": round(cpu["others_s"], 1),
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
    body: list[list[str]] = []
    for r in results["runs"]:
        failures = len(r["not_active"]) + len(r["breakdown"].get("went_failed", []))
        body.append(
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
    lines += render_table(head, body, markdown, right=set())
    lines.append("")
    head = ["machines", "target", "measured", "limit", "verdict"]
    body = []
    for r in results["runs"]:
        for what, measured, limit, ok in verdicts(r):
            body.append(
                [
                    f"{r['nodes']:,}",
                    what,
                    measured,
                    limit,
                    "pass" if ok else "**FAIL**",
                ]
            )
    lines += render_table(head, body, markdown, right=set())
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
    body = []
    if ir:
        v, p = ir["verify"], ir["power_on"]
        fails = len(v["failed"]) + len(p["failed"])
        body.append(
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
    q = ISSUE_IRONIC
    body.append(
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
    lines += render_table(head, body, markdown, right=set())
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
    ir = results.get("ironic")
    title = f"Rack, manifest import to active: run of {results['date']}"
    lines = [
        *results_head(RESULTS_BEGIN, title, results),
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
    add_output_options(parser, keep="logs, databases")
    add(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: print and write the block from an earlier run's raw JSON",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": now_utc(),
        "command": command_line(__file__),
        "machine": machine(("uvicorn", "fastapi", "sqlalchemy", "pyghmi", "httpx")),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": [],
    }
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    with work_dir("provisioner-rack-", args.keep) as work:
        commit = export_revision(args.rev, work / "source") if args.rev else None
        paths = ("provisioner", "pxe", "lab", "migrations", "pyproject.toml")
        results["code"] = code_state(paths, args.rev, commit)
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
    publish(args, lambda: results_markdown(results), RESULTS_BEGIN, RESULTS_END)
    ok = all(passed for r in results["runs"] for *_, passed in verdicts(r))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
