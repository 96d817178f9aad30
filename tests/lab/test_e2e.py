"""End to end: a real ``provisioner serve`` (SQLite, embedded TFTP, reconciler) and a
real ``provisioner-lab up`` whose machines network-boot from it, driven only through the
API and the CLI, as an operator would:

- a rack of 16 from manifest import to ``active``, with no call after the import;
- a reimage of 4 of them while the other 12 stay ``active`` throughout;
- release: ``wiping`` (the wipe image calls back) then ``ready``;
- two concurrent reimage requests for one node: one 202, one 409;
- an installer that never calls back: ``failed`` at the deploy deadline;
- the service killed (SIGKILL) in the middle of provisioning and started again on the
  same data: every node still ends ``active``;
- a role's webhook receiver down while its nodes are provisioned: no node is ``active``
  before its ``node.provisioned`` is acknowledged, and once the receiver is back every
  event arrives, once by idempotency key, with a valid signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.lab.conftest import Site, site
from tests.serving import BIN, free_port, poll

_DEPLOYMENT = re.compile(r"\(deployment ([0-9a-f]{8})")


def installed_deployments(events: list[dict[str, Any]]) -> list[str]:
    """The deployments whose installer called back ``done``, oldest first."""
    found = []
    for event in events:
        if event["kind"] == "callback-done":
            match = _DEPLOYMENT.search(event["message"])
            assert match, event
            found.append(match[1])
    return found


def when(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


# --- one rack for the racking flow, reimage, release and concurrent requests -----------

RACK = 16
WIPED = ["lab-r01-u15", "lab-r01-u16"]
RACED = "lab-r01-u14"


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with site(
        tmp_path_factory.mktemp("e2e-rack"),
        RACK,
        "--role",
        "compute",
        wipe_kernel_url="tiny/vmlinuz",
        wipe_initrd_url="tiny/initrd.img",
    ) as running:
        yield running


def test_a_rack_goes_from_manifest_import_to_active(rack: Site) -> None:
    """The manifest names the role; the racking flow does the rest: BMC verification,
    inspection, provisioning with the role's image, hand-off."""
    started = time.monotonic()
    rack.import_manifest()
    rack.wait_for(rack.names, "active", timeout=120)
    elapsed = time.monotonic() - started
    for name in rack.names:
        events = rack.events(name)
        kinds = [e["kind"] for e in events]
        for wanted in ("inspect", "inspected", "provision", "callback-done", "deployed"):
            assert wanted in kinds, f"{name}: no {wanted} event\n" + rack.explain([name])
        provision = events[kinds.index("provision")]
        assert provision["actor"] == "provisioner", rack.explain([name])
        assert "racking flow" in provision["message"], rack.explain([name])
        assert events[-1]["to_state"] == "active", rack.explain([name])
        machine = rack.machine(name)
        assert machine["state"] == "os-running", (machine, rack.explain([name]))
        assert machine["installed"] == "tiny", machine
    print(f"{RACK} nodes from manifest import to active in {elapsed:.1f} s")


@dataclass
class Watch:
    """Polls the service in a thread and keeps every state other than ``active`` it saw
    for ``names``."""

    site: Site
    names: list[str]
    seen: dict[str, list[str]] = field(default_factory=dict)
    polls: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _run(self) -> None:
        service = self.site.service
        with httpx.Client(base_url=service.url, headers=service.api.headers, timeout=30) as client:
            while not self._stop.is_set():
                items = client.get("/api/v1/nodes", params={"limit": 1000}).json()["items"]
                for node in items:
                    if node["name"] in self.names and node["state"] != "active":
                        self.seen.setdefault(node["name"], []).append(node["state"])
                self.polls += 1
                self._stop.wait(0.1)


def test_reimage_of_four_leaves_the_others_active(rack: Site) -> None:
    """``provisioner node reimage … --wait`` on 4 nodes: they get a new deployment and
    end active; the 12 others never leave active."""
    rack.wait_for(rack.names, "active", timeout=30)
    chosen = rack.names[:4]
    others = [n for n in rack.names if n not in chosen]
    before = {n: installed_deployments(rack.events(n)) for n in chosen}

    def transitions() -> dict[str, int]:
        return {n: sum(1 for e in rack.events(n) if e["to_state"]) for n in others}

    untouched = transitions()
    with Watch(rack, others) as watch:
        result = subprocess.run(
            [BIN / "provisioner", "node", "reimage", *chosen, "--wait", "--timeout", "120"],
            env=rack.service.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, (
            f"the reimage did not succeed:\n{result.stdout}{result.stderr}\n" + rack.explain(chosen)
        )
        current = rack.wait_for(chosen, "active", timeout=10)
    assert watch.polls >= 5, watch
    assert not watch.seen, f"nodes not reimaged left active ({watch.seen}):\n" + rack.explain(
        watch.seen
    )
    assert all(current[n]["state"] == "active" for n in others), rack.explain(others)
    # Not even a moment between two polls: their timelines have no new transition.
    moved = [n for n, count in transitions().items() if count != untouched[n]]
    assert not moved, "nodes not reimaged changed state:\n" + rack.explain(moved)
    for name in chosen:
        events = rack.events(name)
        after = installed_deployments(events)
        assert len(after) == len(before[name]) + 1, rack.explain([name])
        assert after[-1] not in before[name], rack.explain([name])
        kinds = [e["kind"] for e in events]
        assert kinds.count("reimage") == 1, rack.explain([name])
        # The reimage's new deployment ran after the request, and the node went
        # provisioning -> provisioned -> active again.
        reimaged = max(i for i, k in enumerate(kinds) if k == "reimage")
        states = [e["to_state"] for e in events[reimaged:] if e["to_state"]]
        assert states == ["provisioning", "provisioned", "active"], rack.explain([name], 14)
        machine = rack.machine(name)
        assert machine["state"] == "os-running", machine
        assert machine["installed"] == "tiny", machine
        assert machine["deployment"] == after[-1], (machine, after)


def test_release_wipes_then_ready(rack: Site) -> None:
    """Release: the node network-boots the wipe image, which calls back; then it is
    powered off and ready, and stays so (no automatic provisioning again)."""
    rack.wait_for(WIPED, "active", timeout=30)
    for name in WIPED:
        response = rack.service.api.post(f"/api/v1/nodes/{name}/actions/release")
        assert response.status_code == 202, response.text
        assert response.json()["state"] == "wiping", response.text
    rack.wait_for(WIPED, "ready", timeout=60)
    for name in WIPED:
        events = rack.events(name)
        released = max(i for i, e in enumerate(events) if e["kind"] == "release")
        after = events[released:]
        states = [e["to_state"] for e in after if e["to_state"]]
        assert states == ["wiping", "ready"], rack.explain([name], 14)
        kinds = [e["kind"] for e in after]
        for wanted in ("boot-tftp", "boot-ipxe", "callback-started", "callback-done", "wiped"):
            assert wanted in kinds, f"{name}: no {wanted} after the release\n" + rack.explain(
                [name], 14
            )
        text = " ".join(e["message"] for e in after)
        assert "tiny/vmlinuz" in text, rack.explain([name], 14)
        machine = rack.machine(name)
        assert machine["installed"] is None, machine  # the disk was erased
        assert machine["power"] == "off", machine
    time.sleep(1)  # a few reconciler ticks: a released node is not provisioned again
    current = rack.nodes()
    assert all(current[n]["state"] == "ready" for n in WIPED), rack.explain(WIPED)


def test_concurrent_reimage_requests_one_accepted_one_conflict(rack: Site) -> None:
    rack.wait_for([RACED], "active", timeout=30)
    reimages_before = [e["kind"] for e in rack.events(RACED)].count("reimage")
    service = rack.service
    barrier = threading.Barrier(2)
    responses: list[httpx.Response] = []

    def request() -> None:
        with httpx.Client(base_url=service.url, headers=service.api.headers, timeout=30) as c:
            c.get("/readyz")  # connected before the barrier: the POSTs leave together
            barrier.wait(timeout=10)
            responses.append(c.post(f"/api/v1/nodes/{RACED}/actions/reimage"))

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 409], [(r.status_code, r.text) for r in responses]
    conflict = next(r for r in responses if r.status_code == 409)
    assert conflict.json()["detail"], conflict.text
    rack.wait_for([RACED], "active", timeout=60)
    kinds = [e["kind"] for e in rack.events(RACED)]
    assert kinds.count("reimage") == reimages_before + 1, rack.explain([RACED], 14)


# --- an installer that never calls back ------------------------------------------------

DEADLINE = 5.0


def test_silent_installer_fails_at_the_deadline(tmp_path_factory: pytest.TempPathFactory) -> None:
    silent, neighbour = "lab-r01-u01", "lab-r01-u02"
    with site(
        tmp_path_factory.mktemp("e2e-silent"),
        2,
        "--role",
        "compute",
        f"--fault={silent}=installer-silent",
        deploy_timeout=str(DEADLINE),
    ) as running:
        running.import_manifest()
        running.wait_for([neighbour], "active", timeout=60)
        running.wait_for([silent], "failed", timeout=30)
        node = running.node(silent)
        error = node["last_error"] or ""
        assert error.startswith("install:"), running.explain([silent])
        assert f"no installer callback within {DEADLINE:.0f} s" in error, running.explain([silent])
        events = running.events(silent)
        kinds = [e["kind"] for e in events]
        assert not [k for k in kinds if k.startswith("callback-")], running.explain([silent])
        assert "boot-answer" in kinds, running.explain([silent])  # it did get its answers
        provision = next(e for e in events if e["kind"] == "provision")
        failed = next(e for e in events if e["to_state"] == "failed")
        took = (when(failed) - when(provision)).total_seconds()
        assert DEADLINE <= took <= DEADLINE + 5, (took, running.explain([silent]))
        assert running.machine(silent)["state"] == "installer-running"


# --- a crash in the middle of provisioning ------------------------------------------------

RESTARTED = 8


def test_service_killed_while_provisioning_carries_on(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """SIGKILL with one installer at work, the next nodes holding a slot (at most 4
    installing at once) but still waiting for their turn to be powered on (one power-on
    a second), and the rest waiting for a slot; the service started again on the same
    data and port takes over once the dead replica's leases expire."""
    with site(
        tmp_path_factory.mktemp("e2e-restart"),
        RESTARTED,
        "--role",
        "compute",
        install_time=8,
        lease_seconds="6",
        max_deploying="4",
        power_on_rate="1",
    ) as running:
        names = running.names
        running.import_manifest()

        def progress() -> dict[str, str]:
            """Where each node got to, by its timeline."""
            where = {}
            for name in names:
                kinds = [e["kind"] for e in running.events(name)]
                if "callback-started" in kinds:
                    where[name] = "installing"
                elif "power" in kinds:
                    where[name] = "powered on"
                elif "provision" in kinds:
                    where[name] = "provisioning"
                else:
                    where[name] = "before provisioning"
            return where

        def ready_to_kill() -> bool:
            where = progress()
            values = list(where.values())
            return "installing" in values and "before provisioning" not in values

        poll(
            ready_to_kill,
            60,
            lambda: "expected every node provisioning, one installing:\n" + running.explain(names),
        )
        at_kill = progress()
        started = time.monotonic()
        running.service.kill()
        running.service.start()
        print(
            f"killed with nodes {Counter(at_kill.values())}; back in "
            f"{time.monotonic() - started:.1f} s"
        )
        running.wait_for(names, "active", timeout=120)
        for name in names:
            events = running.events(name)
            kinds = [e["kind"] for e in events]
            # It carried on: one deployment, installed once.
            assert kinds.count("provision") == 1, running.explain([name], 14)
            assert len(installed_deployments(events)) == 1, running.explain([name], 14)
            machine = running.machine(name)
            assert machine["state"] == "os-running", (machine, running.explain([name]))
            assert machine["installed"] == "tiny", machine


# --- webhook hand-off with the receiver down for a while -----------------------------------

SECRET = "e2e-webhook-secret-0123456789"


@dataclass
class Receiver:
    """A webhook receiver that checks the signature, and keeps each delivery by its
    idempotency key with when it first arrived."""

    port: int
    first: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    repeats: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/provisioner"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.receive(dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("X-Provisioner-Signature", ""), expected):
            self.bad.append(f"bad signature: {headers} {body[:200]!r}")
            return 401
        payload = json.loads(body)
        key = headers.get("X-Provisioner-Delivery", "")
        if payload.get("delivery") != key or payload.get("event") != headers.get(
            "X-Provisioner-Event"
        ):
            self.bad.append(f"headers disagree with the body: {headers} {payload}")
            return 400
        with self._lock:
            if key in self.first:
                self.repeats[key] += 1
            else:
                self.first[key] = (time.time(), payload)
        return 204

    def events(self) -> Counter[tuple[str, str]]:
        """How many distinct deliveries per (node, event)."""
        with self._lock:
            return Counter((p["node"]["name"], p["event"]) for _, p in self.first.values())

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


HOOKED = 4


def test_webhook_receiver_down_for_a_while_gets_every_event(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    receiver = Receiver(free_port())  # not listening yet
    role = {
        "name": "hooked",
        "default_image": "tiny",
        "handoff": "webhook",
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
    }
    try:
        with site(
            tmp_path_factory.mktemp("e2e-webhook"),
            HOOKED,
            "--role",
            "hooked",
            roles=[role],
            webhook_retry_base="0.5",
            webhook_retry_max="2",
            webhook_interval="0.2",
        ) as running:
            names = running.names
            running.import_manifest()
            running.wait_for(names, "provisioned", timeout=90)
            # Down: deliveries are attempted and fail; no node goes active meanwhile.
            poll(
                lambda: running.service.log_tail(400).count("node.provisioned") >= HOOKED,
                20,
                lambda: (
                    "expected failed attempts at node.provisioned in the log:\n"
                    + running.service.log_tail()
                ),
            )
            time.sleep(1)
            current = running.nodes()
            early = [n for n in names if current[n]["state"] != "provisioned"]
            assert not early, "receiver down, yet:\n" + running.explain(early)

            receiver.start()
            running.wait_for(names, "active", timeout=60)
            expected = Counter(
                {(n, e): 1 for n in names for e in ("node.provisioned", "node.active")}
            )
            poll(
                lambda: receiver.events() == expected,
                30,
                lambda: f"expected {sorted(expected)}, got {sorted(receiver.events().items())}",
            )
            assert not receiver.bad, receiver.bad
            for name in names:
                events = running.events(name)
                active = next(e for e in events if e["to_state"] == "active")
                acked = [
                    t
                    for t, p in receiver.first.values()
                    if p["node"]["name"] == name and p["event"] == "node.provisioned"
                ]
                assert acked, running.explain([name])
                assert acked[0] <= when(active).timestamp(), running.explain([name])
                delivered = [
                    e
                    for e in events
                    if e["kind"] == "webhook" and "node.provisioned" in e["message"]
                ]
                assert delivered, running.explain([name], 14)
                assert events.index(delivered[0]) < events.index(active), running.explain(
                    [name], 14
                )
                # It took retries: the first attempts found nobody listening.
                assert "(attempt 1)" not in delivered[0]["message"], delivered
            time.sleep(1)  # a late duplicate or a stray event would show now
            assert receiver.events() == expected, sorted(receiver.events().items())
    finally:
        receiver.stop()
