"""`provisioner image create|update|list|show` for images the deploy agent writes to disk,
against a real HTTP server (tests/test_cli.py's)."""

from __future__ import annotations

import json
from typing import get_args

from tests.test_cli import Cli, admin_token, cli, fails, service

__all__ = ["admin_token", "cli", "service"]

SUM = "89abcdef01234567" * 4


def test_an_image_deploy_is_created_shown_and_changed(cli: Cli, admin_token: str) -> None:
    created = cli(
        "image", "create", "lab-disk", "--deploy", "image", "--os-family", "other",
        "--version", "1", "--image-url", "lab/disk.raw.gz", "--checksum", SUM.upper(),
        "--format", "raw.gz",
        token=admin_token,
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    assert created.stdout == "created image lab-disk\n"

    listed = cli("image", "list", token=admin_token).stdout
    (row,) = [line for line in listed.splitlines() if "lab-disk" in line]
    assert row.split() == ["lab-disk", "other", "1", "image", "(raw.gz)", "lab/disk.raw.gz"]

    shown = cli("image", "show", "lab-disk", token=admin_token).stdout
    assert "image (raw.gz)" in shown
    assert f"sha256:{SUM}" in shown
    assert "Kernel" not in shown

    updated = cli(
        "image", "update", "lab-disk", "--format", "qcow2", "--image-url",
        "https://images.example.com/disk.qcow2", "--checksum", f"sha256:{SUM}",
        token=admin_token,
    )  # fmt: skip
    assert updated.exit_code == 0, updated.stderr
    assert updated.stdout == "updated image lab-disk: checksum, format, image_url\n"
    image = json.loads(cli("image", "show", "lab-disk", "--json", token=admin_token).stdout)
    assert (image["deploy"], image["format"], image["version"]) == ("image", "qcow2", "1")
    assert image["image_url"] == "https://images.example.com/disk.qcow2"

    # Back to an installer needs the installer's fields in the same change.
    fails(
        cli("image", "update", "lab-disk", "--deploy", "installer", token=admin_token),
        "kernel_url",
    )
    fails(
        cli("image", "update", "lab-disk", "--kernel-url", "lab/vmlinuz", token=admin_token),
        "kernel_url",
    )
    assert cli("image", "delete", "lab-disk", token=admin_token).exit_code == 0


def test_what_each_way_of_deploying_needs_is_said_with_option_names(
    cli: Cli, admin_token: str
) -> None:
    no_checksum = cli(
        "image", "create", "x", "--deploy", "image", "--os-family", "other", "--version", "1",
        "--image-url", "lab/disk.raw", "--format", "raw",
        token=admin_token,
    )  # fmt: skip
    fails(no_checksum, "--deploy image needs --image-url, --checksum, --format: give --checksum")
    no_initrd = cli(
        "image", "create", "x", "--os-family", "debian", "--version", "12",
        "--kernel-url", "d/linux", "--answer-template", "preseed",
        token=admin_token,
    )  # fmt: skip
    fails(
        no_initrd,
        "an installer image needs --kernel-url, --initrd-url, --answer-template: give --initrd-url",
    )
    escaping = cli(
        "image", "create", "x", "--deploy", "image", "--os-family", "other", "--version", "1",
        "--image-url", "../disk.raw", "--format", "raw", "--checksum", SUM,
        token=admin_token,
    )  # fmt: skip
    fails(escaping, "image_url")
    fails(cli("image", "show", "x", token=admin_token), "not found")


def test_the_cli_choices_of_deploy_and_format_mirror_the_api() -> None:
    from provisioner import catalog_schemas
    from provisioner.cli import catalog

    assert get_args(catalog.Deploy) == get_args(catalog_schemas.Deploy)
    assert get_args(catalog.ImageFormat) == get_args(catalog_schemas.ImageFormat)
