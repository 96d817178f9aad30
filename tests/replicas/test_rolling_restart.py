"""Three replicas on one PostgreSQL share a rack's rollout, and are restarted one at a
time with SIGTERM in the middle of it, as an upgrade restarts them.

What is checked, and how:

- each replica stops gracefully: it exits with status 0 within a few seconds of the
  SIGTERM (the requests' drain and the steps' grace run side by side, see
  ``provisioner serve`` and :meth:`provisioner.reconciler.Reconciler.hand_back`);
- it hands its leases back: right after its exit no node's lease names it, and every
  node it held at the SIGTERM that still had work to do is worked on again (its state,
  or its deployment's step or attempts, change, or another replica's lease is seen)
  within a third of the lease time after the exit; the lease is long (60 s), so
  expiry cannot explain it;
- the rollout ends as if nothing happened: every node ``active``, one inspection and
  one provision deployment each, the racking flow's transitions once each, callbacks
  once (:func:`tests.replicas.checks.check_timelines`, shared with the kill test);
- the API answers throughout: a client polling the node list and readiness through
  the balancer has no failed request, nor have the machines: the balancer skips a
  replica that refuses connections, and here does not retry a request a replica
  accepted and then cut short, so that one would fail.

TFTP is a ``provisioner pxe serve`` edge of its own here, so that every replica can be
restarted. Run it alone with
``PROVISIONER_TEST_DATABASE_URL=... pytest -s tests/replicas/test_rolling_restart.py``.
"""

from __future__ import annotations

import functools
import re
import time
from collections import Counter
from pathlib import Path

from provisioner.cli.server import DRAIN_SECONDS
from provisioner.reconciler import HAND_BACK_AFTER
from tests.replicas.checks import Leases, Poller, check_timelines
from tests.replicas.harness import Fleet, Replica, fleet
from tests.replicas.postgres import need_postgres
from tests.serving import poll

NODES = 24
LEASE = 60.0
INTERVAL = 0.5
# The drain and the grace overlap; the rest is the process's own teardown on two busy
# cores.
STOP_BOUND = max(DRAIN_SECONDS, HAND_BACK_AFTER) + 7.0
# Nodes due are polled every second (step_runner.POLL) and claimed at the next tick.
RESUMED_BOUND = LEASE / 3

_CUT = re.compile(r"stopping: (\d+) steps cut short")


def _progress(f: Fleet) -> dict[str, tuple[object, ...]]:
    """Per node: its state, lease owner and newest deployment's id, step and attempts."""
    rows = f.rows(
        "SELECT n.name, n.state, n.lease_owner, d.id, d.step, d.step_attempts FROM node n "
        "LEFT JOIN LATERAL (SELECT id, step, step_attempts FROM deployment "
        "WHERE node_id = n.id ORDER BY created_at DESC LIMIT 1) d ON true"
    )
    return {name: tuple(rest) for name, *rest in rows}


def _owned_by(owner: object, pid: int) -> bool:
    """Whether a lease was written by process ``pid`` (owners are host:pid:random)."""
    return isinstance(owner, str) and owner.split(":")[1] == str(pid)


def _restart(f: Fleet, replica: Replica, leases: Leases) -> dict[str, object]:
    """SIGTERM ``replica`` while it holds nodes, check it stopped as it should, start it
    again on its port; what happened, for the report."""
    held = leases.held_by(replica)
    pid = replica.pid
    code, took = replica.terminate()
    assert code == 0, f"replica {replica.index} exited {code}:\n{replica.log_tail()}"
    assert took <= STOP_BOUND, f"replica {replica.index} took {took:.1f} s to stop"
    at_exit = _progress(f)
    left = [name for name, (_, owner, *_) in at_exit.items() if _owned_by(owner, pid)]
    assert not left, f"replica {replica.index} left leases on {left}\n{f.explain(left)}"
    # What it held that still had work to do; one it had just made active has none.
    pending = [name for name in held if at_exit[name][0] != "active"]
    exited = time.monotonic()
    replica.start()

    def resumed(name: str, now: tuple[object, ...]) -> bool:
        state, owner, *deployment = now
        before_state, _, *before = at_exit[name]
        return (state, deployment) != (before_state, before) or (
            owner is not None and not _owned_by(owner, pid)
        )

    waiting = set(pending)

    def all_resumed() -> bool:
        now = _progress(f)
        waiting.difference_update(n for n in list(waiting) if resumed(n, now[n]))
        return not waiting

    poll(
        all_resumed,
        RESUMED_BOUND,
        lambda: (
            f"replica {replica.index}'s nodes not worked on again "
            f"{RESUMED_BOUND:g} s after its exit:\n" + f.explain(sorted(waiting))
        ),
    )
    resumed_after = time.monotonic() - exited
    poll(replica.ready, 90, lambda: f"replica {replica.index} did not come back")
    return {"held": len(held), "pending": len(pending), "stop": took, "resumed": resumed_after}


def test_replicas_restarted_one_at_a_time_mid_rollout(tmp_path: Path) -> None:
    bin_dir = need_postgres()
    started = time.monotonic()
    with fleet(
        tmp_path,
        bin_dir,
        replicas=3,
        nodes=NODES,
        tftp_edge=True,
        reconcile_interval=str(INTERVAL),
        lease_seconds=str(LEASE),
        # Power-ons held back (staggered, 4 s apart per replica: 0.75 a second shared by
        # three) keep leases on nodes for a while: the SIGTERMs land while the replicas
        # hold some, and cut some of those steps short. The pace also sets the rollout's
        # length (48 power-ons, over 60 s): at twice the rate, a loaded CI machine once
        # finished it while a restarted replica was still coming back.
        power_on_rate="0.75",
        power_sync_interval="3",
    ) as f:
        # A request a stopping replica cuts short is not moved to another one: it fails.
        f.balancer.retry_cut = False
        restarts = []
        with Poller(f, url=f.balancer.url) as poller, Leases(f) as leases:
            f.import_manifest()

            def holding(replica: Replica) -> bool:
                # One lease is enough: past the power-ons, steps hold a node briefly, one
                # at a time (a loaded CI machine once saw a replica take 46 leases and
                # never two at once in a 60 s wait).
                held = leases.held_by(replica).values()
                return any(s != "active" for s in held)

            def idle(replica: Replica) -> str:
                states = Counter(f.states().values())
                # Who took leases, by process: was this replica left out, or stuck?
                taken = Counter(
                    owner.split(":")[1]
                    for changes in leases.history.values()
                    for _, owner in changes
                    if owner is not None
                )
                pids = {r.index: r.pid for r in f.replicas}
                return (
                    f"replica {replica.index} held no nodes mid-rollout; {states}; leases "
                    f"taken by pid: {dict(taken)}, replicas' pids now: {pids}\n{f.logs()}"
                )

            for replica in f.replicas:
                poll(functools.partial(holding, replica), 60, functools.partial(idle, replica))
                restarts.append(_restart(f, replica, leases))

            f.wait_all_active(NODES, 90)
            rollout = time.monotonic() - started
        assert not poller.failures, poller.failures[:10]
        # Nor did the machines' requests (boot scripts, answer files, callbacks) fail.
        assert (f.balancer.cut, f.balancer.failed) == (0, 0), f.balancer.cut
        assert poller.ok >= 20, poller.ok
        check_timelines(f)
        cut = [sum(int(n) for n in _CUT.findall(r.log.read_text())) for r in f.replicas]
        print(
            f"\n{NODES} nodes active {rollout:.1f} s after the start; restarts: "
            + "; ".join(
                f"held {r['held']} ({r['pending']} pending), stopped in {r['stop']:.1f} s, "
                f"resumed after {r['resumed']:.1f} s"
                for r in restarts
            )
            + f"; steps cut short: {cut}; API polls {poller.ok} ok; balancer: "
            f"{dict(f.balancer.sent)}, {f.balancer.retried} moved on, {f.balancer.cut} cut, "
            f"{f.balancer.failed} answered 502"
        )
