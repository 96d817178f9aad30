"""The FastAPI application: wiring of settings, database, routers and middleware."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner import __version__, db, nodes
from provisioner.api import catalog, problems, racks, service, tokens
from provisioner.api import nodes as nodes_api
from provisioner.limits import BodySizeLimit
from provisioner.metrics import Metrics, MetricsMiddleware
from provisioner.secrets import Vault
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = db.make_engine(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(db.upgrade, engine)
        log.info("database ready at %s", engine.url.render_as_string(hide_password=True))
        yield
        engine.dispose()

    def count_by_state() -> dict[str, int]:
        with Session(engine) as session:
            return nodes.count_by_state(session)

    app = FastAPI(
        title="provisioner",
        version=__version__,
        summary="Bare-metal provisioning: inventory, lifecycle, boot and hand-off.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.vault = Vault.from_settings(settings)
    app.state.metrics = Metrics(count_by_state)

    problems.install(app)
    for router in (
        service.router,
        nodes_api.router,
        racks.router,
        catalog.roles,
        catalog.images,
        tokens.router,
    ):
        app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
