"""``provisioner role|image|token ...``: what nodes are provisioned with, and who may
ask."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

import typer

from provisioner.cli.client import path_segment, request
from provisioner.cli.output import (
    JsonOption,
    Render,
    info,
    key_values,
    print_json,
    print_table,
    show,
    when,
)

role_app = typer.Typer(
    help="Roles: what a node becomes (Puppet classes, default image).", no_args_is_help=True
)
image_app = typer.Typer(help="OS images that nodes are installed from.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(show_default=False)]


# Mirrors of the Literal types in provisioner.schemas (tests/test_cli.py checks they
# match): importing it (pydantic) would add about 0.3 s to every command.
ScopeName = Literal["viewer", "operator", "admin"]
OsFamily = Literal["rhel", "fedora", "debian", "ubuntu"]
AnswerTemplate = Literal["kickstart", "preseed", "autoinstall"]
HandoffName = Literal["immediate", "webhook", "enc"]


def _roles_table(roles: list[dict[str, Any]]) -> None:
    print_table(
        ("NAME", "HAND-OFF", "PUPPET CLASSES", "DEFAULT IMAGE", "AUTO-PROVISION", "DESCRIPTION"),
        (
            (
                r["name"],
                r["handoff"],
                ", ".join(r["puppet_classes"]),
                r["default_image"],
                r["auto_provision"],
                r["description"],
            )
            for r in roles
        ),
    )


def _role_detail(role: dict[str, Any]) -> None:
    key_values(
        [
            ("Name", role["name"]),
            ("Description", role["description"]),
            ("Default image", role["default_image"]),
            ("Auto-provision", role["auto_provision"]),
            ("Hand-off", _handoff(role)),
            ("Puppet environment", role["puppet_environment"]),
            ("Puppet classes", ", ".join(role["puppet_classes"])),
            ("Packages", ", ".join(role["packages"])),
            ("Parameters", ", ".join(f"{k}={v}" for k, v in role["parameters"].items())),
            ("Created", when(role["created_at"])),
            ("Updated", when(role["updated_at"])),
        ]
    )


def _handoff(role: dict[str, Any]) -> str:
    if role["handoff"] != "webhook":
        return str(role["handoff"])
    secret = "secret set" if role["webhook_secret_set"] else "NO SECRET"
    return f"webhook to {role['webhook_url']} ({secret})"


def _images_table(images: list[dict[str, Any]]) -> None:
    print_table(
        ("NAME", "OS", "VERSION", "TEMPLATE", "KERNEL URL"),
        (
            (i["name"], i["os_family"], i["version"], i["answer_template"], i["kernel_url"])
            for i in images
        ),
    )


def _image_detail(image: dict[str, Any]) -> None:
    key_values(
        [
            ("Name", image["name"]),
            ("OS", f"{image['os_family']} {image['version']}"),
            ("Answer template", image["answer_template"]),
            ("Kernel", image["kernel_url"]),
            ("Initrd", image["initrd_url"]),
            ("Repository", image["repo_url"]),
            ("Kernel arguments", image["kernel_args"]),
            ("Created", when(image["created_at"])),
            ("Updated", when(image["updated_at"])),
        ]
    )


def _tokens_table(tokens: list[dict[str, Any]]) -> None:
    print_table(
        ("ID", "NAME", "SCOPE", "PREFIX", "CREATED", "EXPIRES"),
        (
            (
                t["id"],
                t["name"],
                t["scope"],
                t["prefix"],
                when(t["created_at"]),
                when(t["expires_at"]) or "never",
            )
            for t in tokens
        ),
    )


def _add_list_and_show(
    app: typer.Typer, collection: str, noun: str, table: Render, detail: Render
) -> None:
    """Add ``list`` and ``show`` to ``app``: for roles and images they differ only in
    the words and in how the answer is printed."""

    @app.command("list", help=f"List {noun}s.")
    def list_all(ctx: typer.Context, as_json: JsonOption = False) -> None:
        show(request(ctx, "GET", collection), as_json, table)

    @app.command("show", help=f"Show one {noun}.")
    def show_one(ctx: typer.Context, name: NameArg, as_json: JsonOption = False) -> None:
        show(request(ctx, "GET", f"{collection}/{path_segment(name)}"), as_json, detail)


def _create(
    ctx: typer.Context, kind: str, collection: str, fields: dict[str, Any], as_json: bool
) -> None:
    # Options left unset are left out of the body, so that the API applies its defaults.
    body = {k: v for k, v in fields.items() if v is not None}
    created = request(ctx, "POST", collection, json=body)
    if as_json:
        print_json(created)
    else:
        info(f"created {kind} {created['name']}")


def _delete(ctx: typer.Context, kind: str, collection: str, key: str) -> None:
    request(ctx, "DELETE", f"{collection}/{path_segment(key)}")
    info(f"deleted {kind} {key}")


_add_list_and_show(role_app, "/roles", "role", _roles_table, _role_detail)


@role_app.command("create")
def create_role(
    ctx: typer.Context,
    name: NameArg,
    description: Annotated[str | None, typer.Option(help="What the role is for.")] = None,
    default_image: Annotated[str | None, typer.Option(help="Image if a node names none.")] = None,
    package: Annotated[list[str] | None, typer.Option(help="Extra package (repeatable).")] = None,
    handoff: Annotated[
        HandoffName | None,
        typer.Option(
            help="When an installed node is active: at once (immediate, the default), when "
            "Puppet fetches its classification (enc), or when a webhook receiver "
            "acknowledges (webhook)."
        ),
    ] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Receiver of --handoff webhook.")] = None,
    webhook_secret_stdin: Annotated[
        bool,
        typer.Option(help="Read the webhook's HMAC key (16 characters or more) from stdin."),
    ] = False,
    puppet_environment: Annotated[str | None, typer.Option(help="Default: production.")] = None,
    puppet_class: Annotated[
        list[str] | None, typer.Option(help="Puppet class (repeatable).")
    ] = None,
    no_auto_provision: Annotated[
        bool, typer.Option("--no-auto-provision", help="Wait for an operator after inspection.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a role: what its nodes are installed with and how they are handed off.
    Top-scope Puppet parameters are set through the API (PATCH /api/v1/roles/NAME)."""
    fields = {
        "name": name,
        "description": description,
        "default_image": default_image,
        "auto_provision": False if no_auto_provision else None,
        "puppet_classes": puppet_class,
        "puppet_environment": puppet_environment,
        "packages": package,
        "handoff": handoff,
        "webhook_url": webhook_url,
        # Never an option's value: command lines end up in shell history and `ps`.
        "webhook_secret": sys.stdin.readline().rstrip("\r\n") if webhook_secret_stdin else None,
    }
    _create(ctx, "role", "/roles", fields, as_json)


@role_app.command("delete")
def delete_role(ctx: typer.Context, name: NameArg) -> None:
    """Delete a role that no node uses."""
    _delete(ctx, "role", "/roles", name)


_add_list_and_show(image_app, "/images", "OS image", _images_table, _image_detail)


@image_app.command("create")
def create_image(
    ctx: typer.Context,
    name: NameArg,
    os_family: Annotated[OsFamily, typer.Option(help="OS family.")],
    version: Annotated[str, typer.Option(help="OS version, e.g. 9.4 or 12.")],
    kernel_url: Annotated[str, typer.Option(help="URL of the installer kernel.")],
    initrd_url: Annotated[str, typer.Option(help="URL of the installer initrd.")],
    answer_template: Annotated[AnswerTemplate, typer.Option(help="Installer answer file format.")],
    repo_url: Annotated[str | None, typer.Option(help="Package repository URL.")] = None,
    kernel_args: Annotated[str | None, typer.Option(help="Extra kernel arguments.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create an OS image."""
    fields = {
        "name": name,
        "os_family": os_family,
        "version": version,
        "kernel_url": kernel_url,
        "initrd_url": initrd_url,
        "answer_template": answer_template,
        "repo_url": repo_url,
        "kernel_args": kernel_args,
    }
    _create(ctx, "image", "/images", fields, as_json)


@image_app.command("delete")
def delete_image(ctx: typer.Context, name: NameArg) -> None:
    """Delete an OS image that no node or role uses."""
    _delete(ctx, "image", "/images", name)


@token_app.command("create")
def create_token(
    ctx: typer.Context,
    scope: Annotated[
        ScopeName,
        typer.Option(
            help="viewer reads; operator also acts on nodes; admin also manages the catalog.",
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Label (default bootstrap-<scope>).")] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, max=3650, help="Lifetime; never expires if unset.")
    ] = None,
    via_api: Annotated[
        bool,
        typer.Option(help="Create it through the API (needs an admin token), not the database."),
    ] = False,
) -> None:
    """Create a token and print only it on stdout.

    By default this writes to the service's database directly, so it works before the
    server runs: run it on the server, as the service's user and with its PROVISIONER_*
    settings (the same data directory or database URL).
    """
    label = name or f"bootstrap-{scope}"
    if via_api:
        body = {"name": label, "scope": scope, "expires_in_days": expires_in_days}
        token = request(ctx, "POST", "/tokens", json=body)["token"]
        info(f"created {scope} token {label!r}")
    else:
        from provisioner.cli.server import create_token_offline

        token = create_token_offline(label, scope, expires_in_days)
    typer.echo(token)


@token_app.command("list")
def list_tokens(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List tokens (never their secret part)."""
    show(request(ctx, "GET", "/tokens"), as_json, _tokens_table)


@token_app.command("delete")
def delete_token(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """Revoke a token."""
    _delete(ctx, "token", "/tokens", token_id)
