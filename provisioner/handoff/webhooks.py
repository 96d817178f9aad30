"""Role webhooks: a durable outbox, HMAC-signed deliveries, retries until a 2xx.

An event is a ``webhook_delivery`` row written in the same transaction as the state
change it reports, so it exists exactly when the change does, and survives restarts.
Delivery is at least once: a sender that dies after the receiver answered but before
recording it sends again. Receivers drop repeats by the ``X-Provisioner-Delivery`` key.

A node's events go out in the order they happened: only its oldest undelivered event
is sent, so a receiver never sees ``node.active`` before ``node.provisioned``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, exists, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from provisioner import __version__, db, outage
from provisioner.models import (
    Deployment,
    Node,
    Role,
    WebhookDelivery,
    table_of,
    utcnow,
)
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.timeline import Actor, EventKind, note

log = logging.getLogger(__name__)

PROVISIONED = "node.provisioned"
ACTIVE = "node.active"
FAILED = "node.failed"

_jitter = secrets.SystemRandom()


def signature(secret: str, body: bytes) -> str:
    """The ``X-Provisioner-Signature`` header: HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def enqueue(
    session: Session, node: Node, role: Role, event: str, deployment: Deployment | None
) -> None:
    """Add an event for ``role``'s webhook to the session (the caller commits)."""
    assert role.webhook_url is not None, "only webhook roles get deliveries"
    key = uuid.uuid4().hex
    now = utcnow()
    payload: dict[str, Any] = {
        "delivery": key,
        "event": event,
        "time": now.isoformat(),
        "node": {
            "id": str(node.id),
            "name": node.name,
            "rack": node.rack,
            "rack_unit": node.rack_unit,
            "role": node.role,
            "hardware_profile": node.hardware_profile,
            "image": node.image,
        },
        "deployment": None
        if deployment is None
        else {"id": str(deployment.id), "image": deployment.image, "status": deployment.status},
    }
    if event == FAILED:
        payload["error"] = node.last_error
    session.add(
        WebhookDelivery(
            node_id=node.id,
            deployment_id=deployment.id if deployment else None,
            role=role.name,
            event=event,
            url=role.webhook_url,
            payload=payload,
            idempotency_key=key,
            next_attempt_at=now,
            created_at=now,
        )
    )


def pending_handoff(session: Session, deployment: Deployment) -> WebhookDelivery | None:
    """The ``node.provisioned`` delivery of ``deployment``, if one was enqueued."""
    return session.exec(
        select(WebhookDelivery).where(
            col(WebhookDelivery.deployment_id) == deployment.id,
            col(WebhookDelivery.event) == PROVISIONED,
        )
    ).first()


@dataclass(frozen=True)
class _Job:
    id: int
    node_id: uuid.UUID
    deployment_id: uuid.UUID | None
    event: str
    key: str
    url: str
    body: bytes
    attempt: int
    secret: str | None
    # Why it cannot be sent at all (no secret): recorded like a failed attempt.
    problem: str | None


# Deliveries claimed per look: enough to keep a rollout's hand-offs moving, few enough
# that a replica that dies holds back little.
_BATCH = 100


@dataclass
class WebhookSender:
    """Sends due deliveries; several replicas may run one each on a shared database."""

    engine: Engine
    vault: Vault
    settings: Settings

    @property
    def _claim(self) -> timedelta:
        """How long a claimed delivery is skipped by others: until a send has surely ended."""
        return timedelta(seconds=5 * self.settings.webhook_timeout + 10)

    async def run(self) -> None:
        while True:
            sent = 0
            # A round always asks the database for the deliveries due.
            with outage.of(self.engine).watch("webhook delivery round"):
                sent = await self.deliver_due()
            # After a success the node's next event may be due at once.
            if not sent:
                await asyncio.sleep(self.settings.webhook_interval)

    async def deliver_due(self) -> int:
        """Send every due delivery once; return how many receivers acknowledged."""
        jobs = await run_in_threadpool(self._claim_due)
        if not jobs:
            return 0
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout) as client:
            errors = await asyncio.gather(*(self._send(client, job) for job in jobs))
        await run_in_threadpool(self._record, list(zip(jobs, errors, strict=True)))
        return errors.count(None)

    def _claim_due(self) -> list[_Job]:
        now = utcnow()
        table = table_of(WebhookDelivery)
        earlier = aliased(WebhookDelivery)
        blocked = exists().where(
            col(earlier.node_id) == col(WebhookDelivery.node_id),
            col(earlier.delivered_at).is_(None),
            col(earlier.id) < col(WebhookDelivery.id),
        )
        query = (
            select(WebhookDelivery)
            .where(
                col(WebhookDelivery.delivered_at).is_(None),
                col(WebhookDelivery.next_attempt_at) <= now,
                ~blocked,
            )
            .order_by(col(WebhookDelivery.id))
            .limit(_BATCH)
        )
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        jobs = []
        with Session(self.engine) as session:
            due = session.exec(query).all()
            for row in due:
                role = session.get(Role, row.role)
                # A corrected URL applies to deliveries still waiting.
                url = role.webhook_url if role and role.webhook_url else row.url
                # `attempts` is the row's version: of two replicas, one claims it.
                claimed = session.execute(
                    update(table)
                    .where(
                        table.c.id == row.id,
                        table.c.attempts == row.attempts,
                        table.c.delivered_at.is_(None),
                    )
                    .values(attempts=row.attempts + 1, next_attempt_at=now + self._claim, url=url)
                )
                if claimed.rowcount:  # type: ignore[attr-defined]
                    jobs.append(self._job(row, role, url))
            session.commit()
        return jobs

    def _job(self, row: WebhookDelivery, role: Role | None, url: str) -> _Job:
        secret, problem = None, None
        if role is None or role.webhook_secret_encrypted is None:
            problem = (
                f"role {row.role} has no webhook secret; set one with PATCH "
                f'/api/v1/roles/{row.role} {{"webhook_secret": ...}}'
            )
        else:
            try:
                secret = self.vault.decrypt(role.webhook_secret_encrypted)
            except ValueError as exc:
                problem = str(exc)
        assert row.id is not None
        return _Job(
            id=row.id,
            node_id=row.node_id,
            deployment_id=row.deployment_id,
            event=row.event,
            key=row.idempotency_key,
            url=url,
            body=json.dumps(row.payload, sort_keys=True, separators=(",", ":")).encode(),
            attempt=row.attempts + 1,
            secret=secret,
            problem=problem,
        )

    async def _send(self, client: httpx.AsyncClient, job: _Job) -> str | None:
        """None when the receiver acknowledged, else what went wrong."""
        if job.secret is None:
            return job.problem
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"provisioner/{__version__}",
            "X-Provisioner-Event": job.event,
            "X-Provisioner-Delivery": job.key,
            "X-Provisioner-Signature": signature(job.secret, job.body),
        }
        try:
            response = await client.post(job.url, content=job.body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__} from {job.url}: {exc}"
        if response.is_success:
            return None
        return f"HTTP {response.status_code} from {job.url}"

    def _record(self, outcomes: list[tuple[_Job, str | None]]) -> None:
        now = utcnow()
        table = table_of(WebhookDelivery)
        with Session(self.engine) as session:
            # The nodes it wakes (_handed_off), in one order with the other updates of
            # several nodes.
            handed_off = [j.node_id for j, error in outcomes if error is None and _hands_off(j)]
            db.lock_in_order(session, table_of(Node), handed_off)
            for job, error in outcomes:
                if error is None:
                    session.execute(
                        update(table)
                        .where(table.c.id == job.id)
                        .values(delivered_at=now, last_error=None)
                    )
                    if _hands_off(job):
                        self._handed_off(session, job)
                    delivered = f"{job.event} delivered to {job.url} (attempt {job.attempt})"
                    note(session, job.node_id, EventKind.WEBHOOK, Actor.WEBHOOK, delivered)
                    continue
                delay = self._backoff(job.attempt)
                log.warning(
                    "webhook %s (%s) not delivered, attempt %d: %s; retrying in %.1f s",
                    job.event,
                    job.key,
                    job.attempt,
                    error,
                    delay,
                )
                session.execute(
                    update(table)
                    .where(table.c.id == job.id, table.c.delivered_at.is_(None))
                    .values(next_attempt_at=now + timedelta(seconds=delay), last_error=error[:500])
                )
            session.commit()

    @staticmethod
    def _handed_off(session: Session, job: _Job) -> None:
        # The node's row first, then its deployment's, in the step runner's order: the
        # other order deadlocked with a step being recorded on the node (seen when the
        # deliveries held back by a database outage were all recorded at once).
        wake(session, job.node_id)
        session.execute(
            update(table_of(Deployment))
            .where(col(Deployment.id) == job.deployment_id, col(Deployment.handoff_at).is_(None))
            .values(handoff_at=utcnow())
        )

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped; half of it random so that receivers coming back are not
        hit by every sender at the same instant."""
        ceiling: float = min(
            self.settings.webhook_retry_max,
            self.settings.webhook_retry_base * 2.0 ** min(attempt - 1, 30),
        )
        return ceiling / 2 + _jitter.uniform(0, ceiling / 2)


def _hands_off(job: _Job) -> bool:
    """Whether delivering ``job`` completes its deployment's hand-off."""
    return job.event == PROVISIONED and job.deployment_id is not None


def wake(session: Session, node_id: uuid.UUID) -> None:
    """Have the reconciler look at a node waiting for its hand-off now, not at its next
    poll (no commit)."""
    session.execute(update(Node).where(col(Node.id) == node_id).values(wake_at=None))
