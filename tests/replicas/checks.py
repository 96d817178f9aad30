"""What the replica tests check and watch, shared by them: a rack's timelines
(:func:`check_timelines`), every node's lease owner over time (:class:`Leases`), a client
polling the API throughout (:class:`Poller`) and a role's webhook receiver."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from lab import control
from tests.lab.test_e2e import Receiver
from tests.replicas.harness import Fleet, Replica
from tests.serving import free_port, poll

RACKING_FLOW = [
    ("enroll", None, "enrolled"),
    ("inspect", "enrolled", "inspecting"),
    ("inspected", "inspecting", "ready"),
    ("provision", "ready", "provisioning"),
    ("deployed", "provisioning", "provisioned"),
    ("handed-off", "provisioned", "active"),
]


@dataclass
class Leases:
    """Watches every node's lease owner from the database, every 0.1 s."""

    fleet: Fleet
    # name -> [(time seen, owner)], one entry per change of owner
    history: dict[str, list[tuple[float, str | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    seen: float = 0.0  # when the newest look started
    states: dict[str, str] = field(default_factory=dict)  # as of the newest look

    def __enter__(self) -> Leases:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Stamped before the query: what it returns was so at that moment or later
            # (held_by after a kill reads only looks started after it).
            asked = time.time()
            rows = self.fleet.rows("SELECT name, lease_owner, state FROM node")
            with self._lock:
                for name, owner, state in rows:
                    self.states[name] = state
                    changes = self.history[name]
                    if not changes or changes[-1][1] != owner:
                        changes.append((asked, owner))
                self.seen = asked
            self._stop.wait(0.1)

    def held_by(self, replica: Replica, seen_after: float = 0.0) -> dict[str, str]:
        """The nodes leased to ``replica`` in the newest look at the database, which is
        one taken after ``seen_after``, with their states then."""
        poll(lambda: self.seen > seen_after, 30, lambda: "the lease watch stalled")
        with self._lock:
            return {n: self.states[n] for n, h in self.history.items() if replica.owns(h[-1][1])}

    def orphans(self, replica: Replica, killed_at: float) -> list[str]:
        """What ``replica`` left leased when it was killed at ``killed_at``, that is
        still to be worked on: not a node it had just made ``active`` (killed between
        that commit and its lease's release), whose expired lease nobody needs."""
        held = self.held_by(replica, seen_after=killed_at)
        return [name for name, state in held.items() if state != "active"]

    def taken_over(self, replica: Replica, name: str, since: float) -> float | None:
        """When the lease ``replica`` held on ``name`` was first seen with another owner."""
        with self._lock:
            for seen, owner in self.history[name]:
                if seen > since and not replica.owns(owner):
                    return seen
        return None


@dataclass
class Poller:
    """A client asking for the node list and readiness throughout, of replica 0 or of
    ``url`` (the balancer's, say)."""

    fleet: Fleet
    url: str | None = None
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Poller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with self.fleet.client(0, url=self.url) as client:
            while not self._stop.is_set():
                for path in ("/api/v1/nodes?limit=1000", "/readyz"):
                    try:
                        response = client.get(path)
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{path}: {exc!r}")
                        continue
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{path}: HTTP {response.status_code}")
                self._stop.wait(0.2)


@contextmanager
def receiving() -> Iterator[Receiver]:
    """A role's webhook receiver, listening."""
    receiver = Receiver(free_port())
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def check_timelines(f: Fleet) -> None:
    """Every node went through the racking flow once, installed once, its callbacks
    recorded once, no power-sync observation written twice; its machine runs the image
    of its one provision deployment."""
    nodes = dict(f.rows("SELECT id, name FROM node"))
    deployments: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for node_id, dep_id, kind, status in f.rows(
        "SELECT node_id, id, kind, status FROM deployment ORDER BY created_at"
    ):
        deployments[nodes[node_id]].append((str(dep_id), kind, status))
    events: dict[str, list[tuple[str, str | None, str | None, str]]] = defaultdict(list)
    for node_id, kind, from_state, to_state, message in f.rows(
        "SELECT node_id, kind, from_state, to_state, message FROM event ORDER BY id"
    ):
        events[nodes[node_id]].append((kind, from_state, to_state, message))
    problems = []
    for name in sorted(nodes.values()):
        found = deployments[name]
        # An inspection's deployment is superseded by the provisioning that follows it.
        if [(k, s) for _, k, s in found] != [("inspect", "superseded"), ("provision", "done")]:
            problems.append(f"{name}: deployments {found}")
        timeline = events[name]
        transitions = [(k, a, b) for k, a, b, _ in timeline if b is not None]
        if transitions != RACKING_FLOW:
            problems.append(f"{name}: transitions {transitions}")
        kinds = Counter(k for k, *_ in timeline)
        for callback in ("callback-started", "callback-done"):
            if kinds[callback] != 1:
                problems.append(f"{name}: {kinds[callback]} {callback} events")
        for before, after in itertools.pairwise(timeline):
            if before[0] == after[0] == "power-sync" and before[3] == after[3]:
                problems.append(f"{name}: power-sync event twice: {after[3]}")
        machine = control.status(f.lab.control_dir).get(name, {})
        provision = [d for d, k, _ in found if k == "provision"]
        if machine.get("state") != "os-running" or [machine.get("deployment")] != [
            p[:8] for p in provision
        ]:
            problems.append(f"{name}: machine {machine}, provision deployments {provision}")
    assert not problems, (
        "\n".join(problems[:20]) + "\n" + f.explain([p.split(":")[0] for p in problems[:3]])
    )
