"""Commands that run on the server itself and open the database directly: ``serve``,
``db upgrade`` and offline ``token create`` (which must work before the API is up).

The service's modules are imported inside the functions: client commands such as
``provisioner node list`` should not pay for SQLAlchemy, Alembic and the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from provisioner.cli.client import CliError
from provisioner.cli.groups import command_group
from provisioner.cli.output import info, note

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from provisioner.db import Migration
    from provisioner.settings import Settings

db_app = command_group("Database maintenance.")

# On SIGTERM, seconds ``serve`` lets open requests finish before it stops anyway.
DRAIN_SECONDS = 5


def _settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    from provisioner.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"PROVISIONER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}") from exc
    # Options were validated by Typer already; they win over the environment.
    return settings.model_copy(update=overrides) if overrides else settings


def masked_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _reason(exc: Exception) -> str:
    # The driver's own first line; SQLAlchemy's wrapper adds SQL and a docs link.
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _migrated_engine(settings: Settings) -> tuple[Engine, Migration | None]:
    from sqlalchemy.exc import SQLAlchemyError

    from provisioner.db import make_engine, upgrade

    try:
        engine = make_engine(settings.resolved_database_url)
        return engine, upgrade(engine)
    except (SQLAlchemyError, OSError) as exc:
        shown = masked_url(settings.resolved_database_url)
        raise CliError(f"cannot open the database {shown}: {_reason(exc)}") from exc


def create_token_offline(name: str, scope: str, expires_in_days: int | None) -> str:
    """Store a new token straight in the database; return the token itself."""
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session

    from provisioner.schemas import TokenIn
    from provisioner.tokens import create_token

    try:
        request = TokenIn.model_validate(
            {"name": name, "scope": scope, "expires_in_days": expires_in_days}
        )
    except ValidationError as exc:
        raise CliError(
            "invalid token: " + "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        ) from exc
    settings = _settings()
    engine, _ = _migrated_engine(settings)
    try:
        with Session(engine) as session:
            row, token = create_token(
                session,
                name=request.name,
                scope=request.scope,
                expires_in_days=request.expires_in_days,
            )
    except SQLAlchemyError as exc:
        raise CliError(f"cannot store the token: {_reason(exc)}") from exc
    finally:
        engine.dispose()
    note(
        f"created {row.scope} token {row.name!r} (id {row.id}) in "
        f"{masked_url(settings.resolved_database_url)}"
    )
    return token


def serve(
    host: Annotated[
        str | None, typer.Option(help="Listen address (default PROVISIONER_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Listen port (default PROVISIONER_PORT or 8080)."),
    ] = None,
) -> None:
    """Run the API service (migrates the database on start).

    SIGTERM (or Ctrl-C) stops it gracefully, exit status 0. At once its reconciler
    claims no more nodes and hands back the steps in flight it cannot finish in a few
    seconds (:meth:`provisioner.reconciler.Reconciler.hand_back`); meanwhile the
    listening socket closes and open requests have :data:`DRAIN_SECONDS` to finish."""
    import signal

    import uvicorn

    from provisioner import logs
    from provisioner.app import create_app
    from provisioner.role_rules import RoleRulesError
    from provisioner.zerocopy import ZeroCopyHttpProtocol

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = _settings(**overrides)
    logs.configure(settings.log_level)
    # Beside the service's log lines, which go to stderr.
    note(f"database: {masked_url(settings.resolved_database_url)}")
    try:
        app = create_app(settings)
    except RoleRulesError as exc:
        raise CliError(f"{exc} (PROVISIONER_ROLE_RULES)") from exc
    reconciler = app.state.services.reconciler

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            reconciler.stop_claiming()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        http=ZeroCopyHttpProtocol,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=DRAIN_SECONDS,
    )

    def stopped(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    # uvicorn raises the signal that stopped it again once it is done: a stop asked
    # for is then a success, not a death by SIGTERM (or a KeyboardInterrupt).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopped)
    server = Server(config)
    server.run()
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: it could not start (the port is taken...)


@db_app.command("upgrade")
def upgrade_db() -> None:
    """Create the database or migrate it to the latest schema."""
    settings = _settings()
    engine, migration = _migrated_engine(settings)
    engine.dispose()
    shown = masked_url(settings.resolved_database_url)
    if migration is None:
        info(f"{shown} has the latest schema already; nothing to migrate")
    else:
        before = migration.before or "an empty database"
        info(f"migrated {shown} from {before} to {migration.after}, the latest schema")
