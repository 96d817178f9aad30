"""PostgreSQL stops in the middle of a rollout shared by two replicas, and is started
again 10 s later (issue 13, database faults). Nothing is restarted but the database.

What is checked, and how:

- readiness follows the database by itself: from the moment the server is stopped,
  ``GET /readyz`` on each replica answers 503 (a problem), each answer within a bound
  (no hang on a dead connection or a full pool), and 200 again within a bound of the
  start, without a restart of the replica;
- a node-facing request in the outage gets a 503 with ``Retry-After``, which an
  installer's ``curl --retry`` retries, not a 500: the iPXE script (served by a
  middleware ahead of the routes) and an installer's callback;
- each replica logs the outage once: one line when it finds the database unreachable,
  one when it answers again, and no traceback at all (before, every reconciler tick,
  lease renewal, power-sync round, webhook round and boot-hop write logged one);
- the rollout completes with nothing lost or doubled: every node ``active``, one
  provision deployment each, every timeline's transitions once and in order, the
  installer's callbacks once (:func:`tests.replicas.checks.check_timelines`), each
  webhook event enqueued once;
- no node is kept: the steps in flight at the stop could neither record their result
  nor release their lease; each replica lets go of them all the same (it holds no
  lease at the end) and releases their leases once the database answers, so that none
  waits for its lease to run out (no takeover: the lease is longer than the outage).

Where the outage falls: once every machine has made its installer's last callback,
while the nodes wait for their hand-off, which the role's webhook receiver holds back
until just before the stop. An installer that fetches its answer file during an
outage gives up, in the lab as Anaconda and debian-installer do, and its deployment
would fail at its deadline: that is the installer's limit, not something a replica
can make up for. The outage still cuts short the steps in flight (hand-off polls, the
disk and reboot steps), the deliveries being recorded, the power sync and the boot
trace. Run it alone with
``PROVISIONER_TEST_DATABASE_URL=... pytest -s tests/replicas/test_db_restart.py``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.lab.test_e2e import SECRET, Receiver
from tests.replicas.checks import check_timelines
from tests.replicas.harness import Fleet, fleet
from tests.replicas.postgres import need_postgres
from tests.serving import free_port, poll

NODES = 24
OUTAGE = 10.0
# The default, longer than the outage: a lease a replica failed to release must be
# released once the database is back, neither renewed nor left to run out (with a lease
# shorter than the outage, another replica would take the node over and hide both).
LEASE = 30.0
# A readiness answer, and the first 503 after the stop, on two busy cores.
ANSWER_BOUND = 5.0
# Readiness again after the start: the pool's next checkout connects anew.
READY_AGAIN_BOUND = 15.0


@dataclass
class HeldReceiver(Receiver):
    """A webhook receiver that answers 503 until :meth:`release` (the role's
    configuration stage is not ready), as a receiver may."""

    released: threading.Event = field(default_factory=threading.Event)
    refused: int = 0

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        if not self.released.is_set():
            self.refused += 1
            return 503
        return super().receive(headers, body)

    def release(self) -> None:
        self.released.set()


@dataclass
class Readiness:
    """Every /readyz answer of one replica: (when asked, status or error, seconds)."""

    index: int
    url: str
    answers: list[tuple[float, int | str, float]] = field(default_factory=list)

    def ask(self) -> int | str:
        at = time.time()
        try:
            status: int | str = httpx.get(
                f"{self.url}/readyz", timeout=ANSWER_BOUND * 2
            ).status_code
        except httpx.HTTPError as exc:
            status = repr(exc)
        self.answers.append((at, status, time.time() - at))
        return status

    def ready_again(self, f: Fleet) -> None:
        poll(
            lambda: self.ask() == 200,
            READY_AGAIN_BOUND,
            lambda: f"replica {self.index} not ready again: {self.answers[-3:]}\n{f.logs()}",
        )


def _installed(f: Fleet) -> int:
    """Nodes whose installer has made its last callback."""
    done = f.rows("SELECT count(DISTINCT node_id) FROM event WHERE kind = 'callback-done'")
    return int(done[0][0])


def _node_facing_in_outage(f: Fleet, mac: str) -> list[str]:
    """What is wrong with the node-facing answers of every replica now."""
    problems = []
    for replica in f.replicas:
        with httpx.Client(base_url=replica.url, timeout=ANSWER_BOUND * 2) as client:
            for method, path in (
                ("GET", f"/boot/ipxe?mac={mac}"),
                ("POST", "/callback/no-such-token-0123456789/started"),
            ):
                response = client.request(method, path)
                if response.status_code != 503 or "Retry-After" not in response.headers:
                    problems.append(
                        f"replica {replica.index}: {method} {path.split('?')[0]}: "
                        f"{response.status_code} {dict(response.headers)} {response.text[:200]}"
                    )
    return problems


def test_postgres_restarted_mid_rollout(tmp_path: Path) -> None:
    bin_dir = need_postgres()
    started = time.monotonic()
    receiver = HeldReceiver(free_port())
    receiver.start()
    try:
        with fleet(
            tmp_path,
            bin_dir,
            replicas=2,
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
            webhook_retry_max="1",
            webhook_timeout="1",
            reconcile_interval="0.5",
            lease_seconds=str(LEASE),
            power_on_rate="4",
            power_sync_interval="2",
        ) as f:
            f.import_manifest()
            poll(
                lambda: _installed(f) == NODES and receiver.refused > 0,
                120,
                lambda: (
                    f"{_installed(f)} of {NODES} installed, "
                    f"{receiver.refused} hand-offs refused; {Counter(f.states().values())}"
                ),
            )
            receiver.release()
            mac = f.rows("SELECT mac FROM nic LIMIT 1")[0][0]
            states_at_stop = Counter(f.states().values())
            readiness = [Readiness(r.index, r.url) for r in f.replicas]
            f.cluster.stop()
            stopped = time.time()
            node_facing = _node_facing_in_outage(f, mac)
            while time.time() < stopped + OUTAGE:
                for asking in readiness:
                    asking.ask()
                time.sleep(0.2)
            f.cluster.start()
            restarted = time.time()
            for asking in readiness:
                asking.ready_again(f)

            f.wait_all_active(NODES, 90)
            rollout = time.monotonic() - started

            def work() -> list[dict[str, Any]]:
                return [httpx.get(f"{r.url}/readyz").json()["replica"] for r in f.replicas]

            # A step in flight at the stop failed to record and to release: its replica
            # let go of it all the same, and released its lease.
            poll(
                lambda: all(w["leases_held"] == 0 for w in work()),
                15,
                lambda: f"a replica still holds nodes: {work()}\n{f.logs()}",
            )
            assert sum(w["takeovers"] for w in work()) == 0, work()
            check_timelines(f)
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
            assert not node_facing, node_facing

            # Readiness: 503 during the outage, each answer in time, 200 after the start.
            for asked in readiness:
                during = [a for a in asked.answers if stopped <= a[0] < restarted]
                assert during, f"replica {asked.index}: never asked during the outage"
                slow = [a for a in asked.answers if a[2] > ANSWER_BOUND]
                assert not slow, f"replica {asked.index}: slow answers {slow}"
                assert all(status == 503 for _, status, _ in during), (
                    f"replica {asked.index}: {[s for _, s, _ in during]}"
                )
                assert during[0][0] - stopped <= ANSWER_BOUND, during[0]

            # The outage, once per replica, and no traceback.
            for replica in f.replicas:
                log = replica.log.read_text(errors="replace")
                lines = log.splitlines()
                down = [line for line in lines if "database unreachable" in line]
                back = [line for line in lines if "database reachable again" in line]
                assert len(down) == 1, f"replica {replica.index}:\n" + "\n".join(down[:10])
                assert len(back) == 1, f"replica {replica.index}:\n" + "\n".join(back[:10])
                assert "Traceback" not in log, f"replica {replica.index}:\n{replica.log_tail(60)}"
            print(
                f"\n{NODES} nodes active {rollout:.1f} s after the start; at the stop: "
                f"{dict(states_at_stop)}; ready again "
                f"{max(r.answers[-1][0] for r in readiness) - restarted:.1f} s after the "
                f"restart; hand-offs refused before: {receiver.refused}; repeated "
                f"deliveries: {sum(receiver.repeats.values())}; outage lines: "
                + "; ".join(
                    line.split(" - ")[-1][:140]
                    for r in f.replicas
                    for line in r.log.read_text(errors="replace").splitlines()
                    if "database unreachable" in line or "database reachable again" in line
                )
            )
    finally:
        receiver.stop()
