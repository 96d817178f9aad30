"""What one running app holds: its settings, database, secrets and the long-lived parts
built from them. :func:`provisioner.app.create_app` makes one :class:`Services` and keeps
it as ``app.state.services``; routers reach it through one dependency
(:data:`provisioner.api.deps.ServicesDep`) and nothing else is kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from provisioner.agent.jobs import AgentJobs
from provisioner.bmc.pool import BmcPool
from provisioner.boot.files import FileObserver
from provisioner.boot.service import BootService
from provisioner.handoff import WebhookSender
from provisioner.metrics import Metrics
from provisioner.power import PowerSync
from provisioner.profiles import ProfileSet
from provisioner.reconciler import Reconciler
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.tokens import TokenCache
from pxe.tftp import TftpServer


@dataclass
class Services:
    """Not frozen: tests swap a part (a broken engine, an observer of boot files)."""

    settings: Settings
    engine: Engine
    vault: Vault
    token_cache: TokenCache
    metrics: Metrics
    profiles: ProfileSet
    bmc_pool: BmcPool
    reconciler: Reconciler
    power_sync: PowerSync
    boot: BootService
    agent: AgentJobs
    webhooks: WebhookSender
    # Told of every boot file sent (the boot service puts it on the node's timeline).
    file_observer: FileObserver
    # Set while the embedded TFTP server runs (PROVISIONER_TFTP_ENABLED).
    tftp: TftpServer | None = None
