"""``provisioner node ...`` and ``provisioner rack import``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from provisioner.cli.client import ApiError, CliError, api, field_errors, path_segment, request
from provisioner.cli.groups import command_group
from provisioner.cli.output import (
    JsonOption,
    events_table,
    info,
    node_detail,
    node_table,
    print_json,
    print_table,
    show,
    spinner,
    wipes_table,
)
from provisioner.cli.progress import by_name, watch
from provisioner.lifecycle import Action, State

node_app = command_group("List, enroll and act on nodes.")
rack_app = command_group("Bulk operations on racks.")

NodeArg = Annotated[str, typer.Argument(help="Node name or id.", show_default=False)]

MANIFEST_TYPES = {".yaml": "application/yaml", ".yml": "application/yaml", ".csv": "text/csv"}


@node_app.command("list")
def list_nodes(
    ctx: typer.Context,
    state: Annotated[
        State | None,
        typer.Option(
            metavar="STATE", help=f"Only nodes in this state: {', '.join(s.value for s in State)}."
        ),
    ] = None,
    role: Annotated[str | None, typer.Option(help="Only nodes with this role.")] = None,
    rack: Annotated[str | None, typer.Option(help="Only nodes in this rack.")] = None,
    mac: Annotated[str | None, typer.Option(help="The node with this NIC.")] = None,
    maintenance: Annotated[
        bool | None,
        typer.Option(
            "--maintenance/--no-maintenance", help="Only nodes in (or out of) maintenance."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Nodes per page.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the cursor to the end.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List nodes (one page unless --all)."""
    filters = {"state": state, "role": role, "rack": rack, "mac": mac, "limit": limit}
    params: dict[str, str | int] = {k: v for k, v in filters.items() if v is not None}
    if maintenance is not None:
        params["maintenance"] = "true" if maintenance else "false"
    with api(ctx) as client:
        page = client.get("/nodes", params=params)
        items: list[dict[str, Any]] = list(page["items"])
        while all_pages and page.get("next_cursor"):
            page = client.get("/nodes", params={**params, "cursor": page["next_cursor"]})
            items.extend(page["items"])
    if as_json:
        print_json({"items": items, "next_cursor": page.get("next_cursor")})
        return
    node_table(items)
    if page.get("next_cursor"):
        info(f"showing the first {len(items)} nodes; pass --all for the rest")


@node_app.command("show")
def show_node(ctx: typer.Context, node: NodeArg, as_json: JsonOption = False) -> None:
    """Show one node."""
    show(request(ctx, "GET", f"/nodes/{path_segment(node)}"), as_json, node_detail)


def _bmc_password(from_stdin: bool) -> str:
    # Never an option: command lines end up in shell history and `ps`.
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif os.environ.get("PROVISIONER_BMC_PASSWORD"):
        password = os.environ["PROVISIONER_BMC_PASSWORD"]
    elif sys.stdin.isatty():
        password = typer.prompt("BMC password", hide_input=True, err=True)
    else:
        # getpass would only warn that it cannot hide the input, then read stdin anyway.
        raise CliError(
            "no BMC password: stdin is not a terminal to ask on; pass --bmc-password-stdin "
            "and write the password to stdin, or set PROVISIONER_BMC_PASSWORD"
        )
    if not password:
        raise CliError("the BMC password is empty")
    return password


@node_app.command("enroll")
def enroll(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Hostname of the node.", show_default=False)],
    bmc_address: Annotated[str, typer.Option(help="BMC IP address or hostname.")],
    bmc_username: Annotated[str, typer.Option(help="BMC (IPMI) user.")],
    bmc_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="BMC port (default 623 for IPMI, 443 for Redfish)."),
    ] = None,
    bmc_driver: Annotated[
        str | None,
        typer.Option(help="ipmi (the default), redfish, or auto: ask the BMC which it speaks."),
    ] = None,
    bmc_tls_verify: Annotated[
        bool,
        typer.Option(help="Check a Redfish BMC's certificate; --no-bmc-tls-verify is logged."),
    ] = True,
    bmc_password_stdin: Annotated[
        bool,
        typer.Option(
            help="Read the BMC password from stdin; else PROVISIONER_BMC_PASSWORD, else a prompt."
        ),
    ] = False,
    mac: Annotated[
        list[str] | None,
        typer.Option(metavar="MAC", help="NIC MAC address; repeat for more (first boots)."),
    ] = None,
    rack: Annotated[str | None, typer.Option(help="Rack name.")] = None,
    u: Annotated[int | None, typer.Option("--u", min=1, max=60, help="Rack unit.")] = None,
    role: Annotated[str | None, typer.Option(help="Role to provision.")] = None,
    image: Annotated[str | None, typer.Option(help="OS image (else the role's default).")] = None,
    hardware_profile: Annotated[str | None, typer.Option(help="Hardware profile.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Enroll a node by its BMC."""
    bmc: dict[str, Any] = {
        "address": bmc_address,
        "username": bmc_username,
        "password": _bmc_password(bmc_password_stdin),
    }
    if bmc_port is not None:
        bmc["port"] = bmc_port
    if bmc_driver is not None:
        bmc["driver"] = bmc_driver
    if not bmc_tls_verify:
        bmc["tls_verify"] = False
    optional = {
        "rack": rack,
        "rack_unit": u,
        "role": role,
        "image": image,
        "hardware_profile": hardware_profile,
    }
    body = {
        "name": name,
        "bmc": bmc,
        "nics": [{"mac": m} for m in mac or []],
        **{k: v for k, v in optional.items() if v is not None},
    }
    data = request(ctx, "POST", "/nodes", json=body)
    if as_json:
        print_json(data)
        return
    info(f"enrolled {data['name']} ({data['state']})")
    node_detail(data)


@node_app.command("delete")
def delete_node(
    ctx: typer.Context,
    node: NodeArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a node from the inventory (the machine itself is untouched)."""
    if not yes:
        typer.confirm(f"Delete node {node}?", abort=True, err=True)
    request(ctx, "DELETE", f"/nodes/{path_segment(node)}")
    info(f"deleted node {node}")


def _action(value: str) -> str:
    # Checked here rather than typed as the enum: help then lists the choices in its
    # text, where they wrap, and not in the argument's column, where they would not.
    if value in {a.value for a in Action}:
        return value
    choices = ", ".join(a.value for a in Action)
    raise typer.BadParameter(f"{value!r} is not one of {choices}")


ReasonOption = Annotated[str | None, typer.Option(help="Why (kept in the event log).")]
SkipWipe = Annotated[
    bool,
    typer.Option(
        "--skip-wipe",
        help="release only: back to ready at once, the disks left as they are. Without it a "
        "release wipes the disks: with the wipe image when PROVISIONER_WIPE_KERNEL_URL and "
        "PROVISIONER_WIPE_INITRD_URL are set, else with the deploy agent when it is built "
        "(see `node wipes`), and is refused when there is neither.",
    ),
]


@node_app.command("action")
def node_action(
    ctx: typer.Context,
    node: NodeArg,
    action_name: Annotated[
        str,
        typer.Argument(
            metavar="ACTION",
            callback=_action,
            help=f"What to do: {', '.join(a.value for a in Action)}.",
            show_default=False,
        ),
    ],
    reason: ReasonOption = None,
    role: Annotated[str | None, typer.Option(help="Role to provision with.")] = None,
    image: Annotated[str | None, typer.Option(help="Image to provision with.")] = None,
    skip_wipe: SkipWipe = False,
    as_json: JsonOption = False,
) -> None:
    """Ask for a lifecycle or power action; it runs in the background."""
    optional = {"reason": reason, "role": role, "image": image}
    body: dict[str, Any] = {k: v for k, v in optional.items() if v is not None}
    # Sent only when asked for; the API refuses it on anything but a release.
    if skip_wipe:
        body["skip_wipe"] = True
    _act(ctx, node, Action(action_name), body, as_json)


@node_app.command("release")
def release_node(
    ctx: typer.Context,
    node: NodeArg,
    skip_wipe: SkipWipe = False,
    reason: ReasonOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take a node out of service back to ready: its disks are wiped first (by the wipe
    image, else by the deploy agent) unless --skip-wipe. The same as `node action NODE
    release`."""
    body: dict[str, Any] = {"reason": reason} if reason is not None else {}
    if skip_wipe:
        body["skip_wipe"] = True
    _act(ctx, node, Action.RELEASE, body, as_json)


def _act(
    ctx: typer.Context, node: str, action: Action, body: dict[str, Any], as_json: bool
) -> None:
    data = request(ctx, "POST", f"/nodes/{path_segment(node)}/actions/{action.value}", json=body)
    if as_json:
        print_json(data)
        return
    info(f"{action.value} accepted for {data['name']}: now {data['state']}")
    node_table([data])


@node_app.command("events")
def node_events(ctx: typer.Context, node: NodeArg, as_json: JsonOption = False) -> None:
    """Show a node's event log, oldest first."""
    show(request(ctx, "GET", f"/nodes/{path_segment(node)}/events"), as_json, events_table)


@node_app.command("wipes")
def node_wipes(ctx: typer.Context, node: NodeArg, as_json: JsonOption = False) -> None:
    """Show the evidence of a node's disk wipes, newest first.

    Per disk: the method, the bytes zeroed, how long it took, the result, how it was
    verified and the release's deployment. The deploy agent reports it when a release
    wipes with it."""
    wipes = request(ctx, "GET", f"/nodes/{path_segment(node)}/wipes")
    show(wipes, as_json, lambda data: wipes_table(node, data))


def _manifest_type(path: Path) -> str:
    content_type = MANIFEST_TYPES.get(path.suffix.lower())
    if content_type is None:
        raise CliError(f"cannot tell the format of {path.name}: name it .yaml, .yml or .csv")
    return content_type


@rack_app.command("import")
def import_rack(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="Manifest (.yaml, .yml or .csv)."
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Enroll every node of a rack manifest, all or nothing."""
    content_type = _manifest_type(file)
    with api(ctx) as client:
        try:
            with spinner(f"importing {file.name}"):
                result = client.request(
                    "POST",
                    "/racks/import",
                    content=file.read_bytes(),
                    headers={"Content-Type": content_type},
                    timeout=300,
                )
        except ApiError as exc:
            errors = [e for e in field_errors(exc.problem) if isinstance(e, dict)]
            if exc.status not in (409, 422) or not errors:
                raise
            print_table(
                ("ROW", "FIELD", "MESSAGE"),
                ((e.get("row"), e.get("field") or e.get("loc"), e.get("message")) for e in errors),
                stderr=True,
            )
            raise CliError(
                f"{file.name} was not imported: {len(errors)} problem(s), listed above"
            ) from exc
    if as_json:
        print_json(result)
        return
    node_table(result["nodes"])
    adopted = f", adopted {result['adopted']} discovered" if result["adopted"] else ""
    info(f"created {result['created']} node(s){adopted} from {file.name}")


WaitOption = Annotated[bool, typer.Option("--wait", help="Show progress until every node is done.")]
TimeoutOption = Annotated[float, typer.Option(help="Seconds --wait gives up after.", min=1)]


def _bulk(
    ctx: typer.Context, action: Action, selection: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    with api(ctx) as client:
        result: dict[str, Any] = client.post(
            "/actions", json={"action": action.value, "selection": selection, **body}
        )
    for refusal in result["refused"]:
        info(f"refused {refusal['name']}: {refusal['reason']}")
    info(f"{action.value} accepted for {len(result['accepted'])} node(s)")
    return result


@rack_app.command("provision")
def provision_rack(
    ctx: typer.Context,
    rack: Annotated[str, typer.Argument(help="Rack name.", show_default=False)],
    role: Annotated[str, typer.Option(help="Role to provision with.", show_default=False)],
    image: Annotated[
        str | None, typer.Option(help="Image; the role's default when not given.")
    ] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(min=1, help="Installations of this rack at once.")
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 3600,
) -> None:
    """Provision every ready node of a rack with a role."""
    body: dict[str, Any] = {"role": role, "image": image, "max_in_flight": max_in_flight}
    result = _bulk(
        ctx,
        Action.PROVISION,
        {"rack": rack, "state": State.READY.value},
        {k: v for k, v in body.items() if v is not None},
    )
    if wait and result["accepted"]:
        with api(ctx) as client:
            watch(by_name(client, result["accepted"]), "active", f"rack {rack}", timeout)
    if result["refused"] and not result["accepted"]:
        raise CliError("no node was provisioned")


@node_app.command("reimage")
def reimage_nodes(
    ctx: typer.Context,
    nodes: Annotated[list[str], typer.Argument(help="Node names.", show_default=False)],
    image: Annotated[str | None, typer.Option(help="Image; the current one if not given.")] = None,
    max_in_flight: Annotated[int | None, typer.Option(min=1, help="Reimages at once.")] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 3600,
) -> None:
    """Reinstall active nodes, keeping their name, role and NICs."""
    body = {k: v for k, v in {"image": image, "max_in_flight": max_in_flight}.items() if v}
    result = _bulk(ctx, Action.REIMAGE, {"names": nodes}, body)
    if wait and result["accepted"]:
        with api(ctx) as client:
            watch(by_name(client, result["accepted"]), "active", "reimage", timeout)
    if result["refused"]:
        raise CliError(f"{len(result['refused'])} node(s) refused, listed above")
