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
import re
import time
from collections import Counter
from pathlib import Path

from tests.lab.test_e2e import SECRET
from tests.replicas.checks import Leases, Poller, check_timelines, receiving
from tests.replicas.harness import Replica, fleet
from tests.replicas.postgres import need_postgres
from tests.serving import poll

NODES = 50
LEASE = 5.0
INTERVAL = 0.5
# The test's polling (0.1 s), a reconciler tick and a claim on two busy cores.
MARGIN = 3.0


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
            power_on_rate="9",
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

            f.wait_all_active(NODES, 150)
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
