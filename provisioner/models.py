"""Database tables (SQLModel).

One class per table; API shapes live in ``schemas.py`` so that what is stored and what
is shown can differ (a BMC password is stored encrypted and never shown).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Table,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from provisioner.steps import DeploymentStatus, Step

# Named constraints keep migrations identical on SQLite and PostgreSQL.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def table_of(model: type[SQLModel]) -> Table:
    """The Core table behind a model, for the bulk statements of hot paths."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def utcnow() -> datetime:
    return datetime.now(UTC)


def _timestamp(index: bool = False) -> Any:
    return Field(
        default_factory=utcnow,
        sa_type=DateTime(timezone=True),
        nullable=False,
        index=index,
    )


class Node(SQLModel, table=True):
    # One server per rack unit; rows without a rack or unit do not collide (NULLs differ).
    # The (filter, name) indexes make a filtered cursor page (WHERE rack = ? AND name > ?
    # ORDER BY name) an index range scan instead of a walk in name order.
    __table_args__ = (
        UniqueConstraint("rack", "rack_unit"),
        Index("ix_node_rack_name", "rack", "name"),
        Index("ix_node_role_name", "role", "name"),
        Index("ix_node_state_name", "state", "name"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=63, unique=True, index=True)
    rack: str | None = Field(default=None, max_length=63, index=True)
    rack_unit: int | None = None
    role: str | None = Field(default=None, max_length=63, index=True)
    hardware_profile: str | None = Field(default=None, max_length=63)
    image: str | None = Field(default=None, max_length=63)
    state: str = Field(max_length=16, index=True)
    # The working state a failed node failed in: retry goes back there.
    failed_from: str | None = Field(default=None, max_length=16)
    power_state: str = Field(default="unknown", max_length=16)
    # Why the power state is unknown or in error, from the last failed BMC call.
    power_reason: str | None = Field(default=None, max_length=500)
    power_checked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Consecutive failed power polls; at the configured limit the node is flagged.
    power_failures: int = Field(default=0)
    # A power action an operator asked for that the reconciler has not carried out yet.
    target_power: str | None = Field(default=None, max_length=16)
    # Set at enrollment: the reconciler starts an inspection once, then clears it.
    auto_inspect: bool = Field(default=False)
    # Set at enrollment with a role: once ready, the reconciler provisions it once.
    auto_provision: bool = Field(default=False)
    # When the reconciler should look at a deploying node again (a deadline, a poll);
    # None: now. Bookkeeping like the lease, so it does not bump the version.
    wake_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # The reconciler replica working on the node, until when (see reconciler.py).
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    maintenance: bool = Field(default=False, index=True)
    maintenance_reason: str | None = Field(default=None, max_length=255)
    last_error: str | None = Field(default=None, max_length=2000)
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()
    version: int = Field(default=1)


class Bmc(SQLModel, table=True):
    # One BMC speaks for one machine: two nodes on one address and port would be powered
    # and booted as one. Every row has both columns (a node without a BMC, a discovered
    # one say, has no row), so NULLs, which differ from each other, never slip past it.
    __table_args__ = (UniqueConstraint("address", "port", name="uq_bmc_address_port"),)

    node_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("node.id", ondelete="CASCADE"), primary_key=True)
    )
    driver: str = Field(default="ipmi", max_length=16)
    address: str = Field(max_length=253)
    port: int = Field(default=623)
    username: str = Field(max_length=64)
    password_encrypted: str = Field(max_length=512)
    # Per-BMC overrides of the service-wide defaults; None means "use the default".
    timeout: float | None = None
    retries: int | None = None
    cipher_suite: int | None = None
    # HTTPS BMCs (Redfish): None means verify (against the CA bundle, else the pin).
    tls_verify: bool | None = None
    # The certificate pinned on first contact, "sha256:<hex>"; replaced only by an
    # operator accepting a changed certificate.
    tls_fingerprint: str | None = Field(default=None, max_length=71)


class Nic(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    node_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("node.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    mac: str = Field(max_length=17, unique=True, index=True)
    pxe: bool = Field(default=False)
    # The address this NIC last network-booted from: TFTP requests carry no MAC, so
    # their hops are put on the node's timeline by this address.
    boot_ip: str | None = Field(default=None, max_length=45, index=True)


class InventoryFact(SQLModel, table=True):
    __tablename__ = "inventory_fact"

    id: int | None = Field(default=None, primary_key=True)
    node_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("node.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    source: str = Field(max_length=32)
    collected_at: datetime = _timestamp()
    facts: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class Event(SQLModel, table=True):
    __table_args__ = (Index("ix_event_node_id_id", "node_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    node_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("node.id", ondelete="CASCADE"), nullable=False)
    )
    time: datetime = _timestamp()
    actor: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    from_state: str | None = Field(default=None, max_length=16)
    to_state: str | None = Field(default=None, max_length=16)
    message: str = Field(default="", max_length=2000)


class Role(SQLModel, table=True):
    name: str = Field(primary_key=True, max_length=63)
    description: str = Field(default="", max_length=255)
    default_image: str | None = Field(default=None, max_length=63)
    auto_provision: bool = True
    puppet_environment: str = Field(default="production", max_length=63)
    puppet_classes: list[str] = Field(default_factory=list, sa_type=JSON)
    parameters: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    packages: list[str] = Field(default_factory=list, sa_type=JSON)
    # How a provisioned node is handed to configuration management (handoff/__init__.py).
    handoff: str = Field(default="immediate", max_length=16)
    webhook_url: str | None = Field(default=None, max_length=1024)
    webhook_secret_encrypted: str | None = Field(default=None, max_length=512)
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()

    @property
    def webhook_secret_set(self) -> bool:
        return self.webhook_secret_encrypted is not None


class OsImage(SQLModel, table=True):
    __tablename__ = "os_image"

    name: str = Field(primary_key=True, max_length=63)
    os_family: str = Field(max_length=16)
    version: str = Field(max_length=32)
    kernel_url: str = Field(max_length=1024)
    initrd_url: str = Field(max_length=1024)
    repo_url: str = Field(default="", max_length=1024)
    answer_template: str = Field(max_length=32)
    kernel_args: str = Field(default="", max_length=1024)
    # How it gets onto a disk: "installer" (the kernel and initrd above, driven by an
    # answer file) or "image" (the deploy agent writes image_url, whose SHA-256 is
    # checksum, in format raw, raw.gz or qcow2).
    deploy: str = Field(default="installer", max_length=16)
    image_url: str = Field(default="", max_length=1024)
    checksum: str = Field(default="", max_length=71)
    format: str = Field(default="", max_length=8)
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=64)
    scope: str = Field(max_length=16)
    # SHA-256 of the token: tokens are 256-bit random, so a slow hash adds nothing.
    token_hash: str = Field(max_length=64, unique=True, index=True)
    prefix: str = Field(max_length=12)
    created_at: datetime = _timestamp()
    expires_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
    )


class Deployment(SQLModel, table=True):
    """One attempt to install (or wipe) a node, and the one-time token that proves which
    node and which attempt a boot request or installer callback belongs to.

    The token and the Puppet challenge are kept encrypted (the iPXE script is rendered
    whenever the node asks, so the service needs them back) and the token's hash is the
    lookup key. A newer deployment of the same node supersedes the older one; once a
    deployment has ended its token is refused.
    """

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    node_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("node.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    kind: str = Field(max_length=16)
    role: str | None = Field(default=None, max_length=63)
    image: str | None = Field(default=None, max_length=63)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    token_encrypted: str = Field(max_length=512)
    challenge_encrypted: str = Field(max_length=512)
    status: str = Field(default=DeploymentStatus.PENDING.value, max_length=16)
    # Where the reconciler is in carrying it out (provisioner/steps.py), since when, and
    # how many times that step has been tried (for the steps that retry with backoff).
    step: str = Field(default=Step.PUPPET_CLEAN.value, max_length=16)
    step_started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    step_attempts: int = Field(default=0)
    message: str = Field(default="", max_length=2000)
    # Deployments started by one bulk request share a batch and its max-in-flight.
    batch_id: uuid.UUID | None = Field(default=None, index=True)
    batch_limit: int | None = None
    created_at: datetime = _timestamp()
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # When a CSR with this deployment's challenge was signed: a challenge signs once.
    challenge_used_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # When configuration management took the node over (ENC fetched after the install).
    handoff_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Who does the machine's side (provisioner/steps.py Method): the image's installer,
    # or the deploy agent, whose last heartbeat and finished job are recorded here.
    method: str = Field(default="installer", max_length=16)
    agent_seen_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    agent_done_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class DiskWipe(SQLModel, table=True):
    """Evidence of one disk's wipe, as the deploy agent reported it: kept after the
    deployment ends, for the node's owner to show what was erased, how and when."""

    __tablename__ = "disk_wipe"

    id: int | None = Field(default=None, primary_key=True)
    node_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("node.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    deployment_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("deployment.id", ondelete="SET NULL"), nullable=True),
    )
    disk: str = Field(max_length=64)
    method: str = Field(max_length=16)
    bytes: int = Field(default=0, sa_type=BigInteger)
    seconds: float = Field(default=0.0)
    ok: bool = Field(default=False)
    verified: str = Field(default="", max_length=200)
    message: str = Field(default="", max_length=500)
    created_at: datetime = _timestamp()


class BootHop(SQLModel, table=True):
    """A boot request no node could be found for (a TFTP fetch from an address never
    seen before, say). Kept for discovery and debugging, trimmed to the newest few
    thousand."""

    __tablename__ = "boot_hop"

    id: int | None = Field(default=None, primary_key=True)
    time: datetime = _timestamp()
    client: str = Field(max_length=45)
    mac: str | None = Field(default=None, max_length=17)
    kind: str = Field(max_length=16)
    detail: str = Field(default="", max_length=500)


class WebhookDelivery(SQLModel, table=True):
    """The outbox of role webhooks: a row per event, written in the transaction that
    caused it and deleted never, so a restart or a receiver outage loses nothing.

    ``next_attempt_at`` doubles as the claim: a sender moves it past the request's
    timeout before sending, so another replica skips the row until that sender has
    either recorded the outcome or died.
    """

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ix_webhook_delivery_due", "delivered_at", "next_attempt_at"),
        Index("ix_webhook_delivery_node_id_id", "node_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    node_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("node.id", ondelete="CASCADE"), nullable=False)
    )
    deployment_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("deployment.id", ondelete="SET NULL"), nullable=True),
    )
    role: str = Field(max_length=63)
    event: str = Field(max_length=32)
    url: str = Field(max_length=1024)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    idempotency_key: str = Field(max_length=64, unique=True, index=True)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = _timestamp()
    delivered_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = _timestamp()
