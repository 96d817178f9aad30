"""Web view benchmark (issue 15): the racks view with 1,000 nodes, and idle event streams.

Run by hand (not in CI), from the checkout, with the project's venv:

    .venv/bin/python bench/ui.py                        # rewrites its block of RESULTS.md
    .venv/bin/python bench/ui.py --nodes 100 --requests 10 --idle-seconds 5 --no-write-results

A real `provisioner serve` (uvicorn, SQLite, no background work) on a free port of
127.0.0.1, its nodes imported through `POST /api/v1/racks/import` (24 racks of 42 U).

1. Render: `GET /ui`, the full racks view, signed in as an operator (the session cookie
   of `POST /ui/login`), timed in the client over ``--requests`` GETs after five untimed
   ones; beside it in the same rounds, the same service's JSON listing of the same nodes
   (`GET /api/v1/nodes?limit=1000`) and a static copy of the rendered page served by
   `python -m http.server`. Target: p95 <= 200 ms.
2. Idle streams: the service's CPU (utime + stime of /proc/PID/stat) over
   ``--idle-seconds`` with no client, then with ``--streams`` open
   `GET /api/v1/events/stream` connections (a token in the header, as scripts send it;
   the page's /ui/events is the same stream) and nothing happening. Target: <= 5 % of
   one core with 50 streams.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from common import (
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
    clean_env,
    code_state,
    command_line,
    contention,
    expect,
    free_port,
    local_mac,
    machine,
    now_utc,
    percentile,
    progress,
    provisioner_serve,
    publish,
    render_table,
    results_head,
    running,
    save_raw,
    verdict_table,
    work_dir,
)

RESULTS_BEGIN = "<!-- bench/ui.py writes from here -->"
RESULTS_END = "<!-- bench/ui.py writes up to here -->"
RACK_UNITS = 42
ROLES = ("compute", "storage", "gpu")
TARGETS = {"render_p95_ms": ("<=", 200.0, "ms"), "streams_core_pct": ("<=", 5.0, "%")}
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ROUND = 10  # requests per target in turn, so that a burst of other work hits all three


def manifest(nodes: int) -> str:
    """``nodes`` machines in racks of 42 U, one per unit from U1 up; BMC addresses on
    loopback (never contacted: no background work)."""
    rows = ["name,rack,u,role,bmc_address,bmc_username,bmc_password,macs"]
    for i in range(nodes):
        rack, unit = divmod(i, RACK_UNITS)
        role = ROLES[0] if i % 10 < 7 else ROLES[1] if i % 10 < 9 else ROLES[2]
        address = f"127.4.{i >> 8}.{i & 0xFF}"
        rows.append(
            f"r{rack + 1:02d}-u{unit + 1:02d},r{rack + 1:02d},{unit + 1},{role},{address},"
            f"ADMIN,bench-pass,{local_mac(i)}"
        )
    return "\n".join(rows) + "\n"


def timed(client: Any, path: str, count: int, into: list[float]) -> int:
    """``count`` GETs of ``path`` appended to ``into`` (seconds); the last body's size."""
    size = 0
    for _ in range(count):
        t0 = time.perf_counter()
        response = client.get(path)
        into.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} -> {response.status_code}")
        size = len(response.content)
    return size


def figures(samples: list[float], size: int) -> dict[str, Any]:
    ms = [s * 1000 for s in samples]
    return {
        "count": len(ms),
        "median_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "max_ms": round(max(ms), 2),
        "body_kib": round(size / 1024, 1),
    }


def render_phase(args: argparse.Namespace, svc: Process, work: Path, token: str) -> dict[str, Any]:
    base = f"http://127.0.0.1:{svc.port}"
    page = api_client(base)
    api = api_client(base, {"Authorization": f"Bearer {token}"})
    with page, api:
        csrf = _CSRF.findall(page.get("/ui/login").text)[:1]  # as tests/ui/signin.py
        signed = page.post("/ui/login", data={"token": token, "csrf": "".join(csrf)})
        if signed.status_code != 303:
            raise RuntimeError(f"sign-in -> {signed.status_code}: {signed.text[:300]}")
        html = page.get("/ui").text
        shown = html.count('data-node="')
        listed = len(expect(api.get("/api/v1/nodes", params={"limit": 1000}), 200)["items"])
        if shown != args.nodes or listed != args.nodes:
            raise RuntimeError(f"{args.nodes} nodes: the page shows {shown}, the API {listed}")
        static = work / "static"
        static.mkdir()
        (static / "ui.html").write_text(html)
        argv = [sys.executable, "-m", "http.server", str(port := free_port())]
        argv += ["--bind", "127.0.0.1", "--directory", str(static)]
        ready = answers_200(port, "/ui.html")
        with running(Process("http.server", argv, work / "http.server.log", ready=ready)):
            page_static = api_client(f"http://127.0.0.1:{port}")
            targets = {
                "GET /ui (racks view, signed in)": (page, "/ui"),
                "GET /api/v1/nodes?limit=1000 (JSON)": (api, "/api/v1/nodes?limit=1000"),
                "static copy of the page (http.server)": (page_static, "/ui.html"),
            }
            samples: dict[str, list[float]] = {name: [] for name in targets}
            sizes = {name: timed(c, path, 5, []) for name, (c, path) in targets.items()}
            meter = Meter(service=svc.cpu_seconds)
            meter.wait_for_quiet(args.wait_quiet)
            start = meter.snapshot()
            order = list(targets)
            for index in range(-(-args.requests // ROUND)):
                count = min(ROUND, args.requests - index * ROUND)
                for name in order[index % 3 :] + order[: index % 3]:
                    client, path = targets[name]
                    timed(client, path, count, samples[name])
            cpu = meter.since(start)
            page_static.close()
    return {
        "targets": {name: figures(s, sizes[name]) for name, s in samples.items()},
        "cpu": cpu,
    }


def open_streams(port: int, token: str, count: int, streams: list[socket.socket]) -> None:
    """``count`` event streams, each left unread once its response head is in."""
    request = (
        f"GET /api/v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        streams.append(s)  # the caller's: closed by it even if this raises
        s.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head and (chunk := s.recv(4096)):
            head += chunk
        if not head.startswith(b"HTTP/1.1 200") or b"text/event-stream" not in head:
            raise RuntimeError(f"stream refused: {head[:200]!r}")


def still_open(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read yet, and not closed
    except OSError:
        return False


def idle_window(svc: Process, seconds: float, quiet: float) -> dict[str, Any]:
    meter = Meter(service=svc.cpu_seconds)
    meter.wait_for_quiet(quiet)
    start = meter.snapshot()
    time.sleep(seconds)
    cpu = meter.since(start)
    return {**cpu, "core_pct": round(100 * cpu["service_s"] / cpu["wall_s"], 2)}


def idle_phase(args: argparse.Namespace, svc: Process, token: str) -> dict[str, Any]:
    time.sleep(3)  # the render phase's last responses and connections wound down
    progress(f"idle, no stream: {args.idle_seconds:g} s")
    out = {"none": {"streams": 0, **idle_window(svc, args.idle_seconds, args.wait_quiet)}}
    streams: list[socket.socket] = []
    try:
        open_streams(svc.port, token, args.streams, streams)
        time.sleep(3)  # the poller started by the first stream, past its first reads
        progress(f"idle, {args.streams} streams: {args.idle_seconds:g} s")
        window = idle_window(svc, args.idle_seconds, args.wait_quiet)
        window["streams_open_at_end"] = sum(still_open(s) for s in streams)
        out["streams"] = {"streams": args.streams, **window}
    finally:
        for s in streams:
            s.close()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": now_utc(),
        "command": command_line(__file__),
        "code": code_state(("provisioner",)),
        "machine": machine(("uvicorn", "fastapi", "jinja2", "sqlalchemy", "httpx")),
        "nodes": args.nodes,
    }
    with work_dir("provisioner-bench-ui-", args.keep) as work:
        env = clean_env(**NO_BACKGROUND_WORK, PROVISIONER_DATA_DIR=str(work / "data"))
        admin = admin_token(env, work, "bench-ui-admin")
        operator = admin_token(env, work, "bench-ui-operator", scope="operator")
        with running(provisioner_serve("provisioner", work / "serve.log", env)) as (svc,):
            with api_client(
                f"http://127.0.0.1:{svc.port}", {"Authorization": f"Bearer {admin}"}
            ) as c:
                for role in ROLES:
                    expect(c.post("/api/v1/roles", json={"name": role}), 201)
                body = manifest(args.nodes)
                csv = {"Content-Type": "text/csv"}
                expect(c.post("/api/v1/racks/import", content=body, headers=csv), 201)
            progress(f"{args.nodes} nodes imported; GET /ui and references, {args.requests} each")
            results["render"] = render_phase(args, svc, work, operator)
            results["idle"] = idle_phase(args, svc, operator)
            results["memory_after"] = svc.memory_mib()
    results["machine"]["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    return results


def measured(results: dict[str, Any]) -> dict[str, float | None]:
    ui = next(iter(results["render"]["targets"].values()))
    return {
        "render_p95_ms": ui["p95_ms"],
        "streams_core_pct": results["idle"]["streams"]["core_pct"],
    }


def tables(results: dict[str, Any], markdown: bool) -> list[list[str]]:
    targets = results["render"]["targets"]
    ui = next(iter(targets.values()))
    head = [
        "Request",
        "Count",
        "Median ms",
        "p95 ms",
        "Max ms",
        "Body KiB",
        "GET /ui median / this",
    ]
    body = [
        [
            name,
            str(t["count"]),
            *(f"{t[k]:.2f}" for k in ("median_ms", "p95_ms", "max_ms")),
            f"{t['body_kib']:,.1f}",
            f"{ui['median_ms'] / t['median_ms']:.1f}x",
        ]
        for name, t in targets.items()
    ]
    idle = results["idle"]
    cpu_head = ["Service idle", "Seconds", "Service CPU s", "% of one core", "Others CPU s"]
    cpu_body = [
        [
            f"{w['streams']} event streams open"
            + (f" ({w['streams_open_at_end']} still open at the end)" if w["streams"] else ""),
            f"{w['wall_s']:.1f}",
            f"{w['service_s']:.2f}",
            f"{w['core_pct']:.2f} %",
            f"{w['others_s']:.2f}",
        ]
        for w in (idle["none"], idle["streams"])
    ]
    labels = {
        "render_p95_ms": f"GET /ui, {results['nodes']:,} nodes: p95 in the client",
        "streams_core_pct": f"service idle with {idle['streams']['streams']} streams: % of a core",
    }
    return [
        render_table(head, body, markdown, right={1, 2, 3, 4, 5, 6}),
        render_table(cpu_head, cpu_body, markdown, right={1, 2, 3, 4}),
        verdict_table(TARGETS, measured(results), labels, markdown),
    ]


def busy(results: dict[str, Any]) -> list[str]:
    phases = {"render": results["render"]["cpu"], **results["idle"]}
    cores = results["machine"]["cores"]
    return contention({k: (v["others_s"], v["wall_s"]) for k, v in phases.items()}, cores)


def results_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [
        *results_head(RESULTS_BEGIN, "Web view (issue 15)", results),
        f"- Machine: {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}; Python "
        f"{m['python']}, {packages}. Load average at the start: {m['loadavg_at_start']:.2f}, "
        f"at the end: {m['loadavg_at_end']:.2f}. Run of {results['date']}.",
        f"- `provisioner serve` on 127.0.0.1, SQLite, no background work; {results['nodes']:,} "
        f"nodes imported through `POST /api/v1/racks/import` in racks of {RACK_UNITS} U. "
        "Latency is `time.perf_counter()` around each GET in one keep-alive httpx client "
        "(transfer and client parsing included), the three requests in turn by tens, after "
        "five untimed each; the static copy is the page as rendered, served by "
        "`python -m http.server`. CPU: utime + stime of the service's process tree.",
    ]
    if noisy := busy(results):
        lines.append(busy_note(noisy))
    for table in tables(results, markdown=True):
        lines += ["", *table]
    lines += ["", f"Raw figures: `{results['raw']}` (not committed).", "", RESULTS_END]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--nodes", type=int, default=1000, help="nodes in the view (default 1,000, at most)")
    add("--requests", type=int, default=100, help="timed GETs of each (default 100)")
    add("--streams", type=int, default=50, help="event streams (default 50)")
    add("--idle-seconds", type=float, default=30, help="each idle window (default 30)")
    add_wait_quiet(parser)
    add_output_options(parser, keep="the service's data directory and log")
    add("--render", type=Path, metavar="JSON", help="run nothing: the block from a raw JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 1000 or args.requests < 1 or args.streams < 1:
        parser.error("--nodes from 1 to 1,000 (one page of the API); --requests, --streams >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        results = run(args)
        results["targets"] = measured(results)
        print(f"raw figures: {save_raw(results, args.out, 'ui')}")
    print("\n\n".join("\n".join(table) for table in tables(results, markdown=False)))
    if noisy := busy(results):
        print(busy_warning(noisy))
    publish(args, lambda: results_markdown(results), RESULTS_BEGIN, RESULTS_END)
    values = measured(results)
    return 0 if all(v is not None and v <= TARGETS[k][1] for k, v in values.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
