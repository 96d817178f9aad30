"""The power-sync benchmark's sync process: `bench/power_sync.py --sync-child DATA_DIR`
runs the service's app on an enrolled database, times one first-contact sync and the
warm ones, and says where their time went (the breakdown table is here too, beside the
figures it reads). Started by bench/power_sync.py in a fresh process, never by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any

from common import (
    TICKS,
    cpu_seconds,
    latency,
    machine_busy_seconds,
    render_table,
)


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
    from provisioner.models import Bmc, Node
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

    # HTTPS BMCs' certificates pinned on first contact (trust on first use), counted
    # after each sync, outside its timing: the pins must be written by the sync that
    # first saw the certificates. Absent before the column existed.
    fingerprint = getattr(Bmc, "tls_fingerprint", None)

    def pinned() -> int | None:
        if fingerprint is None:
            return None
        with Session(app.state.services.engine) as session:
            query = select(func.count()).select_from(Bmc).where(col(fingerprint).is_not(None))
            return int(session.exec(query).one())

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
                        "tls_pinned_after": pinned(),
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


def service_label(service: dict[str, Any]) -> str:
    """A sync process's row label: its workers, and its round when there were several."""
    label = f"{service['bmc_workers']} workers"
    if service["bmc_workers_is_default"]:
        label += " (default)"
    if "round" in service:
        label += f", round {service['round']}"
    return label


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
                    f"{service_label(service)}, {kind}",
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
