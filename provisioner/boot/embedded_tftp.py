"""The TFTP server inside ``provisioner serve`` (``PROVISIONER_TFTP_ENABLED=1``), for a
single machine that is both the service and the boot server of one network.

Same server as ``provisioner pxe serve``, but its per-MAC files and its trace go straight
to the boot service instead of over HTTP, and its counters join the service's /metrics.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from provisioner.boot.service import BootService
from provisioner.schemas import TftpTransfer
from provisioner.settings import Settings
from pxe.tftp import TftpServer, Transfer

log = logging.getLogger(__name__)


def embedded_tftp(settings: Settings, boot: BootService, registry: CollectorRegistry) -> TftpServer:
    # Per-MAC files name kernels by URL: the address booting nodes reach the API at.
    base = boot.base_url(settings.boot_url or f"http://{settings.host}:{settings.port}")
    if settings.boot_url is None and settings.host in ("0.0.0.0", "::"):  # noqa: S104
        log.warning(
            "PROVISIONER_BOOT_URL is unset: per-MAC TFTP files will name %s, which booting "
            "machines cannot reach; set it to this host's address on the boot network",
            base,
        )

    async def dynamic(filename: str, client: str) -> bytes | None:
        text = await run_in_threadpool(boot.tftp_file, filename, client, base)
        return None if text is None else text.encode()

    def observe(transfer: Transfer) -> None:
        boot.record_tftp([TftpTransfer.model_validate(transfer.report())])

    return TftpServer(
        settings.resolved_tftp_root, dynamic=dynamic, observer=observe, registry=registry
    )
