"""How every ``provisioner`` command group is built, so that help reads alike everywhere.

Help is click's plain text rather than rich's panels: it is rewrapped to the terminal's
width (COLUMNS, else the terminal, else 80 columns) whatever the line breaks in the
source, and nothing in it is ever cut short, where rich's tables cut option names to fit
80 columns."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

# click caps help at 80 columns unless told otherwise: follow the terminal however wide.
CONTEXT_SETTINGS = {"max_content_width": 10_000}


class HelpGroup(TyperGroup):
    # Any: the Context and HelpFormatter classes are click's or typer's vendored copies
    # depending on the version.
    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # click cuts each command's summary to what fits on one line, with "..."; here it
        # is its whole first sentence, wrapped like an option's help.
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def command_group(help: str) -> typer.Typer:
    """A sub-command group (``provisioner node``, ``role``, ...)."""
    return typer.Typer(cls=HelpGroup, help=help, no_args_is_help=True, rich_markup_mode=None)
