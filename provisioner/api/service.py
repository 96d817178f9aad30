"""Unauthenticated service endpoints for load balancers and Prometheus."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from provisioner import db, outage
from provisioner.agent import build
from provisioner.api.deps import ServicesDep
from provisioner.api.problems import problem_response, responses
from provisioner.metrics import ReplicaWork

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz", response_model=None, responses=responses((503, "The database does not answer."))
)
def readyz(services: ServicesDep) -> dict[str, Any] | Response:
    """The process can serve: its database answers. Says which replica answered and
    what it holds of the work the replicas share, as its /metrics do."""
    database = outage.of(services.engine)
    try:
        db.ping(services.engine)
    except SQLAlchemyError as exc:
        if outage.unreachable(exc):
            # Logged once per outage, with the loops' failures.
            database.failed("readiness check", exc)
        return problem_response(503, f"The database is unreachable ({type(exc).__name__}).")
    database.answered()
    work = ReplicaWork.of(services.reconciler, services.power_sync)
    # The agent build this replica boots machines with: replicas that differ show it.
    agent = build.current(services.settings.resolved_agent_dir)
    return {"status": "ready", "replica": asdict(work), "agent": agent.key if agent else None}


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    body = generate_latest(services.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
