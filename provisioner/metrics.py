"""Prometheus metrics: HTTP requests by route and status, nodes by state, and what
bounded discovery turned away."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisioner.lifecycle import State

if TYPE_CHECKING:
    from provisioner.power import PowerSync
    from provisioner.reconciler import Reconciler


class NodeStateCollector(Collector):
    """Counts nodes per state when scraped, so the numbers are never stale."""

    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        self._count = count_by_state

    def collect(self) -> Iterator[Metric]:
        counts = self._count()
        family = GaugeMetricFamily(
            "provisioner_nodes", "Nodes by lifecycle state.", labels=["state"]
        )
        for state in State:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


@dataclass(frozen=True)
class ReplicaWork:
    """What this replica does of the work the replicas share (see reconciler.py)."""

    owner: str  # the name its leases carry: host:pid:random
    leases_held: int
    claims: int
    takeovers: int
    power_sync_rounds: int

    @classmethod
    def of(cls, reconciler: Reconciler, power_sync: PowerSync) -> ReplicaWork:
        """As of now (/metrics and /readyz say the same)."""
        return cls(
            reconciler.owner,
            reconciler.leases_held,
            reconciler.claims,
            reconciler.takeovers,
            power_sync.rounds,
        )


class ReplicaCollector(Collector):
    """Which replica this is and what it holds, read when scraped."""

    def __init__(self, work: Callable[[], ReplicaWork]) -> None:
        self._work = work

    def collect(self) -> Iterator[Metric]:
        work = self._work()
        replica = GaugeMetricFamily(
            "provisioner_replica", "This replica, by the name its leases carry.", labels=["owner"]
        )
        replica.add_metric([work.owner], 1)
        yield replica
        yield GaugeMetricFamily(
            "provisioner_reconciler_leases_held",
            "Nodes this replica holds a lease on: its steps in flight.",
            value=work.leases_held,
        )
        yield CounterMetricFamily(
            "provisioner_reconciler_claims",
            "Nodes this replica claimed since it started.",
            value=work.claims,
        )
        yield CounterMetricFamily(
            "provisioner_reconciler_takeovers",
            "Claims of nodes whose lease another replica let run out (it died or hung).",
            value=work.takeovers,
        )
        yield CounterMetricFamily(
            "provisioner_power_sync_rounds",
            "Power sync rounds this replica ran (one replica at a time runs one).",
            value=work.power_sync_rounds,
        )


class DiscoveryCounters:
    """What bounding discovery (provisioner/boot/discovery.py) did."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "provisioner_discovery_dropped",
            "Boot requests from unknown MACs not recorded: over PROVISIONER_DISCOVERY_RATE.",
            registry=registry,
        )
        self.pruned = Counter(
            "provisioner_discovery_pruned",
            "Discovered nodes deleted to stay within PROVISIONER_DISCOVERY_MAX.",
            registry=registry,
        )


class Metrics:
    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        # One registry per app: tests build many apps in one process.
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "provisioner_http_requests",
            "HTTP requests handled.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "provisioner_http_request_duration_seconds",
            "Time to answer HTTP requests.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.registry.register(NodeStateCollector(count_by_state))
        self.discovery = DiscoveryCounters(self.registry)
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def series(self, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
        """The request counter and latency histogram of one label set. Kept: looking
        them up in prometheus_client on every request costs more than counting."""
        key = (method, route, status)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        return found


class MetricsMiddleware:
    """Pure ASGI, so it adds little to every request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            # Route templates, not raw paths: node names must not explode the label set.
            path = getattr(route, "path", None) or "unmatched"
            count, latency = self.metrics.series(scope["method"], path, status)
            count.inc()
            latency.observe(time.perf_counter() - start)
