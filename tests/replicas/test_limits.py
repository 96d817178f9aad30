"""The deploy limits and the power-on rate are the service's, not each replica's: three
replicas on one PostgreSQL share a rack's rollout and together keep to them.

- ``PROVISIONER_MAX_DEPLOYING``: the deployments in flight (powering on, installing,
  running the agent) are counted from the database every 20 ms throughout the rollout
  and never exceed the limit. Each replica checks the limit and takes a slot under a
  PostgreSQL advisory lock; without it, two replicas could both see the last slot free.
- ``PROVISIONER_POWER_ON_RATE``: the power-ons the timelines record are spread over at
  least the time the rate allows for their number (less a margin for the IPMI calls'
  own spread), where three replicas each keeping to the whole rate would be three times
  quicker.

Run alone with ``PROVISIONER_TEST_DATABASE_URL=... pytest -s tests/replicas/test_limits.py``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func
from sqlmodel import col, select

from provisioner.models import Deployment
from provisioner.steps import IN_FLIGHT, LIVE
from tests.replicas.checks import check_timelines
from tests.replicas.harness import fleet
from tests.replicas.postgres import need_postgres

NODES = 15
REPLICAS = 3


def test_replicas_keep_to_the_service_wide_deploy_limit(tmp_path: Path) -> None:
    limit = 2

    in_flight = (
        select(func.count())
        .select_from(Deployment)
        .where(col(Deployment.status).in_(LIVE), col(Deployment.step).in_(IN_FLIGHT))
    )
    counts: list[int] = []
    stop = threading.Event()
    with fleet(
        tmp_path,
        need_postgres(),
        replicas=REPLICAS,
        nodes=NODES,
        install_time=1.0,
        reconcile_interval="0.2",
        max_deploying=str(limit),
        power_on_rate="100",
    ) as f:

        def watch() -> None:
            while not stop.is_set():
                with f.db.connect() as connection:
                    counts.append(connection.execute(in_flight).scalar_one())
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            f.import_manifest()
            f.wait_all_active(NODES, 180)
        finally:
            stop.set()
            watcher.join(10)
        check_timelines(f)
    assert max(counts) == limit, (
        f"deployments in flight peaked at {max(counts)} with a limit of {limit} "
        f"over {len(counts)} looks: {Counter(counts)}"
    )


def test_replicas_keep_to_the_service_wide_power_on_rate(tmp_path: Path) -> None:
    rate = 3.0
    with fleet(
        tmp_path,
        need_postgres(),
        replicas=REPLICAS,
        nodes=NODES,
        reconcile_interval="0.2",
        power_on_rate=str(rate),
    ) as f:
        f.import_manifest()
        f.wait_all_active(NODES, 180)
        check_timelines(f)
        times = [
            row[0].timestamp()
            for row in f.rows(
                "SELECT time FROM event WHERE kind = 'power' "
                "AND message LIKE 'powered on to boot %' ORDER BY time"
            )
        ]
    # The provision powers every machine on (the inspection only reads the BMC here:
    # no agent is built).
    assert len(times) == NODES, times
    span, allowed = times[-1] - times[0], (len(times) - 1) / rate
    # Recorded once each call returns: the calls' durations may differ by a second.
    assert span >= allowed - 1.0, (
        f"{len(times)} power-ons in {span:.1f} s; at {rate:g} a second they take at "
        f"least {allowed:.1f} s"
    )
