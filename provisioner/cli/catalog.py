"""``provisioner role|image|token ...``: what nodes are provisioned with, and who may
ask."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from provisioner.cli.client import api, path_segment
from provisioner.cli.output import JsonOption, info, key_values, print_json, print_table, when

role_app = typer.Typer(
    help="Roles: what a node becomes (Puppet classes, default image).", no_args_is_help=True
)
image_app = typer.Typer(help="OS images that nodes are installed from.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(show_default=False)]


# Mirrors of the Literal types in provisioner.schemas: importing it (pydantic) would add
# about 0.3 s to every command.
class ScopeName(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class OsFamily(StrEnum):
    RHEL = "rhel"
    DEBIAN = "debian"
    UBUNTU = "ubuntu"


class AnswerTemplate(StrEnum):
    KICKSTART = "kickstart"
    PRESEED = "preseed"
    AUTOINSTALL = "autoinstall"


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@role_app.command("list")
def list_roles(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List roles."""
    with api(ctx) as client:
        roles = client.get("/roles")
    if as_json:
        print_json(roles)
        return
    print_table(
        ("NAME", "DEFAULT IMAGE", "AUTO-PROVISION", "PUPPET CLASSES", "DESCRIPTION"),
        (
            (
                r["name"],
                r["default_image"],
                r["auto_provision"],
                ", ".join(r["puppet_classes"]),
                r["description"],
            )
            for r in roles
        ),
    )


@role_app.command("show")
def show_role(ctx: typer.Context, name: NameArg, as_json: JsonOption = False) -> None:
    """Show one role."""
    with api(ctx) as client:
        role = client.get(f"/roles/{path_segment(name)}")
    if as_json:
        print_json(role)
        return
    key_values(
        [
            ("Name", role["name"]),
            ("Description", role["description"]),
            ("Default image", role["default_image"]),
            ("Auto-provision", role["auto_provision"]),
            ("Puppet environment", role["puppet_environment"]),
            ("Puppet classes", ", ".join(role["puppet_classes"])),
            ("Packages", ", ".join(role["packages"])),
            ("Parameters", ", ".join(f"{k}={v}" for k, v in role["parameters"].items())),
            ("Created", when(role["created_at"])),
            ("Updated", when(role["updated_at"])),
        ]
    )


@role_app.command("create")
def create_role(
    ctx: typer.Context,
    name: NameArg,
    description: Annotated[str | None, typer.Option(help="What the role is for.")] = None,
    default_image: Annotated[
        str | None, typer.Option(help="Image used when a node asks for none.")
    ] = None,
    puppet_class: Annotated[
        list[str] | None, typer.Option(help="Puppet class to apply; repeat for more.")
    ] = None,
    no_auto_provision: Annotated[
        bool, typer.Option("--no-auto-provision", help="Wait for an operator after inspection.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a role."""
    body = _without_none(
        {
            "name": name,
            "description": description,
            "default_image": default_image,
            "puppet_classes": puppet_class,
            "auto_provision": False if no_auto_provision else None,
        }
    )
    with api(ctx) as client:
        role = client.post("/roles", json=body)
    if as_json:
        print_json(role)
    else:
        info(f"created role {role['name']}")


@role_app.command("delete")
def delete_role(ctx: typer.Context, name: NameArg) -> None:
    """Delete a role that no node uses."""
    with api(ctx) as client:
        client.delete(f"/roles/{path_segment(name)}")
    info(f"deleted role {name}")


@image_app.command("list")
def list_images(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List OS images."""
    with api(ctx) as client:
        images = client.get("/images")
    if as_json:
        print_json(images)
        return
    print_table(
        ("NAME", "OS", "VERSION", "TEMPLATE", "KERNEL URL"),
        (
            (i["name"], i["os_family"], i["version"], i["answer_template"], i["kernel_url"])
            for i in images
        ),
    )


@image_app.command("show")
def show_image(ctx: typer.Context, name: NameArg, as_json: JsonOption = False) -> None:
    """Show one OS image."""
    with api(ctx) as client:
        image = client.get(f"/images/{path_segment(name)}")
    if as_json:
        print_json(image)
        return
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
    body = _without_none(
        {
            "name": name,
            "os_family": os_family.value,
            "version": version,
            "kernel_url": kernel_url,
            "initrd_url": initrd_url,
            "answer_template": answer_template.value,
            "repo_url": repo_url,
            "kernel_args": kernel_args,
        }
    )
    with api(ctx) as client:
        image = client.post("/images", json=body)
    if as_json:
        print_json(image)
    else:
        info(f"created image {image['name']}")


@image_app.command("delete")
def delete_image(ctx: typer.Context, name: NameArg) -> None:
    """Delete an OS image that no node or role uses."""
    with api(ctx) as client:
        client.delete(f"/images/{path_segment(name)}")
    info(f"deleted image {name}")


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
    label = name or f"bootstrap-{scope.value}"
    if via_api:
        body = {"name": label, "scope": scope.value, "expires_in_days": expires_in_days}
        with api(ctx) as client:
            token = client.post("/tokens", json=body)["token"]
        info(f"created {scope.value} token {label!r}")
    else:
        from provisioner.cli.server import create_token_offline

        token = create_token_offline(label, scope.value, expires_in_days)
    typer.echo(token)


@token_app.command("list")
def list_tokens(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List tokens (never their secret part)."""
    with api(ctx) as client:
        tokens = client.get("/tokens")
    if as_json:
        print_json(tokens)
        return
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


@token_app.command("delete")
def delete_token(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """Revoke a token."""
    with api(ctx) as client:
        client.delete(f"/tokens/{path_segment(token_id)}")
    info(f"deleted token {token_id}")
