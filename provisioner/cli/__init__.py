"""The ``provisioner`` command line: a client of the REST API, plus the few commands that
run on the server itself (``serve``, ``db upgrade``, offline ``token create``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from provisioner.cli import bmc as _bmc  # noqa: F401  (adds node power/bootdev/inventory)
from provisioner.cli.agent import agent_app
from provisioner.cli.catalog import image_app, role_app, token_app
from provisioner.cli.client import CliError, GlobalOptions, token_option
from provisioner.cli.demo import demo
from provisioner.cli.groups import CONTEXT_SETTINGS, HelpGroup
from provisioner.cli.handoff import ansible_inventory, autosign, enc
from provisioner.cli.nodes import node_app, rack_app
from provisioner.cli.output import error
from provisioner.cli.pxe import pxe_app
from provisioner.cli.server import db_app, serve


class _Group(HelpGroup):
    """Turns expected failures into one line on stderr instead of a traceback."""

    # Any: the Context class is click's or typer's vendored copy depending on the version.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            error(str(exc))
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="provisioner",
    help="Bare-metal provisioning: inventory, lifecycle and hand-off.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
    # Locals in a traceback could include the API token or a BMC password.
    pretty_exceptions_show_locals=False,
)
app.add_typer(node_app, name="node")
app.add_typer(rack_app, name="rack")
app.add_typer(role_app, name="role")
app.add_typer(image_app, name="image")
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
app.add_typer(pxe_app, name="pxe")
app.add_typer(agent_app, name="agent")
app.command()(serve)
app.command()(demo)
app.command()(enc)
app.command()(autosign)
app.command("ansible-inventory")(ansible_inventory)


@app.callback()
def _global_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="PROVISIONER_URL", help="API base URL (default http://127.0.0.1:8080)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        token_option(
            "API token; prefer the environment variable, command lines are visible in ps."
        ),
    ] = None,
) -> None:
    ctx.obj = GlobalOptions(url=url, token=token)


def main() -> None:
    app(prog_name="provisioner")
