"""What commands print: rich tables for people, the API's JSON for scripts.

Much of what is printed was supplied by a booting machine or a BMC (an installer's
progress message, FRU strings, an error built from them) and is stored as given; any
control character in it reaches the terminal only as a visible escape, here, for every
command."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from provisioner.text import printable, printable_lines

JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]
# Shows one API answer to people: a table or a detail view.
Render = Callable[[Any], None]

# Piped output goes to grep and awk: one row per line rather than wrapped at 80 columns.
_PIPE_WIDTH = 240

STATE_STYLES = {
    "discovered": "dim",
    "enrolled": "cyan",
    "inspecting": "yellow",
    "ready": "green",
    "provisioning": "yellow",
    "provisioned": "blue",
    "active": "bold green",
    "wiping": "yellow",
    "failed": "bold red",
}


def console(stderr: bool = False) -> Console:
    # Built per call: the streams differ between invocations (tests swap sys.stdout).
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal:
        out = Console(stderr=stderr, highlight=False, width=_PIPE_WIDTH)
    return out


def print_json(data: Any) -> None:
    # ensure_ascii (the default) writes every character outside printable ASCII, control
    # characters included, as a \\u escape: the JSON is safe on a terminal as it is.
    typer.echo(json.dumps(data, indent=2))


def show(data: Any, as_json: bool, render: Render) -> None:
    """``--json`` prints what the API answered, untouched, for scripts; else ``render``
    shows it to people."""
    if as_json:
        print_json(data)
    else:
        render(data)


# Which stream: whatever a command reports to people (tables, "accepted" and "created"
# lines, --wait progress) goes to stdout, so that `provisioner ... > log` keeps it in
# order; stderr has errors, prompts, and the remarks of a command whose stdout is data for
# a program (--json, token create, dnsmasq-config, the service's log).


def info(message: str) -> None:
    """A line of a command's report to people, on stdout with its tables."""
    typer.echo(printable_lines(message))


def note(message: str) -> None:
    """A remark beside data on stdout (a token, a configuration file), on stderr so
    that stdout stays exactly the data."""
    typer.echo(printable_lines(message), err=True)


def error(message: str) -> None:
    typer.echo(printable_lines(f"error: {message}"), err=True)


def cell(value: Any, style: str = "") -> Text:
    """One value as a table cell or a detail view shows it; ``-`` when there is none."""
    # Text, not str: rich would read brackets in names and messages as markup.
    if value is None or value == "":
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no", style=style)
    return Text(printable(str(value)), style=style)


def state_text(state: str) -> Text:
    return Text(printable(state), style=STATE_STYLES.get(state, ""))


def when(value: str | None) -> str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def seconds_text(seconds: float | None) -> str:
    """A duration as people read it: ``5.5 s``, ``12m 05s``, ``2h 03m 10s``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def size_text(count: int | None, binary: bool = False) -> str:
    """A byte count in the largest unit that keeps it at 1 or more: decimal units (as
    disks are sold, and as root-disk hints count), or binary ones (memory)."""
    if count is None:
        return ""
    base = 1024 if binary else 1000
    units = (
        ("B", "KiB", "MiB", "GiB", "TiB", "PiB") if binary else ("B", "kB", "MB", "GB", "TB", "PB")
    )
    value = float(count)
    for unit in units:
        if value < base or unit == units[-1]:
            break
        value /= base
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}".replace(".0 ", " ")


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    return table


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], stderr: bool = False
) -> None:
    table = _table(*columns)
    for row in rows:
        table.add_row(*(value if isinstance(value, Text) else cell(value) for value in row))
    console(stderr).print(table)


def _pxe_mac(node: dict[str, Any]) -> str | None:
    return next((nic["mac"] for nic in node.get("nics", []) if nic.get("pxe")), None)


def node_table(nodes: list[dict[str, Any]]) -> None:
    if not nodes:
        info("no nodes")
        return
    print_table(
        ("NAME", "STATE", "POWER", "RACK", "U", "ROLE", "MAINT", "PXE MAC"),
        (
            (
                n["name"],
                state_text(n["state"]),
                n["power_state"],
                n["rack"],
                n["rack_unit"],
                n["role"],
                cell("yes", "bold magenta") if n["maintenance"] else cell(None),
                _pxe_mac(n),
            )
            for n in nodes
        ),
    )


def _bmc(bmc: dict[str, Any]) -> str:
    shown = f"{bmc['driver']}://{bmc['username']}@{bmc['address']}:{bmc['port']}"
    if bmc.get("tls_verify") is False:
        shown += " (tls_verify: false)"
    if bmc.get("tls_fingerprint"):
        shown += f" pinned {bmc['tls_fingerprint']}"
    return shown


def node_detail(node: dict[str, Any]) -> None:
    bmc = node.get("bmc")
    state = state_text(node["state"])
    if node.get("failed_from"):
        state.append(printable(f" (failed while {node['failed_from']})"), style="red")
    maintenance = (
        cell(f"yes: {node.get('maintenance_reason') or 'no reason given'}", "bold magenta")
        if node["maintenance"]
        else cell(False)
    )
    rows: list[tuple[str, Any]] = [
        ("Name", node["name"]),
        ("ID", node["id"]),
        ("State", state),
        ("Power", node["power_state"]),
        ("Maintenance", maintenance),
        ("Rack", node["rack"]),
        ("Rack unit", node["rack_unit"]),
        ("Role", node["role"]),
        ("Image", node["image"]),
        ("Hardware profile", node["hardware_profile"]),
        ("BMC", _bmc(bmc) if bmc else None),
        ("NICs", ", ".join(f"{n['mac']}{' (pxe)' if n['pxe'] else ''}" for n in node["nics"])),
        ("Allowed actions", ", ".join(node["allowed_actions"])),
        ("Last error", cell(node["last_error"], "red")),
        ("Created", when(node["created_at"])),
        ("Updated", when(node["updated_at"])),
    ]
    key_values(rows)


def key_values(rows: Iterable[tuple[str, Any]]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else cell(value))
    console().print(table)


def events_table(events: list[dict[str, Any]]) -> None:
    if not events:
        info("no events")
        return
    print_table(
        ("TIME", "ACTOR", "KIND", "FROM", "TO", "MESSAGE"),
        (
            (
                when(e["time"]),
                e["actor"],
                e["kind"],
                state_text(e["from_state"]) if e["from_state"] else None,
                state_text(e["to_state"]) if e["to_state"] else None,
                e["message"],
            )
            for e in events
        ),
    )


def spinner(message: str) -> Status:
    """A spinner on stderr while a long request runs; silent when stderr is not a terminal."""
    return console(stderr=True).status(message)


def wipes_table(node: str, wipes: list[dict[str, Any]]) -> None:
    """The evidence of a node's disk wipes, newest first, one row per disk."""
    if not wipes:
        info(
            f"no wipe evidence for {node}: it is recorded, per disk, when a release wipes "
            "the disks with the deploy agent (not with a wipe image, nor with --skip-wipe)"
        )
        return
    print_table(
        ("TIME", "DISK", "METHOD", "BYTES", "DURATION", "RESULT", "VERIFIED", "MESSAGE", "DEPLOY"),
        (
            (
                when(w["created_at"]),
                w["disk"],
                w["method"],
                f"{w['bytes']:,}",
                seconds_text(w["seconds"]),
                cell("ok", "green") if w["ok"] else cell("FAILED", "bold red"),
                w["verified"],
                cell(w["message"], "red"),
                (w["deployment_id"] or "")[:8],
            )
            for w in wipes
        ),
    )
