"""Three replicas on one PostgreSQL share a rack's rollout; two of them are killed
(SIGKILL) in the middle of it, one after the other, and the last one finishes it.

What is checked, and how:

- every node ends ``active``, and its machine runs the image of its one provision
  deployment (the lab's view);
- one deployment of each kind per node, in the database: one ``inspect`` (superseded
  by the provisioning) and one ``provision`` (done): no node was inspected or installed
  twice;
- no lifecycle event lost or duplicated: each node's transition events (the events
  with a ``to_state``), in order, are exactly the racking flow's, each once; its
  installer's ``started`` and ``done`` callbacks are on its timeline once each (a
  callback answered by a replica that did not render the boot script counts);
- no power-sync event written twice: no two consecutive events of a timeline are the
  same power-sync observation (every replica runs the power sync);
- orphaned leases are taken over in time: the nodes a killed replica held a lease on at
  the moment it died (read from the database after the kill), other than one it had
  just made ``active`` (nothing left to do), change lease owner, which only another
  replica's claim does, within ``PROVISIONER_LEASE_SECONDS`` plus one
  ``PROVISIONER_RECONCILE_INTERVAL`` of the kill, plus a margin for a busy machine and
  the 0.1 s the test polls at;
- the API answers throughout: a client polling replica 0 (never killed) for the node
  list and readiness has no failed request;
- the role hands off by webhook, which every replica's sender delivers from the shared
  outbox: each node's ``node.provisioned`` and ``node.active`` reach the receiver,
  signed, each enqueued once (distinct idempotency keys per node and event: 1).

The machines' boot requests, answer files and callbacks go through a round-robin
balancer (tests/replicas/balancer.py) to whichever replicas are alive; TFTP is replica
0's. Run it alone with
``PROVISIONER_TEST_DATABASE_URL=... pytest -s tests/replicas/test_kill.py``.
"""

from __future__ import annotations

import functools
import itertools
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lab import control
from tests.lab.test_e2e import SECRET, Receiver
from tests.replicas.harness import Fleet, Replica, fleet
from tests.replicas.postgres import need_postgres
from tests.serving import free_port, poll

NODES = 50
LEASE = 5.0
INTERVAL = 0.5
# The test's polling (0.1 s), a reconciler tick and a claim on two busy cores.
MARGIN = 3.0

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
    """A client of replica 0 asking for the node list and readiness throughout."""

    fleet: Fleet
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
        with self.fleet.client(0) as client:
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


def test_two_replicas_killed_mid_rollout(tmp_path: Path) -> None:
    bin_dir = need_postgres()
    started = time.monotonic()
    with (
        receiving() as receiver,
        fleet(
            tmp_path,
            bin_dir,
            replicas=3,
            nodes=NODES,
            role={
                "name": "compute",
                "default_image": "tiny",
                "handoff": "webhook",
                "webhook_url": receiver.url,
                "webhook_secret": SECRET,
            },
            webhook_interval="0.2",
            webhook_retry_base="0.5",
            webhook_retry_max="2",
            webhook_timeout="2",
            reconcile_interval=str(INTERVAL),
            lease_seconds=str(LEASE),
            # Power-ons held back (staggered) keep leases on nodes for a few seconds: the
            # kills land while the victims hold some.
            power_on_rate="3",
            power_sync_interval="3",
        ) as f,
    ):
        first, second = f.replicas[1], f.replicas[2]
        with Poller(f) as poller, Leases(f) as leases:
            f.import_manifest()

            def holding(replica: Replica, at_least: int) -> bool:
                """Whether ``replica`` holds leases on nodes being provisioned."""
                held = leases.held_by(replica).values()
                return sum(s in ("provisioning", "provisioned") for s in held) >= at_least

            def installed(at_least: int) -> bool:
                states = Counter(leases.states.values())
                return states["provisioned"] + states["active"] >= at_least

            def never(replica: Replica) -> str:
                states = Counter(f.states().values())
                return f"replica {replica.index} held no nodes being provisioned; {states}"

            poll(lambda: holding(first, 3), 120, functools.partial(never, first))
            first_at = first.kill()
            first_orphans = leases.orphans(first, first_at)
            # Later, once machines have called back through the two replicas left.
            poll(
                lambda: installed(8) and holding(second, 1),
                60,
                functools.partial(never, second),
            )
            second_at = second.kill()
            orphans = {
                first: (first_at, first_orphans),
                second: (second_at, leases.orphans(second, second_at)),
            }
            states_at_kill = Counter(f.states().values())

            def all_active() -> bool:
                states = f.states()
                failed = [n for n, s in states.items() if s == "failed"]
                assert not failed, "nodes failed:\n" + f.explain(failed)
                return len(states) == NODES and all(s == "active" for s in states.values())

            poll(
                all_active,
                150,
                lambda: (
                    "not every node active:\n"
                    + f.explain([n for n, s in f.states().items() if s != "active"][:5])
                    + "\n"
                    + f.logs()
                ),
            )
            rollout = time.monotonic() - started
            # Takeovers: the lease owner of each orphan changes within the bound.
            bound = LEASE + INTERVAL + MARGIN
            recovery = []
            for replica, (killed_at, names) in orphans.items():
                for name in names:
                    at = leases.taken_over(replica, name, killed_at)
                    assert at is not None, f"{name}: replica {replica.index}'s lease never taken"
                    recovery.append(at - killed_at)
                    assert at - killed_at <= bound, (
                        f"{name}: taken over {at - killed_at:.1f} s after replica "
                        f"{replica.index} was killed; the bound is {bound:g} s"
                    )
        assert sum(len(names) for _, names in orphans.values()) >= 3, orphans
        # Boot requests and callbacks were answered by more than one replica.
        assert len(f.balancer.sent) >= 2, f.balancer.sent
        # Replica 0 alone was left to take the second victim's nodes over, and says so.
        scraped = f.api.get("/metrics").text
        found = re.search(r"^provisioner_reconciler_takeovers_total (\S+)$", scraped, re.M)
        assert found, scraped
        assert float(found[1]) >= len(orphans[second][1]), (found[0], orphans)
        assert not poller.failures, poller.failures[:10]
        assert poller.ok >= 20, poller.ok
        check_timelines(f)
        # Every node's two hand-off events reached the receiver, each enqueued once
        # (a repeated delivery of one event has the same key and counts once).
        expected = Counter(
            {(n, e): 1 for n in f.names for e in ("node.provisioned", "node.active")}
        )
        poll(
            lambda: receiver.events() == expected,
            30,
            lambda: (
                f"webhooks: {sorted((expected - receiver.events()).items())[:10]} missing, "
                f"{sorted((receiver.events() - expected).items())[:10]} more than expected"
            ),
        )
        assert not receiver.bad, receiver.bad[:5]
        print(
            f"\n{NODES} nodes active {rollout:.1f} s after the start; nodes at the kills: "
            f"{dict(states_at_kill)}; orphaned leases: "
            f"{[len(n) for _, n in orphans.values()]}, taken over after "
            f"{min(recovery):.1f}-{max(recovery):.1f} s (bound {bound:g} s); API polls "
            f"{poller.ok} ok; balancer: {dict(f.balancer.sent)}, {f.balancer.retried} "
            f"retried, {f.balancer.failed} answered 502"
        )


def check_timelines(f: Fleet) -> None:
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
