"""``provisioner role|image|token ...``: what nodes are provisioned with, and who may
ask."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

import typer

from provisioner.cli.client import CliError, path_segment, request
from provisioner.cli.groups import command_group
from provisioner.cli.output import (
    JsonOption,
    Render,
    info,
    key_values,
    note,
    print_json,
    print_table,
    show,
    when,
)

role_app = command_group("Roles: what a node becomes (Puppet classes, default image).")
image_app = command_group("OS images that nodes are installed or imaged from.")
token_app = command_group("API tokens.")

NameArg = Annotated[str, typer.Argument(show_default=False)]


# Mirrors of the Literal types in provisioner.schemas (tests/test_cli.py checks they
# match): importing it (pydantic) would add about 0.3 s to every command.
ScopeName = Literal["viewer", "operator", "admin"]
OsFamily = Literal["rhel", "fedora", "debian", "ubuntu", "other"]
AnswerTemplate = Literal["kickstart", "preseed", "autoinstall"]
Deploy = Literal["installer", "image"]
ImageFormat = Literal["raw", "raw.gz", "qcow2"]
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
        ("NAME", "OS", "VERSION", "DEPLOY", "FROM"),
        (
            (i["name"], i["os_family"], i["version"], _deploy(i), i["image_url"] or i["kernel_url"])
            for i in images
        ),
    )


def _deploy(image: dict[str, Any]) -> str:
    """How it gets onto a disk: ``installer (preseed)`` or ``image (qcow2)``."""
    how = image["format"] if image["deploy"] == "image" else image["answer_template"]
    return f"{image['deploy']} ({how})"


def _image_detail(image: dict[str, Any]) -> None:
    fields = (
        [("Image", "image_url"), ("Format", "format"), ("Checksum", "checksum")]
        if image["deploy"] == "image"
        else [
            ("Answer template", "answer_template"),
            ("Kernel", "kernel_url"),
            ("Initrd", "initrd_url"),
            ("Repository", "repo_url"),
            ("Kernel arguments", "kernel_args"),
        ]
    )
    key_values(
        [
            ("Name", image["name"]),
            ("OS", f"{image['os_family']} {image['version']}"),
            ("Deploy", _deploy(image)),
            *((label, image[field]) for label, field in fields),
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


def _update(
    ctx: typer.Context, kind: str, collection: str, name: str, body: dict[str, Any], as_json: bool
) -> None:
    """PATCH only what was given: the rest of the record stays as it is."""
    if not body:
        raise CliError(
            f"nothing to change: give at least one option (provisioner {kind} update --help)"
        )
    updated = request(ctx, "PATCH", f"{collection}/{path_segment(name)}", json=body)
    if as_json:
        print_json(updated)
    else:
        info(f"updated {kind} {updated['name']}: {', '.join(sorted(body))}")


def _list_change(
    body: dict[str, Any], field: str, values: list[str] | None, clear: bool, option: str
) -> None:
    """A list option replaces the whole list; --clear-... empties it."""
    if values and clear:
        raise CliError(f"give {option} or --clear-{field.replace('_', '-')}, not both")
    if clear:
        body[field] = []
    elif values:
        body[field] = values


def _secret_from_stdin() -> str:
    # Never an option's value: command lines end up in shell history and `ps`.
    return sys.stdin.readline().rstrip("\r\n")


def _delete(ctx: typer.Context, kind: str, collection: str, key: str) -> None:
    request(ctx, "DELETE", f"{collection}/{path_segment(key)}")
    info(f"deleted {kind} {key}")


_add_list_and_show(role_app, "/roles", "role", _roles_table, _role_detail)


Description = Annotated[str | None, typer.Option(help="What the role is for.")]
HandoffOption = Annotated[
    HandoffName | None,
    typer.Option(
        help="When an installed node is active: at once (immediate, the default), when "
        "Puppet fetches its classification (enc), or when a webhook receiver "
        "acknowledges (webhook)."
    ),
]
WebhookUrlOption = Annotated[str | None, typer.Option(help="Receiver of --handoff webhook.")]
WebhookSecretStdin = Annotated[
    bool,
    typer.Option(
        "--webhook-secret-stdin",
        help="Read the webhook's HMAC key (16 characters or more) from stdin.",
    ),
]


@role_app.command("create")
def create_role(
    ctx: typer.Context,
    name: NameArg,
    description: Description = None,
    default_image: Annotated[str | None, typer.Option(help="Image if a node names none.")] = None,
    package: Annotated[
        list[str] | None, typer.Option(metavar="PACKAGE", help="Extra package (repeatable).")
    ] = None,
    handoff: HandoffOption = None,
    webhook_url: WebhookUrlOption = None,
    webhook_secret_stdin: WebhookSecretStdin = False,
    puppet_environment: Annotated[str | None, typer.Option(help="Default: production.")] = None,
    puppet_class: Annotated[
        list[str] | None, typer.Option(metavar="CLASS", help="Puppet class (repeatable).")
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
        "webhook_secret": _secret_from_stdin() if webhook_secret_stdin else None,
    }
    _create(ctx, "role", "/roles", fields, as_json)


def _replacing(what: str) -> Any:
    """A repeatable option of `role update` whose values replace the role's list."""
    metavar = what.split()[-1].upper()
    return typer.Option(metavar=metavar, help=f"{what} (repeatable); replaces the role's list.")


def _clearing(flag: str, what: str) -> Any:
    return typer.Option(flag, help=f"Remove every {what}.")


@role_app.command("update")
def update_role(
    ctx: typer.Context,
    name: NameArg,
    default_image: Annotated[str | None, typer.Option(help="Image if a node names none.")] = None,
    description: Description = None,
    no_default_image: Annotated[
        bool, typer.Option("--no-default-image", help="Remove the default image.")
    ] = False,
    auto_provision: Annotated[
        bool | None,
        typer.Option(
            "--auto-provision/--no-auto-provision",
            help="Provision inspected nodes at once, or wait for an operator.",
        ),
    ] = None,
    package: Annotated[list[str] | None, _replacing("Extra package")] = None,
    clear_packages: Annotated[bool, _clearing("--clear-packages", "extra package")] = False,
    handoff: HandoffOption = None,
    webhook_url: WebhookUrlOption = None,
    no_webhook_url: Annotated[
        bool, typer.Option("--no-webhook-url", help="Remove the webhook receiver.")
    ] = False,
    webhook_secret_stdin: WebhookSecretStdin = False,
    puppet_environment: Annotated[str | None, typer.Option(help="Puppet environment.")] = None,
    puppet_class: Annotated[list[str] | None, _replacing("Puppet class")] = None,
    clear_puppet_classes: Annotated[
        bool, _clearing("--clear-puppet-classes", "Puppet class")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Change a role: only the options given are changed, the rest stays as it is."""
    if default_image and no_default_image:
        raise CliError("give --default-image or --no-default-image, not both")
    if webhook_url and no_webhook_url:
        raise CliError("give --webhook-url or --no-webhook-url, not both")
    given = {
        "description": description,
        "default_image": default_image,
        "auto_provision": auto_provision,
        "puppet_environment": puppet_environment,
        "handoff": handoff,
        "webhook_url": webhook_url,
        "webhook_secret": _secret_from_stdin() if webhook_secret_stdin else None,
    }
    body: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    # null clears these two (and only these: the API refuses null elsewhere).
    if no_default_image:
        body["default_image"] = None
    if no_webhook_url:
        body["webhook_url"] = None
    _list_change(body, "packages", package, clear_packages, "--package")
    _list_change(body, "puppet_classes", puppet_class, clear_puppet_classes, "--puppet-class")
    _update(ctx, "role", "/roles", name, body, as_json)


@role_app.command("delete")
def delete_role(ctx: typer.Context, name: NameArg) -> None:
    """Delete a role that no node uses."""
    _delete(ctx, "role", "/roles", name)


_add_list_and_show(image_app, "/images", "OS image", _images_table, _image_detail)


_BOOT_FILE = (
    "an http(s) URL the machine fetches it from, or a path in the service's images "
    "directory (PROVISIONER_IMAGES_DIR, default <data_dir>/images), e.g. rocky9/vmlinuz, "
    "which the service serves at /boot/files/PATH."
)
KernelUrl = Annotated[str | None, typer.Option(help="The installer kernel: " + _BOOT_FILE)]
InitrdUrl = Annotated[str | None, typer.Option(help="The installer initrd: " + _BOOT_FILE)]
AnswerTemplateOption = Annotated[AnswerTemplate | None, typer.Option(help="Answer file format.")]
RepoUrlOption = Annotated[
    str | None,
    typer.Option(
        help="Package repository URL (kickstart needs one; preseed and autoinstall default to "
        "their distribution's mirror)."
    ),
]
KernelArgs = Annotated[str | None, typer.Option(help="Extra kernel arguments.")]
DeployOption = Annotated[
    Deploy | None,
    typer.Option(
        help="installer (the default): the OS's installer, from --kernel-url, --initrd-url "
        "and --answer-template; image: the deploy agent writes --image-url to disk."
    ),
]
ImageUrlOption = Annotated[
    str | None,
    typer.Option(
        help="The disk image (--deploy image): an http(s) URL the service fetches, "
        "file:///absolute/path on the service's machine, or a path in its images directory."
    ),
]
ChecksumOption = Annotated[
    str | None, typer.Option(help="SHA-256 of the file at --image-url: sha256:HEX, or the HEX.")
]
FormatOption = Annotated[ImageFormat | None, typer.Option("--format", help="--image-url's format")]


@image_app.command("create")
def create_image(
    ctx: typer.Context,
    name: NameArg,
    os_family: Annotated[OsFamily, typer.Option(help="OS family (other: image deploys only).")],
    version: Annotated[str, typer.Option(help="OS version, e.g. 9.4 or 12.")],
    deploy: DeployOption = None,
    kernel_url: KernelUrl = None,
    initrd_url: InitrdUrl = None,
    answer_template: AnswerTemplateOption = None,
    repo_url: RepoUrlOption = None,
    kernel_args: KernelArgs = None,
    image_url: ImageUrlOption = None,
    checksum: ChecksumOption = None,
    image_format: FormatOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an OS image: installed by its installer (--kernel-url, --initrd-url,
    --answer-template), or written to disk by the deploy agent (--deploy image)."""
    fields = _image_fields(
        deploy, os_family, version, kernel_url, initrd_url, answer_template, repo_url,
        kernel_args, image_url, checksum, image_format,
    )  # fmt: skip
    # Said with the options' names, before the API would say it with its fields'.
    needed = ("image_url", "checksum", "format") if deploy == "image" else _INSTALLER_NEEDS
    options = {field: "--" + field.replace("_", "-") for field in needed}
    if missing := [options[field] for field in needed if fields[field] is None]:
        how = "--deploy image" if deploy == "image" else "an installer image"
        raise CliError(f"{how} needs {', '.join(options.values())}: give {', '.join(missing)}")
    _create(ctx, "image", "/images", {"name": name, **fields}, as_json)


_INSTALLER_NEEDS = ("kernel_url", "initrd_url", "answer_template")


@image_app.command("update")
def update_image(
    ctx: typer.Context,
    name: NameArg,
    os_family: Annotated[OsFamily | None, typer.Option(help="OS family.")] = None,
    version: Annotated[str | None, typer.Option(help="OS version, e.g. 9.4 or 12.")] = None,
    deploy: DeployOption = None,
    kernel_url: KernelUrl = None,
    initrd_url: InitrdUrl = None,
    answer_template: AnswerTemplateOption = None,
    repo_url: RepoUrlOption = None,
    kernel_args: KernelArgs = None,
    image_url: ImageUrlOption = None,
    checksum: ChecksumOption = None,
    image_format: FormatOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change an OS image: only the options given are changed, the rest stays as it is;
    an empty --repo-url or --kernel-args clears it. A change of --deploy drops what only
    the other way used: give the new way's options with it."""
    given = _image_fields(
        deploy, os_family, version, kernel_url, initrd_url, answer_template, repo_url,
        kernel_args, image_url, checksum, image_format,
    )  # fmt: skip
    body = {k: v for k, v in given.items() if v is not None}
    _update(ctx, "image", "/images", name, body, as_json)


def _image_fields(*values: Any) -> dict[str, Any]:
    """An image's fields as create and update take them, in this order."""
    names = ("deploy", "os_family", "version", "kernel_url", "initrd_url", "answer_template")
    rest = ("repo_url", "kernel_args", "image_url", "checksum", "format")
    return dict(zip((*names, *rest), values, strict=True))


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
        note(f"created {scope} token {label!r}")
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
