"""API benchmark: enroll 10,000 nodes, list them, look them up; beside OpenStack Ironic.

Run by hand (not in CI), from the checkout, with the project's venv:

    .venv/bin/python bench/api.py                 # full size, Ironic too if installed
    .venv/bin/python bench/api.py --nodes 1000 --no-reference --no-write-results

Each service runs as its own process on 127.0.0.1 with a fresh data directory, so the
memory figures are the server's alone; the client (this script) shares the machine's
cores with it, which the results say. See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import (
    IRONIC_DIR,
    IRONIC_HEADERS,
    IRONIC_VENV,
    MIB,
    NO_BACKGROUND_WORK,
    Meter,
    Process,
    add_output_options,
    add_wait_quiet,
    admin_token,
    answers_200,
    api_client,
    busy_note,
    busy_warning,
    code_state,
    command_line,
    contention,
    expect,
    export_revision,
    fan_out,
    free_port,
    ironic_version,
    judge,
    latency,
    local_mac,
    machine,
    now_utc,
    progress,
    publish,
    rate,
    render_table,
    results_head,
    save_raw,
    work_dir,
    write_results,
)

RESULTS_BEGIN = "<!-- bench/api.py writes from here -->"
RESULTS_END = "<!-- bench/api.py writes up to here -->"

# 100 nodes per rack: a 1,000-row manifest is then ten racks, and a rack filter returns
# exactly one full page of 100.
NODES_PER_RACK = 100
# Import chunks: the service refuses bodies over 1 MiB; 1,000 CSV rows are ~100 KiB.
MANIFEST_ROWS = 1000
PAGE = 100
BIG_PAGE = 1000  # the largest page both services allow: "list 1,000 nodes in detail"
WARM_UP = 5
SWEEP = (1, 2, 4, 8)  # POSTs in flight tried by --clients auto
ROLES = ("compute", "storage", "gpu")
# The API alone is measured; --rev adds PYTHONPATH.
SERVER_ENV = dict(NO_BACKGROUND_WORK)

# The targets, each checked against one measured figure.
TARGETS: dict[str, tuple[str, float]] = {
    "bulk_import_nodes_per_s": (">=", 2000),
    "single_post_nodes_per_s": (">=", 400),
    "list_page_p99_ms": ("<=", 30),
    "list_filtered_rack_p99_ms": ("<=", 30),
    "list_filtered_role_p99_ms": ("<=", 30),
    "lookup_mac_p99_ms": ("<=", 10),
    "rss_after_mib": ("<=", 150),
}

# ---- the fleet ------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeNode:
    name: str
    rack: str
    role: str
    bmc_address: str
    macs: tuple[str, str]


def fleet(count: int) -> list[FakeNode]:
    nodes = []
    for i in range(count):
        rack_no, slot = divmod(i, NODES_PER_RACK)
        # 70% compute, 20% storage, 10% gpu: role filters walk many, fewer and few pages.
        role = ROLES[0] if i % 10 < 7 else ROLES[1] if i % 10 < 9 else ROLES[2]
        name = f"r{rack_no:03d}-n{slot:02d}"
        nodes.append(
            FakeNode(
                name=name,
                rack=f"r{rack_no:03d}",
                role=role,
                # Loopback addresses: nothing here should ever be contacted, and were
                # anything to try, it would reach only this machine.
                bmc_address=f"127.{1 + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}",
                macs=(local_mac(2 * i), local_mac(2 * i + 1)),
            )
        )
    return nodes


def manifest_csv(nodes: Sequence[FakeNode]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # No `u` column: the service refuses two nodes on one rack unit, and 100 nodes share
    # each rack name here.
    writer.writerow(["name", "rack", "role", "bmc_address", "bmc_username", "bmc_password", "macs"])
    for n in nodes:
        row = [n.name, n.rack, n.role, n.bmc_address, "ADMIN", "bench-pass", ";".join(n.macs)]
        writer.writerow(row)
    return out.getvalue().encode()


def node_json(n: FakeNode) -> bytes:
    return json.dumps(
        {
            "name": n.name,
            "rack": n.rack,
            "role": n.role,
            "bmc": {"address": n.bmc_address, "username": "ADMIN", "password": "bench-pass"},
            "nics": [{"mac": n.macs[0], "pxe": True}, {"mac": n.macs[1]}],
        }
    ).encode()


def ironic_node_json(n: FakeNode) -> dict[str, Any]:
    # Ironic keeps the BMC in driver_info and has no rack: it goes to `extra`.
    return {
        "name": n.name,
        "driver": "fake-hardware",
        "resource_class": n.role,
        "driver_info": {
            "ipmi_address": n.bmc_address,
            "ipmi_username": "ADMIN",
            "ipmi_password": "bench-pass",
        },
        "extra": {"rack": n.rack},
    }


# ---- figures --------------------------------------------------------------------------


# Set from --wait-quiet: how long a phase may wait for other processes to go quiet.
QUIET_WAIT_S = 0.0


@contextmanager
def meter(server: Process, into: dict[str, Any]) -> Iterator[None]:
    """CPU used during a phase by the server, by this client, and by anything else: both
    share the machine's cores, and another busy process skews every figure."""
    phase = Meter(own="client", server=server.cpu_seconds)
    if QUIET_WAIT_S > 0:
        into["quiet"] = phase.wait_for_quiet(QUIET_WAIT_S)
    start = phase.snapshot()
    yield
    into["cpu"] = phase.since(start)


def timed_get(
    client: httpx.Client, url: str, params: dict[str, Any] | None, samples: list[float]
) -> Any:
    start = time.perf_counter()
    response = client.get(url, params=params)
    samples.append(time.perf_counter() - start)
    return expect(response, 200)


def warm(client: httpx.Client, url: str, params: dict[str, Any] | None = None) -> None:
    # First calls build validators and fill SQLite's page cache; steady state is the point.
    for _ in range(WARM_UP):
        timed_get(client, url, params, [])


# ---- provisioner ----------------------------------------------------------------------

LAUNCHER = """
import sys
import uvicorn
from provisioner.app import create_app
from provisioner.settings import Settings

uvicorn.run(
    create_app(Settings(data_dir=sys.argv[1])),
    host="127.0.0.1",
    port=int(sys.argv[2]),
    log_level="warning",
    access_log=False,
)
"""


def server_env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, **SERVER_ENV, "PROVISIONER_DATA_DIR": str(data_dir)}


@dataclass
class Provisioner:
    data_dir: Path
    server: Process
    base_url: str
    headers: dict[str, str]
    client: httpx.Client
    memory_start: dict[str, float] = field(default_factory=dict)

    def new_client(self) -> httpx.Client:
        return api_client(self.base_url, self.headers)


@contextmanager
def provisioner(work: Path, label: str) -> Iterator[Provisioner]:
    data_dir = work / label
    data_dir.mkdir(parents=True)
    env = server_env(data_dir)
    headers = {"Authorization": f"Bearer {admin_token(env, data_dir)}"}
    port = free_port()
    argv = [sys.executable, "-c", LAUNCHER, str(data_dir), str(port)]
    # Its working directory is the data directory, not the checkout: `python -c` puts it
    # first on the import path, which would shadow --rev.
    ready = answers_200(port, "/readyz")
    server = Process(label, argv, data_dir / "server.log", env=env, port=port, ready=ready)
    base_url = f"http://127.0.0.1:{port}"
    try:
        server.start()
        with api_client(base_url, headers) as client:
            # Before any API call: the memory of an idle, freshly started service.
            memory = server.memory_mib(pss=True)
            for role in ROLES:
                expect(client.post("/api/v1/roles", json={"name": role}), 201)
            yield Provisioner(data_dir, server, base_url, headers, client, memory)
    finally:
        server.stop()


def provisioner_bulk(nodes: list[FakeNode], work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with provisioner(work, "provisioner-bulk") as p:
        manifests = [
            manifest_csv(nodes[i : i + MANIFEST_ROWS]) for i in range(0, len(nodes), MANIFEST_ROWS)
        ]
        samples: list[float] = []
        with meter(p.server, out):
            for body in manifests:
                t0 = time.perf_counter()
                response = p.client.post(
                    "/api/v1/racks/import", content=body, headers={"Content-Type": "text/csv"}
                )
                samples.append(time.perf_counter() - t0)
                assert expect(response, 201)["created"] == body.count(b"\n") - 1
        out.update(
            nodes=len(nodes),
            requests=len(manifests),
            rows_per_request=MANIFEST_ROWS,
            largest_body_bytes=max(len(m) for m in manifests),
            nodes_per_s=rate(len(nodes), out["cpu"]["wall_s"]),
            request=latency(samples),
            memory_start=p.memory_start,
            memory_after=p.server.memory_mib(pss=True),
        )
    return out


def provisioner_single(p: Provisioner, nodes: list[FakeNode], concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    samples: list[float] = []
    headers = {"Content-Type": "application/json"}

    def enroll(client: httpx.Client, n: FakeNode) -> None:
        body = node_json(n)
        t0 = time.perf_counter()
        response = client.post("/api/v1/nodes", content=body, headers=headers)
        samples.append(time.perf_counter() - t0)
        expect(response, 201)

    with meter(p.server, out):
        fan_out(nodes, concurrency, p.new_client, enroll)
    out.update(
        nodes=len(nodes),
        concurrency=concurrency,
        nodes_per_s=rate(len(nodes), out["cpu"]["wall_s"]),
        request=latency(samples),
        memory_after=p.server.memory_mib(pss=True),
    )
    return out


def choose_concurrency(args: argparse.Namespace, work: Path) -> tuple[int, dict[str, float]]:
    """The number of POSTs in flight that enrolls fastest: a short trial of each choice,
    each on a fresh database."""
    if args.clients != "auto":
        return int(args.clients), {}
    trial = fleet(args.sweep_nodes)
    rates: dict[str, float] = {}
    for concurrency in SWEEP:
        with provisioner(work, f"provisioner-sweep-{concurrency}") as p:
            rates[str(concurrency)] = provisioner_single(p, trial, concurrency)["nodes_per_s"]
        progress(f"  {concurrency} in flight: {rates[str(concurrency)]} nodes/s")
    best = max(SWEEP, key=lambda c: rates[str(c)])
    return best, rates


def walk(client: httpx.Client, params: dict[str, Any], samples: list[float]) -> int:
    """Every page of a listing, following next_cursor; how many nodes it held."""
    seen = 0
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = timed_get(client, "/api/v1/nodes", query, samples)
        seen += len(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def provisioner_reads(
    p: Provisioner, nodes: list[FakeNode], args: argparse.Namespace
) -> dict[str, Any]:
    c = p.client
    rng = random.Random(args.seed)
    out: dict[str, Any] = {}
    with meter(p.server, out):
        warm(c, "/api/v1/nodes", {"limit": PAGE})
        samples: list[float] = []
        for _ in range(args.walks):
            assert walk(c, {"limit": PAGE}, samples) == len(nodes)
        out["list_page"] = latency(samples)

        warm(c, "/api/v1/nodes", {"limit": BIG_PAGE})
        samples = []
        while len(samples) < args.big_pages:
            walk(c, {"limit": BIG_PAGE}, samples)
        out["list_1000"] = latency(samples)

        racks = sorted({n.rack for n in nodes})
        warm(c, "/api/v1/nodes", {"state": "enrolled", "rack": racks[0], "limit": PAGE})
        samples = []
        for _ in range(args.filtered):
            rack = rng.choice(racks)
            query = {"state": "enrolled", "rack": rack, "limit": PAGE}
            page = timed_get(c, "/api/v1/nodes", query, samples)
            assert len(page["items"]) == NODES_PER_RACK
        out["list_filtered_rack"] = latency(samples)

        warm(c, "/api/v1/nodes", {"role": ROLES[0], "limit": PAGE})
        samples = []
        for _ in range(args.walks):
            for role in ROLES:
                expected = sum(1 for n in nodes if n.role == role)
                assert walk(c, {"role": role, "limit": PAGE}, samples) == expected
        out["list_filtered_role"] = latency(samples)

        warm(c, "/api/v1/nodes", {"mac": nodes[0].macs[0]})
        samples = []
        for _ in range(args.lookups):
            n = rng.choice(nodes)
            page = timed_get(c, "/api/v1/nodes", {"mac": rng.choice(n.macs)}, samples)
            assert [i["name"] for i in page["items"]] == [n.name]
        out["lookup_mac"] = latency(samples)

        warm(c, f"/api/v1/nodes/{nodes[0].name}")
        samples = []
        for _ in range(args.lookups):
            n = rng.choice(nodes)
            assert timed_get(c, f"/api/v1/nodes/{n.name}", None, samples)["name"] == n.name
        out["get_node"] = latency(samples)
    return out


def provisioner_run(nodes: list[FakeNode], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    progress(f"provisioner: bulk import of {len(nodes)} nodes")
    bulk = provisioner_bulk(nodes, work)
    progress(f"  {bulk['nodes_per_s']} nodes/s")
    progress(f"provisioner: POSTs in flight for the best rate ({args.clients})")
    args.clients, sweep = choose_concurrency(args, work)
    progress(f"provisioner: {len(nodes)} single POSTs, {args.clients} in flight")
    with provisioner(work, "provisioner-single") as p:
        single = provisioner_single(p, nodes, args.clients)
        single["concurrency_trials"] = sweep
        single["concurrency_trial_nodes"] = args.sweep_nodes
        progress(f"  {single['nodes_per_s']} nodes/s")
        progress("provisioner: reads")
        reads = provisioner_reads(p, nodes, args)
        memory_after = p.server.memory_mib(pss=True)
        files = p.data_dir.glob("provisioner.db*")
        db_mib = sum(f.stat().st_size for f in files) / MIB
    return {
        "bulk_import": bulk,
        "single_post": single,
        "reads": reads,
        "memory_start": p.memory_start,
        "memory_after": memory_after,
        "database_mib": round(db_mib, 1),
    }


# ---- OpenStack Ironic (reference) ---------------------------------------------------


@dataclass
class Ironic:
    server: Process
    base_url: str
    client: httpx.Client
    uuids: dict[str, str] = field(default_factory=dict)

    def new_client(self) -> httpx.Client:
        return api_client(self.base_url, IRONIC_HEADERS)


@contextmanager
def ironic(work: Path) -> Iterator[Ironic]:
    data_dir = work / "ironic"
    (data_dir / "locks").mkdir(parents=True)
    port = free_port()
    template = (IRONIC_DIR / "ironic.conf.template").read_text()
    conf = data_dir / "ironic.conf"
    conf.write_text(template.replace("@DATA_DIR@", str(data_dir)).replace("@PORT@", str(port)))
    bin_dir = IRONIC_VENV / "bin"
    subprocess.run(
        [bin_dir / "ironic-dbsync", "--config-file", conf, "create_schema"],
        check=True,
        capture_output=True,
    )
    argv = [str(bin_dir / "ironic"), "--config-file", str(conf)]
    env = {**os.environ, **SERVER_ENV}
    ready = answers_200(port, "/v1")
    server = Process(
        "ironic", argv, data_dir / "stdout.log", env=env, port=port, ready=ready, ready_timeout=120
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        server.start()
        with api_client(base_url, IRONIC_HEADERS) as client:
            # The conductor registers its drivers just after the API answers; a node
            # cannot be created before.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                drivers = expect(client.get("/v1/drivers"), 200)["drivers"]
                if any(d["name"] == "fake-hardware" for d in drivers):
                    break
                time.sleep(0.5)
            yield Ironic(server, base_url, client)
    except Exception:
        progress(
            f"ironic log tail:\n{server.tail()}\n{(data_dir / 'ironic.log').read_text()[-3000:]}"
        )
        raise
    finally:
        server.stop()


def ironic_create(ir: Ironic, nodes: list[FakeNode], concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node_samples: list[float] = []
    port_samples: list[float] = []
    enroll_samples: list[float] = []

    def enroll(client: httpx.Client, n: FakeNode) -> None:
        # The closest equivalent of one provisioner POST: the node with its BMC details,
        # then a port per NIC, since Ironic keeps MACs on ports.
        t0 = time.perf_counter()
        response = client.post("/v1/nodes", json=ironic_node_json(n))
        node_samples.append(time.perf_counter() - t0)
        uuid = expect(response, 201)["uuid"]
        ir.uuids[n.name] = uuid
        for index, address in enumerate(n.macs):
            t1 = time.perf_counter()
            port = {"node_uuid": uuid, "address": address, "pxe_enabled": index == 0}
            response = client.post("/v1/ports", json=port)
            port_samples.append(time.perf_counter() - t1)
            expect(response, 201)
        enroll_samples.append(time.perf_counter() - t0)

    with meter(ir.server, out):
        fan_out(nodes, concurrency, ir.new_client, enroll)
    out.update(
        nodes=len(nodes),
        concurrency=concurrency,
        nodes_per_s=rate(len(nodes), out["cpu"]["wall_s"]),
        node_post=latency(node_samples),
        port_post=latency(port_samples),
        node_with_ports=latency(enroll_samples),
    )
    return out


def ironic_walk(
    client: httpx.Client, params: dict[str, Any], expected: int, samples: list[float]
) -> int:
    """Pages of /v1/nodes/detail by marker, stopping once ``expected`` nodes are seen: a
    full last page would otherwise cost one more, empty, request."""
    seen = 0
    marker = None
    while seen < expected:
        query = {**params, **({"marker": marker} if marker else {})}
        page = timed_get(client, "/v1/nodes/detail", query, samples)
        if not page["nodes"]:
            break
        seen += len(page["nodes"])
        marker = page["nodes"][-1]["uuid"]
    return seen


def ironic_reads(ir: Ironic, nodes: list[FakeNode], args: argparse.Namespace) -> dict[str, Any]:
    c = ir.client
    rng = random.Random(args.seed)
    out: dict[str, Any] = {}
    by_name = {"sort_key": "name"}
    with meter(ir.server, out):
        warm(c, "/v1/nodes/detail", {"limit": PAGE, **by_name})
        samples: list[float] = []
        for _ in range(args.walks):
            assert ironic_walk(c, {"limit": PAGE, **by_name}, len(nodes), samples) == len(nodes)
        out["list_page"] = latency(samples)

        warm(c, "/v1/nodes/detail", {"limit": BIG_PAGE, **by_name})
        samples = []
        while len(samples) < args.big_pages:
            ironic_walk(c, {"limit": BIG_PAGE, **by_name}, len(nodes), samples)
        out["list_1000"] = latency(samples)

        # Ironic cannot filter by rack; a role maps to resource_class, a state to
        # provision_state.
        warm(c, "/v1/nodes/detail", {"resource_class": ROLES[0], "limit": PAGE, **by_name})
        samples = []
        for _ in range(args.walks):
            for role in ROLES:
                expected = sum(1 for n in nodes if n.role == role)
                query = {"provision_state": "enroll", "resource_class": role, "limit": PAGE}
                assert ironic_walk(c, {**query, **by_name}, expected, samples) == expected
        out["list_filtered_role"] = latency(samples)

        warm(c, "/v1/ports/detail", {"address": nodes[0].macs[0]})
        samples = []
        for _ in range(args.lookups):
            n = rng.choice(nodes)
            ports = timed_get(c, "/v1/ports/detail", {"address": rng.choice(n.macs)}, samples)
            assert [p["node_uuid"] for p in ports["ports"]] == [ir.uuids[n.name]]
        out["lookup_mac"] = latency(samples)

        warm(c, f"/v1/nodes/{nodes[0].name}")
        samples = []
        for _ in range(args.lookups):
            n = rng.choice(nodes)
            assert timed_get(c, f"/v1/nodes/{n.name}", None, samples)["name"] == n.name
        out["get_node"] = latency(samples)
    return out


def ironic_run(nodes: list[FakeNode], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    progress(f"ironic: creating {len(nodes)} nodes with 2 ports each, {args.clients} in flight")
    with ironic(work) as ir:
        memory_start = ir.server.memory_mib(pss=True)
        create = ironic_create(ir, nodes, args.clients)
        progress(f"  {create['nodes_per_s']} nodes/s")
        progress("ironic: reads")
        reads = ironic_reads(ir, nodes, args)
        memory_after = ir.server.memory_mib(pss=True)
    return {
        "version": ironic_version(),
        "create": create,
        "reads": reads,
        "memory_start": memory_start,
        "memory_after": memory_after,
    }


# ---- report ---------------------------------------------------------------------------


PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic", "sqlalchemy", "sqlmodel", "httpx")


Row = tuple[str, float | None, float | None, str, str]  # label, ours, Ironic's, unit, target

# label, provisioner figure, Ironic figure (dotted paths into the results), unit, target.
ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "Bulk import (CSV manifests of 1,000 rows)",
        "bulk_import.nodes_per_s",
        "",
        "nodes/s",
        "bulk_import_nodes_per_s",
    ),
    ("Bulk import, per manifest request, p50", "bulk_import.request.p50_ms", "", "ms", ""),
    ("Bulk import, per manifest request, p99", "bulk_import.request.p99_ms", "", "ms", ""),
    (
        "Single POSTs (Ironic: node + 2 ports)",
        "single_post.nodes_per_s",
        "create.nodes_per_s",
        "nodes/s",
        "single_post_nodes_per_s",
    ),
    (
        "Enroll one node, p50",
        "single_post.request.p50_ms",
        "create.node_with_ports.p50_ms",
        "ms",
        "",
    ),
    (
        "Enroll one node, p99",
        "single_post.request.p99_ms",
        "create.node_with_ports.p99_ms",
        "ms",
        "",
    ),
    (
        "POST the node only (Ironic: no ports), p50",
        "single_post.request.p50_ms",
        "create.node_post.p50_ms",
        "ms",
        "",
    ),
    (
        "Server CPU per node, bulk import",
        "bulk_import.server_cpu_per_node_ms",
        "",
        "ms",
        "",
    ),
    (
        "Server CPU per node, single POSTs (Ironic: + ports)",
        "single_post.server_cpu_per_node_ms",
        "create.server_cpu_per_node_ms",
        "ms",
        "",
    ),
    ("List page of 100, p50", "reads.list_page.p50_ms", "reads.list_page.p50_ms", "ms", ""),
    (
        "List page of 100, p99",
        "reads.list_page.p99_ms",
        "reads.list_page.p99_ms",
        "ms",
        "list_page_p99_ms",
    ),
    ("List page of 1,000, p50", "reads.list_1000.p50_ms", "reads.list_1000.p50_ms", "ms", ""),
    ("List page of 1,000, p99", "reads.list_1000.p99_ms", "reads.list_1000.p99_ms", "ms", ""),
    ("Filtered: state=enrolled&rack=R, p50", "reads.list_filtered_rack.p50_ms", "", "ms", ""),
    (
        "Filtered: state=enrolled&rack=R, p99",
        "reads.list_filtered_rack.p99_ms",
        "",
        "ms",
        "list_filtered_rack_p99_ms",
    ),
    (
        "Filtered: role=X, p50",
        "reads.list_filtered_role.p50_ms",
        "reads.list_filtered_role.p50_ms",
        "ms",
        "",
    ),
    (
        "Filtered: role=X, p99",
        "reads.list_filtered_role.p99_ms",
        "reads.list_filtered_role.p99_ms",
        "ms",
        "list_filtered_role_p99_ms",
    ),
    ("Lookup by MAC, p50", "reads.lookup_mac.p50_ms", "reads.lookup_mac.p50_ms", "ms", ""),
    (
        "Lookup by MAC, p99",
        "reads.lookup_mac.p99_ms",
        "reads.lookup_mac.p99_ms",
        "ms",
        "lookup_mac_p99_ms",
    ),
    ("Get one node by name, p50", "reads.get_node.p50_ms", "reads.get_node.p50_ms", "ms", ""),
    ("Get one node by name, p99", "reads.get_node.p99_ms", "reads.get_node.p99_ms", "ms", ""),
    ("Memory at start (VmRSS)", "memory_start.rss_mib", "memory_start.rss_mib", "MiB", ""),
    (
        "Memory after the run (VmRSS)",
        "memory_after.rss_mib",
        "memory_after.rss_mib",
        "MiB",
        "rss_after_mib",
    ),
    ("Peak memory (VmHWM)", "memory_after.hwm_mib", "memory_after.hwm_mib", "MiB", ""),
    ("Memory after the run (PSS)", "memory_after.pss_mib", "memory_after.pss_mib", "MiB", ""),
)


def lookup(tree: dict[str, Any] | None, path: str) -> float | None:
    node: Any = tree
    if not path:
        return None
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def derive(results: dict[str, Any]) -> None:
    """Figures computed from the raw ones. Server CPU per node hardly moves when other
    processes compete for the machine, unlike rates and tails, so it compares fairly."""
    phases = [results["provisioner"]["bulk_import"], results["provisioner"]["single_post"]]
    if results.get("ironic"):
        phases.append(results["ironic"]["create"])
    for phase in phases:
        per_node = phase["cpu"]["server_s"] * 1000 / phase["nodes"]
        phase["server_cpu_per_node_ms"] = round(per_node, 2)


def rows(results: dict[str, Any]) -> list[Row]:
    derive(results)
    ours, theirs = results["provisioner"], results.get("ironic")
    return [
        (label, lookup(ours, mine), lookup(theirs, ironic), unit, target)
        for label, mine, ironic, unit, target in ROWS
    ]


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def ratio(ours: float | None, theirs: float | None, unit: str) -> str:
    """How many times better the provisioner is: more per second, faster, or smaller."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return ""
    times = ours / theirs if unit.endswith("/s") else theirs / ours
    return f"{times:.1f}x"


def verdict(key: str, value: float | None) -> tuple[str, str]:
    if not key:
        return "", ""
    op, limit = TARGETS[key]
    return f"{op} {limit:,.0f}", judge(op, limit, value)


def table_lines(results: dict[str, Any], markdown: bool) -> list[str]:
    head = ["Measure", "provisioner", "Ironic", "x better", "Unit", "Target", "Result"]
    body = []
    for label, ours, theirs, unit, key in rows(results):
        target, result = verdict(key, ours)
        body.append(
            [label, fmt(ours), fmt(theirs), ratio(ours, theirs, unit), unit, target, result]
        )
    return render_table(head, body, markdown, right={1, 2, 3})


def cpu_note(phase: dict[str, Any]) -> str:
    cpu = phase["cpu"]
    return (
        f"{cpu['wall_s']} s wall clock; CPU: server {cpu['server_s']} s, "
        f"client {cpu['client_s']} s, other processes {cpu['others_s']} s"
    )


def busy_phases(results: dict[str, Any]) -> list[str]:
    """Phases during which other processes took more than a tenth of the machine."""
    phases = {
        "bulk import": results["provisioner"]["bulk_import"],
        "single POSTs": results["provisioner"]["single_post"],
        "provisioner reads": results["provisioner"]["reads"],
    }
    if results.get("ironic"):
        phases["Ironic create"] = results["ironic"]["create"]
        phases["Ironic reads"] = results["ironic"]["reads"]
    shares = {name: (p["cpu"]["others_s"], p["cpu"]["wall_s"]) for name, p in phases.items()}
    return contention(shares, results["machine"]["cores"])


def sweep_note(single: dict[str, Any]) -> str:
    trials = single.get("concurrency_trials")
    if not trials:
        return ""
    tried = ", ".join(f"{k}: {v} nodes/s" for k, v in trials.items())
    size = single["concurrency_trial_nodes"]
    return f" (the fastest in trials of {size:,} nodes on fresh databases: {tried})"


def results_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    p = results["provisioner"]
    ir = results.get("ironic")
    bulk, single, reads = p["bulk_import"], p["single_post"], p["reads"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [
        *results_head(RESULTS_BEGIN, f"Run of {results['date']}", results),
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}; Python {m['python']}, SQLite {m['sqlite']}; {packages}. "
        f"Load average when the run began: {m['loadavg_at_start']:.2f}.",
        "- Both services on SQLite in a fresh data directory on local disk, each one process "
        "(Ironic: a launcher and its forked service), serving 127.0.0.1. The client (this "
        "script, httpx) shares the same cores: latencies are what the client saw, its own "
        "time included. Each phase says how much CPU the server, the client and other "
        "processes used.",
        f"- Bulk import: {bulk['nodes']:,} nodes as {bulk['requests']} CSV manifests of "
        f"{bulk['rows_per_request']:,} rows (ten racks each), sent one after another, because "
        f"the service refuses bodies over 1 MiB (the largest manifest was "
        f"{bulk['largest_body_bytes'] / 1024:.0f} KiB). Fresh database; {cpu_note(bulk)}.",
        f"- Single POSTs: {single['nodes']:,} POST /api/v1/nodes on another fresh database, "
        f"{single['concurrency']} requests in flight{sweep_note(single)}; "
        f"{cpu_note(single)}. Every node has a BMC and two NICs.",
        f"- Reads, on that {single['nodes']:,}-node database ({p['database_mib']} MiB on disk), "
        f"one request at a time after {WARM_UP} untimed warm-up requests each: every page of "
        "100 walked by cursor; pages of 1,000; random racks (state=enrolled&rack=R, 100 "
        "hits); every page of each role; random MACs; random names. "
        f"{cpu_note(reads)}.",
        f"- Memory: the server's VmRSS from /proc just after it answered /readyz (start) and "
        f"after the reads (after the run); VmHWM is its peak. The bulk-import server used "
        f"{bulk['memory_start']['rss_mib']} MiB at start and "
        f"{bulk['memory_after']['rss_mib']} MiB after its import.",
    ]
    if ir:
        c = ir["create"]
        lines.append(
            f"- Reference: OpenStack Ironic {ir['version']} from PyPI, standalone (the "
            "`ironic` command: API and conductor in one service, rpc_transport=none, noauth, "
            "fake-hardware, SQLite), set up by bench/ironic/setup.sh from "
            "bench/ironic/ironic.conf.template, run after the provisioner in the same run. "
            f"{c['nodes']:,} nodes, each POST /v1/nodes then POST /v1/ports for each of its two "
            f"MACs, {c['concurrency']} nodes in flight; {cpu_note(c)}. Reads as above on "
            f"those nodes ({cpu_note(ir['reads'])}), pages by marker sorted by name, in "
            "detail. Memory is summed over its two processes; PSS counts the pages they share "
            "once. Lookup by MAC is GET /v1/ports/detail?address= (the port, with its node's "
            "UUID); role is resource_class; Ironic cannot filter by rack."
        )
    else:
        lines.append(f"- Reference: not run ({results.get('ironic_status', 'skipped')}).")
    if noisy := busy_phases(results):
        lines.append(busy_note(noisy, "rates and tails are pessimistic"))
    lines += [
        "- x better: the provisioner's figure over Ironic's for rates, Ironic's over the "
        "provisioner's for times and memory; above 1 means the provisioner does better.",
        "",
        *table_lines(results, markdown=True),
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
    add("--nodes", type=int, default=10_000, help="nodes to enroll (default 10,000)")
    add(
        "--clients",
        default="auto",
        help="POSTs in flight, for both services; 'auto' (the default) tries "
        f"{', '.join(map(str, SWEEP))} on --sweep-nodes nodes each and keeps the fastest",
    )
    add("--sweep-nodes", type=int, default=1000, help="nodes per 'auto' trial (default 1,000)")
    add("--walks", type=int, default=3, help="times to walk every page (default 3)")
    add("--big-pages", type=int, default=30, help="pages of 1,000 to time (default 30)")
    add("--filtered", type=int, default=300, help="rack-filtered pages (default 300)")
    add("--lookups", type=int, default=1000, help="MAC lookups, and gets by name (default 1,000)")
    add_wait_quiet(parser)
    add("--seed", type=int, default=1, help="for the random racks, MACs and names")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument(
        "--reference",
        choices=["ironic"],
        default="ironic" if IRONIC_VENV.exists() else None,
        help="run OpenStack Ironic too (the default when bench/ironic/.venv exists)",
    )
    reference.add_argument("--no-reference", dest="reference", action="store_const", const=None)
    add("--ironic-nodes", type=int, default=1000, help="nodes for Ironic (default 1,000: slow)")
    add_output_options(parser, keep="data directories and server logs")
    add(
        "--rev",
        help="run the service from this git revision (exported to a scratch directory) "
        "instead of the working tree, e.g. HEAD while the tree is mid-edit",
    )
    add(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: rewrite bench/RESULTS.md from the raw figures of an earlier run",
    )
    args = parser.parse_args(argv)
    if args.clients != "auto" and not (args.clients.isdigit() and int(args.clients) > 0):
        parser.error("--clients takes a positive number or 'auto'")
    if args.nodes < BIG_PAGE or args.nodes % NODES_PER_RACK:
        parser.error(f"--nodes must be a multiple of {NODES_PER_RACK}, at least {BIG_PAGE}")
    if args.reference and args.ironic_nodes < BIG_PAGE:
        parser.error(f"--ironic-nodes must be at least {BIG_PAGE}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": now_utc(),
        "command": command_line(__file__),
        "machine": {**machine(PACKAGES), "sqlite": sqlite3.sqlite_version},
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    with work_dir("provisioner-bench-", args.keep) as work:
        commit = None
        if args.rev:
            commit = export_revision(args.rev, work / "source")
            # Ahead of the editable install on the server's import path: provisioner and
            # its migrations come from the export.
            SERVER_ENV["PYTHONPATH"] = str(work / "source")
        paths = ("provisioner", "migrations", "pyproject.toml")
        results["code"] = code_state(paths, args.rev, commit)
        results["provisioner"] = provisioner_run(fleet(args.nodes), args, work)
        if args.reference == "ironic":
            try:
                results["ironic"] = ironic_run(fleet(args.ironic_nodes), args, work)
            except Exception as exc:  # The reference failing must not lose our figures.
                results["ironic_status"] = f"failed: {type(exc).__name__}: {exc}"[:500]
                progress(results["ironic_status"])
        else:
            results["ironic_status"] = "skipped: --no-reference, or no bench/ironic/.venv"
    results["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    return results


def main(argv: list[str] | None = None) -> int:
    global QUIET_WAIT_S
    args = parse_args(argv)
    QUIET_WAIT_S = args.wait_quiet
    if args.render:
        results = json.loads(args.render.read_text())
        print("\n".join(table_lines(results, markdown=False)))
        write_results(args.results, results_markdown(results), RESULTS_BEGIN, RESULTS_END)
        print(f"results: {args.results}")
        return 0
    results = run(args)
    raw = save_raw(results, args.out, "api")
    print("\n".join(table_lines(results, markdown=False)))
    if noisy := busy_phases(results):
        print(busy_warning(noisy))
    print(f"\nraw figures: {raw}")
    publish(args, lambda: results_markdown(results), RESULTS_BEGIN, RESULTS_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
