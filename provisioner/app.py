"""The FastAPI application: wiring of settings, database, routers and middleware."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner import __version__, db, nodes, private_files
from provisioner.agent.jobs import AgentJobs
from provisioner.api import (
    actions,
    bmc,
    boot,
    boot_files,
    boot_hops,
    catalog,
    events,
    problems,
    racks,
    service,
    tokens,
)
from provisioner.api import agent as agent_api
from provisioner.api import handoff as handoff_api
from provisioner.api import nodes as nodes_api
from provisioner.api import profiles as profiles_api
from provisioner.bmc.pool import BmcPool
from provisioner.bmc.registry import DriverFactory, service_drivers
from provisioner.body_limit import BodySizeLimit
from provisioner.boot.embedded_tftp import embedded_tftp
from provisioner.boot.hops import HopRecorder
from provisioner.boot.service import BootService
from provisioner.handoff import WebhookSender
from provisioner.metrics import Metrics, MetricsMiddleware, ReplicaCollector, ReplicaWork
from provisioner.nodes.certificates import pin_recorder
from provisioner.power import PowerSync
from provisioner.profiles import load_profiles, shipped_profiles_dir
from provisioner.reconciler import Reconciler
from provisioner.role_rules import RoleRules
from provisioner.secrets import Vault
from provisioner.services import Services
from provisioner.settings import Settings, get_settings
from provisioner.tokens import TokenCache
from provisioner.ui import router as ui_router
from pxe.dhcp_log import DhcpLogFollower

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, driver_factory: DriverFactory | None = None
) -> FastAPI:
    """The service. ``driver_factory``, when given, reaches every node's BMC whatever
    driver the node names (tests pass a fake fleet's); else each node's driver does."""
    settings = settings or get_settings()
    engine = db.make_engine(settings.resolved_database_url, replica=True)
    vault = Vault.from_settings(settings)
    profiles = load_profiles(settings.profiles_dir or shipped_profiles_dir())
    pool = BmcPool(
        max_workers=settings.bmc_workers,
        per_bmc=settings.bmc_per_bmc,
        # The service's drivers record certificates pinned on first contact on the BMC's
        # row; a factory given by a test speaks for every BMC as it is.
        driver_factory=driver_factory or service_drivers(on_pin=pin_recorder(engine)),
    )
    reconciler = Reconciler(
        engine,
        vault,
        pool,
        settings,
        lambda: services.profiles,
        RoleRules.load(settings.role_rules),
    )
    hops = HopRecorder(engine, keep=settings.boot_hops_kept)

    def count_by_state() -> dict[str, int]:
        with Session(engine) as session:
            return nodes.count_by_state(session)

    metrics = Metrics(count_by_state)
    boot_service = BootService(
        engine, vault, settings, lambda: services.profiles, hops, metrics.discovery
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(db.upgrade, engine)
        log.info("database ready at %s", engine.url.render_as_string(hide_password=True))
        private_files.warn_if_open(settings.data_dir, db.sqlite_file(engine.url))
        # The modules loaded by now are permanent: keep full collections from walking
        # them again and again (they set the latency tail of every request otherwise).
        gc.collect()
        gc.freeze()
        tftp = None
        if settings.tftp_enabled:
            tftp = embedded_tftp(settings, boot_service, services.metrics.registry)
            await tftp.start(settings.tftp_address, settings.tftp_port)
            services.tftp = tftp
            log.info(
                "TFTP serving %s on %s port %d (UDP)",
                settings.resolved_tftp_root,
                settings.tftp_address,
                tftp.port,
            )
        loops = [asyncio.create_task(hops.run(), name="boot-hops")]
        if settings.dhcp_log is not None:
            follower = DhcpLogFollower(settings.dhcp_log, boot_service.record_dhcp_log)
            loops.append(asyncio.create_task(follower.run(), name="dhcp-log"))
            log.info("DHCP hops read from %s", settings.dhcp_log)
        reconciling = None
        if settings.reconciler:
            reconciling = asyncio.create_task(reconciler.run(), name="reconciler")
            loops.append(asyncio.create_task(services.webhooks.run(), name="webhooks"))
            if settings.power_sync_interval > 0:
                loops.append(asyncio.create_task(services.power_sync.run(), name="power-sync"))
        yield
        if reconciling is not None:
            # It claims nothing more, and hands back what it could not finish in time.
            reconciler.stop_claiming()
            await asyncio.gather(reconciling, return_exceptions=True)
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if tftp is not None:
            await tftp.stop()
        await hops.flush()
        boot_service.close()
        await reconciler.drain()  # what a test's ticks started
        pool.close()
        engine.dispose()

    # FastAPIOffline serves Swagger UI and ReDoc from files of its own package: the
    # default pages load them from a CDN, and show nothing on an isolated network.
    app = FastAPIOffline(
        title="provisioner",
        version=__version__,
        summary="Bare-metal provisioning: inventory, lifecycle, boot and hand-off.",
        lifespan=lifespan,
        # The service exports Prometheus metrics (/metrics). FastAPI's OpenTelemetry
        # bridge would otherwise look for configured providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    services = Services(
        settings=settings,
        engine=engine,
        vault=vault,
        token_cache=TokenCache(),
        metrics=metrics,
        profiles=profiles,
        bmc_pool=pool,
        reconciler=reconciler,
        power_sync=PowerSync(engine, vault, pool, settings),
        boot=boot_service,
        agent=AgentJobs(engine, vault, settings, lambda: services.profiles),
        webhooks=WebhookSender(engine, vault, settings),
        file_observer=boot_service.file_served,
    )
    app.state.services = services
    metrics.registry.register(
        ReplicaCollector(lambda: ReplicaWork.of(reconciler, services.power_sync))
    )

    problems.install(app)
    for router in (
        service.router,
        boot.router,
        boot_files.router,
        agent_api.router,
        boot_hops.router,
        nodes_api.router,
        actions.router,
        bmc.router,
        profiles_api.router,
        racks.router,
        catalog.roles,
        catalog.images,
        tokens.router,
        handoff_api.router,
        events.router,
        ui_router,
    ):
        app.include_router(router)
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(boot.IpxeScripts)
    app.add_middleware(problems.UnexpectedErrors)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The document FastAPI builds from the routes, with the error schema and the one
    route a middleware serves (/boot/ipxe) added."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = FastAPI.openapi(app)  # caches it in app.openapi_schema
    schema["paths"]["/boot/ipxe"] = boot.IPXE_PATH_ITEM
    problems.document(schema)
    return schema
